"""The one entry point: `python launch.py COMMAND [flags]`.

  summary  parameters, depth and multiply-adds of all six nets beside the paper's
           (--resolution N adds the dense cost at N x N).
  train    --config experiments/FILE.py:ARG --workdir DIR [--config.field=value ...]
           trains and evaluates, resuming from DIR's checkpoints. On several hosts it
           first calls jax.distributed.initialize(): --distributed lets JAX detect the
           cluster (Cloud TPU, SLURM); --coordinator_address, --num_processes and
           --process_id name it explicitly. Exits 0 when trained; 75 (EX_TEMPFAIL) when
           SIGTERM stopped it after saving: rerun the same command to resume.
  eval     --workdir DIR [--protocol single|dense|multicrop|multicrop+dense]
           [--scales table4|32,40,48] [--ensemble DIR2,DIR3] [--step N]
           [--eval_split test] evaluates DIR's best checkpoint (else its newest) with
           the paper's test protocols; prints a table row, writes DIR/eval/*.json.
           --configured runs all of the run's config.evaluations in one pass.
  sweep    --config experiments/FILE.py:ARG --workdir ROOT [--dry_run]: the runs of the
           file's sweep(ARG), parents first, then seed-major, each in ROOT/NAME, all in
           this process (--subprocess: one process per run); finished runs are skipped,
           killed ones resume, a failed run's children do not start, a preempted run
           stops the sweep (exit status 75); --time_budget_s N starts no run after N s.
           --backend slurm writes ROOT/slurm/*.sbatch and submits them with afterok
           dependencies; --backend tpu --tpu NAME --zone Z starts each run on every
           host of a Cloud TPU VM pod (gcloud ... --worker=all).
  status   --config experiments/FILE.py:ARG --workdir ROOT: each run's state and
           last validation metrics.
  report   ROOT: Tables 3-6 of a sweep's evaluations (mean +- std over seeds) beside the
           paper's numbers and, per claim of the paper, the paired-seed difference with a
           t-interval and whether it reproduced, as Markdown and CSV, the error-vs-depth
           figure and each run's training curves, in ROOT/report/; prints the Markdown.
  convert  --from torchvision|keras FILE --to DIR: imports a torchvision state dict
           (.pth: vgg11/13/16/19 and _bn) or a Keras VGG16/VGG19 (.keras/.h5) and
           writes it as a vgg_jax orbax checkpoint (read it with weights.load_orbax).

A known failure (a bad config, a workdir another process holds, a checkpoint of
another model or an unreadable one, none to evaluate, a NaN, a full disk) is one line
on stderr and exit status 1; a bad flag or config field, status 2.
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from vgg_jax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()  # before any backend starts; VGG_JAX_XLA_CPU_DEFAULTS=0: off

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_RESOLUTION = flags.DEFINE_integer("resolution", None,
                                   "summary: also report multiply-adds at this size.")

_CONFIG = config_flags.DEFINE_config_file("config", None, "train: experiments/FILE.py:ARG")
_WORKDIR = flags.DEFINE_string("workdir", None,
                                "train: where checkpoints and metrics go; eval: the run.")
_PROTOCOL = flags.DEFINE_enum("protocol", "dense",
                              ["single", "dense", "multicrop", "multicrop+dense"],
                              "eval: the test protocol (Section 3.2).")
_SCALES = flags.DEFINE_string("scales", "", "eval: test scales Q, '32,40,48' or 'table4' "
                              "(default: the run's validation Q).")
_CONFIGURED = flags.DEFINE_bool("configured", False, "eval: every evaluation in the run's "
                                "config.evaluations, in one process (what a sweep runs).")
_ENSEMBLE = flags.DEFINE_list("ensemble", [], "eval: more workdirs to average with --workdir.")
_STEP = flags.DEFINE_integer("step", None, "eval: this checkpoint of --workdir, not the best.")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "", "eval: the split (default: the run's).")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", None,
                                   "eval: views per batch (default: the run's batch size).")
_EVAL_CHUNK = flags.DEFINE_integer("eval_chunk", 1024, "eval: images read and scored at a "
                                   "time per process (bounds memory).")
_BUCKET = flags.DEFINE_integer("bucket", 32, "eval: cut dense views to multiples of this "
                               "(bounds compilations); 0 runs every shape exactly.")
_SWEEP = flags.DEFINE_string("sweep", None, "sweep, status: experiments/FILE.py:ARG, "
                             "also accepted as --config (see parse_flags).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "sweep: print the commands, run nothing.")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "slurm", "tpu"],
                             "sweep: run here, submit sbatch scripts, or start on a TPU pod.")
_REPO = flags.DEFINE_string("repo", os.path.dirname(os.path.abspath(__file__)),
                            "sweep: where the code is on the cluster's hosts.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "sweep: local runs at a time (each "
                                 "starts once its parent is done).")
_SUBPROCESS = flags.DEFINE_bool("subprocess", False, "sweep: run each run as `launch.py "
                                "train` and `eval` subprocesses (implied by --parallel > 1) "
                                "instead of in this process.")
_TIME_BUDGET = flags.DEFINE_float("time_budget_s", None, "sweep: start no run after this "
                                  "many seconds; the same command later continues.")
_ACCELERATOR = flags.DEFINE_string("accelerator", "h100", "sweep: the chip the forecast "
                                   "assumes (h100, h200, a100, tpu-v4, tpu-v5p).")
_MFU = flags.DEFINE_float("mfu", 0.4, "sweep: the fraction of the chip's bf16 peak the "
                          "forecast assumes.")
_NODES = flags.DEFINE_integer("nodes", 1, "sweep --backend slurm: hosts per run.")
_GPUS = flags.DEFINE_integer("gpus_per_node", 8, "sweep --backend slurm: GPUs per host.")
_TPU = flags.DEFINE_string("tpu", None, "sweep --backend tpu: the TPU VM's name.")
_ZONE = flags.DEFINE_string("zone", None, "sweep --backend tpu: its zone.")
_FROM = flags.DEFINE_enum("from", None, ["torchvision", "keras"],
                          "convert: the format of the positional FILE.")
_TO = flags.DEFINE_string("to", None, "convert: the directory to write.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_distributed():
  explicit = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                  process_id=_PROCESS_ID.value)
  if any(v is not None for v in explicit.values()):
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**explicit)
  elif _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()


def train_main():
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("train needs --config experiments/FILE.py:ARG and --workdir DIR")
  initialize_distributed()
  from vgg_jax import train
  try:
    _, result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.Preempted as e:
    fail("train", e, train.PREEMPTED_EXIT_CODE)
  if result:
    print(f"final: top-1 error {result['val_top1_err']:.4f}, top-5 error "
          f"{result['val_top5_err']:.4f} on {result['val_count']} "
          f"{_CONFIG.value.data.name} {_CONFIG.value.data.eval_split} images")


def eval_main():
  if not _WORKDIR.value:
    raise app.UsageError("eval needs --workdir DIR")
  initialize_distributed()
  from vgg_jax import checkpoint, lock
  if not os.path.isdir(_WORKDIR.value):  # the lock would create it
    raise checkpoint.NoCheckpoint(f"no vgg_jax checkpoint in {_WORKDIR.value}: no such "
                                  f"directory")
  with lock.workdir_lock(_WORKDIR.value, "eval"):  # it writes WORKDIR/eval/
    evaluate_main()


def evaluate_main():
  from vgg_jax import evaluate
  models = [evaluate.load_trained(_WORKDIR.value, _STEP.value)]
  models += [evaluate.load_trained(workdir) for workdir in _ENSEMBLE.value]
  if _CONFIGURED.value:
    evaluations = evaluate.configured(models[0].config)
  else:
    evaluations = [(_PROTOCOL.value, _SCALES.value, _EVAL_SPLIT.value)]
  results = evaluate.evaluate_many(models, evaluations, batch_size=_EVAL_BATCH.value,
                                   bucket=_BUCKET.value, chunk=_EVAL_CHUNK.value)
  paths = [evaluate.write_result(result) for result in results]
  print("\n".join([evaluate.TABLE_HEADER] + [evaluate.table_row(r) for r in results]))
  print("\n".join(f"{r['count']} {r['split']} images: {path}" for r, path in zip(results, paths)))
  print(f"{results[-1]['compilations']} compiled programs")


def convert_main(path):
  if not (_FROM.value and _TO.value):
    raise app.UsageError("convert needs --from torchvision|keras FILE --to DIR")
  import vgg_jax
  from vgg_jax import weights
  model = weights.import_file(_FROM.value, path)
  directory = weights.save_orbax(model, _TO.value)
  print(f"VGG-{model.cfg.name} ({vgg_jax.count_params(model):,} parameters) from {path} "
        f"written to {directory}; read it with weights.load_orbax({_TO.value!r}, model) "
        f"for a model of signature {model.cfg.signature()}")


def sweep_runs():
  if not (_WORKDIR.value and _SWEEP.value):
    raise app.UsageError("sweep and status need --config experiments/FILE.py:ARG --workdir ROOT")
  from vgg_jax import sweep
  return sweep, *sweep.load_sweep(_SWEEP.value)


def sweep_main():
  sweep, config_file, runs = sweep_runs()
  root = _WORKDIR.value
  flops = sweep.run_flops(runs, config_file)
  print(sweep.forecast(runs, config_file, _ACCELERATOR.value, _MFU.value, flops), flush=True)
  if _BACKEND.value == "slurm":
    scripts = sweep.slurm_scripts(runs, config_file, root, repo=_REPO.value,
                                  nodes=_NODES.value, gpus_per_node=_GPUS.value)
    if _DRY_RUN.value:
      print("\n".join(f"# {name}\n{text}" for name, text in scripts.items()))
      return
    os.makedirs(os.path.join(root, "slurm"), exist_ok=True)
    for name, text in scripts.items():
      with open(os.path.join(root, "slurm", name), "w") as f:
        f.write(text)
    subprocess.run(["bash", os.path.join(root, "slurm", "submit.sh")], check=True)
  elif _BACKEND.value == "tpu":
    if not (_TPU.value and _ZONE.value):
      raise app.UsageError("sweep --backend tpu needs --tpu NAME --zone ZONE")
    for command in sweep.tpu_commands(runs, config_file, root, repo=_REPO.value,
                                      tpu=_TPU.value, zone=_ZONE.value):
      print(command)
      if not _DRY_RUN.value:
        subprocess.run(command, shell=True, check=True)
  elif _DRY_RUN.value:
    for run in runs:
      print(" ".join(sweep.train_command(run, config_file, root)[1:]))
  else:
    outcome = sweep.run_local(runs, config_file, root, parallel=_PARALLEL.value,
                              subprocesses=_SUBPROCESS.value, costs=flops,
                              time_budget_s=_TIME_BUDGET.value)
    print(sweep.status_table(runs, root))
    sys.exit(sweep.exit_status(outcome))


def status_main():
  sweep, _, runs = sweep_runs()
  print(sweep.status_table(runs, _WORKDIR.value))


def report_main(root):
  from vgg_jax import report
  text, written = report.report(root)
  print(text + "\nwritten:" + "\n  ".join([""] + written))


def summary_main():
  from vgg_jax import summary
  print(summary.summary(_RESOLUTION.value))


COMMANDS = {"summary": summary_main, "train": train_main, "eval": eval_main,
            "convert": convert_main, "sweep": sweep_main, "status": status_main,
            "report": report_main}
POSITIONAL = {"convert": 1, "report": 1}  # commands that take a path after their name


def fail(command: str, error: BaseException, status: int = 1):
  """A known failure as one line on stderr: its message names the cause and the cure."""
  print(f"launch.py {command}: {error}", file=sys.stderr)
  sys.exit(status)


def known_failure(error: BaseException) -> BaseException | None:
  """The failure whose message says all there is to say, so no traceback is needed: the
  error or one it interrupted (closing files after a full disk may fail again), or a
  full disk itself."""
  from vgg_jax import checkpoint, config, lock, train
  known = (config.ConfigError, lock.Locked, checkpoint.CheckpointMismatch,
           checkpoint.CorruptCheckpoint, checkpoint.NoCheckpoint, checkpoint.DiskFull,
           train.NonFiniteLoss)
  cause = error
  while cause is not None:
    if isinstance(cause, known):
      return cause
    cause = cause.__context__
  return error if checkpoint.no_space(error) else None


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  command = argv[1] if len(argv) > 1 else None
  if command not in COMMANDS or len(argv) != 2 + POSITIONAL.get(command, 0):
    raise app.UsageError(f"usage: launch.py {{{'|'.join(COMMANDS)}}} [flags]\n{__doc__}")
  try:
    COMMANDS[command](*argv[2:])
  except Exception as e:  # pylint: disable=broad-except
    known = known_failure(e)
    if known is None:
      raise
    fail(command, known)


def parse_flags(argv):
  """A sweep's --config names its sweep(ARG), not a get_config(ARG): for `sweep` and
  `status` it is read as --sweep, so that ml_collections does not load it as a config.
  An unknown config field or argument is one line, not ml_collections' traceback."""
  if len(argv) > 1 and argv[1] in ("sweep", "status"):
    argv = [a.replace("--config", "--sweep", 1) if a.startswith("--config") else a
            for a in argv]
  command = argv[1] if len(argv) > 1 else ""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError) as e:
    fail(command, flag_error(e, argv), 2)


def flag_error(error: BaseException, argv) -> str:
  """The cause of a flag's failure in one line: ml_collections wraps an unknown field
  (a KeyError) or an experiment's refusal of its ARG in tracebacks of its own."""
  top = str(error)
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  text = " ".join(str(error.args[0] if error.args else error).split())
  if isinstance(error, KeyError):
    field = text.split("'")[1] if text.count("'") >= 2 else text
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and f".{field}." in a.split("=")[0] + "."), "--config")
    return (f"{flag}: unknown config field {text} (every field is in vgg_jax/config.py's "
            f"base_config())")
  first = top.splitlines()[0] if top else ""
  if text in first:
    return first
  return f"{first.split(': ')[0]}: {text}" if first.startswith("flag --") else text


if __name__ == "__main__":
  app.run(main, argv=sys.argv, flags_parser=parse_flags)
