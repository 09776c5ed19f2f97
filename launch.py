"""The one entry point: `python launch.py COMMAND [flags]`; `launch.py COMMAND --help`
lists a command's own flags.

  summary  parameters, depth and multiply-adds of all six nets beside the paper's.
  train    --config experiments/FILE.py:ARG --workdir DIR [--config.field=value ...]
           trains and evaluates, resuming from DIR's checkpoints.
  eval     --workdir DIR: evaluates DIR's best checkpoint (else its newest) with the
           paper's test protocols; prints a table row, writes DIR/eval/*.json.
  sweep    --config experiments/FILE.py:ARG --workdir ROOT: the runs of the file's
           sweep(ARG), here, on SLURM or on a Cloud TPU pod.
  status   --config experiments/FILE.py:ARG --workdir ROOT: each run's state and
           last validation metrics.
  report   ROOT: Tables 3-6 of a sweep's evaluations beside the paper's.
  convert  --from torchvision|keras FILE --to DIR: a torchvision or Keras VGG as a
           vgg_jax orbax checkpoint.
  compile  --config experiments/FILE.py:ARG --topology v5p:2x2x2: the run's train and
           eval steps compiled for a TPU slice on this machine (libtpu, no TPU): memory
           per chip against its HBM, FLOPs, collectives, a roofline bound.

Exit status: 0 when done; 75 (EX_TEMPFAIL) when SIGTERM stopped a command (`train` after
saving; a sweep after its runs saved, children included) or a sweep's run was
preempted: rerun the same command to resume. A known failure (a
bad config, a workdir another process holds, a checkpoint of another model or an
unreadable one, none to evaluate, a NaN, a full disk, a bad data or weight file, a
sweep whose design changed, a report with no evaluations) is one line on stderr and
exit status 1; a bad or missing flag or config field, a missing --config file, an
argument its experiment does not know, an unknown command or TPU topology, status 2.
`compile` exits 1 when the run does not fit the slice's HBM.
"""

import contextlib
import dataclasses
import inspect
import logging as logging_lib
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow 2.21 prints its oneDNN notice through absl before absl's logging starts, so no
# log level hides it, and it came before every tfds run's output and every one-line error.
# Without oneDNN's custom ops (tf.data needs none) it is not printed.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from vgg_jax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()  # before any backend starts; VGG_JAX_XLA_CPU_DEFAULTS=0: off

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# ---------------------------------------------------------------------- flags, per command


def define_workdir(f: flags.FlagValues, help_string: str):
  flags.DEFINE_string("workdir", None, help_string, flag_values=f)
  flags.mark_flag_as_required("workdir", flag_values=f)


def define_distributed(f: flags.FlagValues):
  """How a train or eval on several hosts calls jax.distributed.initialize()."""
  flags.DEFINE_bool(
    "distributed",
    False,
    "call jax.distributed.initialize() and let JAX detect the cluster (Cloud TPU, SLURM).",
    flag_values=f,
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (names the cluster explicitly, with --num_processes and --process_id).",
    flag_values=f,
  )
  flags.DEFINE_integer("num_processes", None, "processes in the job.", flag_values=f)
  flags.DEFINE_integer("process_id", None, "this process's index.", flag_values=f)


def define_sweep_spec(f: flags.FlagValues):
  """A sweep's --config names its sweep(ARG), which ml_collections must not load."""
  flags.DEFINE_string(
    "config", None, "experiments/FILE.py:ARG: the runs of its sweep(ARG).", flag_values=f
  )
  flags.mark_flag_as_required("config", flag_values=f)
  define_workdir(f, "the sweep's root: each run in ROOT/NAME.")


def summary_flags(f: flags.FlagValues):
  flags.DEFINE_integer(
    "resolution", None, "also report the dense multiply-adds at N x N.", flag_values=f
  )


def define_config(f: flags.FlagValues):
  config_flags.DEFINE_config_file(
    "config",
    None,
    "experiments/FILE.py:ARG; --config.field=value overrides one of its fields.",
    flag_values=f,
  )
  flags.mark_flag_as_required("config", flag_values=f)


def train_flags(f: flags.FlagValues):
  define_config(f)
  define_workdir(f, "where checkpoints and metrics go; training resumes from them.")
  define_distributed(f)


def eval_flags(f: flags.FlagValues):
  define_workdir(f, "the trained run.")
  flags.DEFINE_enum(
    "protocol",
    "dense",
    ["single", "dense", "multicrop", "multicrop+dense"],
    "the test protocol (Section 3.2).",
    flag_values=f,
  )
  flags.DEFINE_string(
    "scales",
    "",
    "test scales Q, '32,40,48' or 'table4' (default: the run's validation Q).",
    flag_values=f,
  )
  flags.DEFINE_bool(
    "configured",
    False,
    "every evaluation in the run's config.evaluations, in one process (what a sweep runs).",
    flag_values=f,
  )
  flags.DEFINE_list("ensemble", [], "more workdirs to average with --workdir.", flag_values=f)
  flags.DEFINE_integer("step", None, "this checkpoint of --workdir, not the best.", flag_values=f)
  flags.DEFINE_string("eval_split", "", "the split (default: the run's).", flag_values=f)
  flags.DEFINE_integer(
    "eval_batch_size", None, "views per batch (default: the run's batch size).", flag_values=f
  )
  flags.DEFINE_integer(
    "eval_chunk",
    1024,
    "images read and scored at a time per process (bounds memory).",
    flag_values=f,
  )
  flags.DEFINE_integer(
    "bucket",
    32,
    "cut dense views to multiples of this (bounds compilations); 0 runs every shape exactly.",
    flag_values=f,
  )
  define_distributed(f)


def sweep_flags(f: flags.FlagValues):
  define_sweep_spec(f)
  flags.DEFINE_bool("dry_run", False, "print the commands, run nothing.", flag_values=f)
  flags.DEFINE_enum(
    "backend",
    "local",
    ["local", "slurm", "tpu"],
    "run here, submit sbatch scripts, or start on a TPU pod.",
    flag_values=f,
  )
  flags.DEFINE_string(
    "repo",
    os.path.dirname(os.path.abspath(__file__)),
    "where the code is on the cluster's hosts.",
    flag_values=f,
  )
  flags.DEFINE_string(
    "python", "python3", "the Python that runs it on the cluster's hosts.", flag_values=f
  )
  flags.DEFINE_integer(
    "parallel", 1, "local runs at a time (each starts once its parent is done).", flag_values=f
  )
  flags.DEFINE_bool(
    "subprocess",
    False,
    "run each run as `launch.py train` and `eval` "
    "subprocesses (implied by --parallel > 1) instead of in this process.",
    flag_values=f,
  )
  flags.DEFINE_bool(
    "retrain",
    False,
    "train again, into the same root, the runs trained with another config than the "
    "design now asks for (without it the sweep refuses to start).",
    flag_values=f,
  )
  flags.DEFINE_float(
    "time_budget_s",
    None,
    "start no run after this many seconds; the same command later continues.",
    flag_values=f,
  )
  flags.DEFINE_string(
    "accelerator",
    "h100",
    "the chip the forecast assumes (h100, h200, a100, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e).",
    flag_values=f,
  )
  flags.DEFINE_float(
    "mfu", 0.4, "the fraction of the chip's bf16 peak the forecast assumes.", flag_values=f
  )
  flags.DEFINE_integer("nodes", 1, "--backend slurm: hosts per run.", flag_values=f)
  flags.DEFINE_integer("gpus_per_node", 8, "--backend slurm: GPUs per host.", flag_values=f)
  flags.DEFINE_string("tpu", None, "--backend tpu: the TPU VM's name.", flag_values=f)
  flags.DEFINE_string("zone", None, "--backend tpu: its zone.", flag_values=f)
  flags.DEFINE_string(
    "topology",
    None,
    "--backend tpu: its slice, CHIP:AxB[xC] (e.g. v5p:2x2x2); with libtpu installed the "
    "forecast compiles each run's train step for it instead of assuming --mfu.",
    flag_values=f,
  )
  flags.register_multi_flags_validator(
    ["backend", "tpu", "zone"],
    lambda v: v["backend"] != "tpu" or (v["tpu"] and v["zone"]),
    "--backend tpu needs --tpu NAME --zone ZONE",
    flag_values=f,
  )


def compile_flags(f: flags.FlagValues):
  define_config(f)
  flags.DEFINE_string(
    "topology",
    None,
    "the TPU slice, CHIP:AxB[xC] (v4, v5e, v5p, v6e), e.g. v5p:2x2x2.",
    flag_values=f,
  )
  flags.mark_flag_as_required("topology", flag_values=f)


def convert_flags(f: flags.FlagValues):
  flags.DEFINE_enum("from", None, ["torchvision", "keras"], "the format of FILE.", flag_values=f)
  flags.DEFINE_string("to", None, "the directory to write.", flag_values=f)
  flags.mark_flags_as_required(["from", "to"], flag_values=f)


# ---------------------------------------------------------------------- commands


def initialize_distributed(f: flags.FlagValues):
  explicit = dict(
    coordinator_address=f.coordinator_address,
    num_processes=f.num_processes,
    process_id=f.process_id,
  )
  if any(v is not None for v in explicit.values()):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**explicit)
  elif f.distributed:
    import jax

    jax.distributed.initialize()


def summary_main(f: flags.FlagValues):
  """Parameters, depth and multiply-adds of all six nets beside the paper's."""
  from vgg_jax import summary

  print(summary.summary(f.resolution))


def train_main(f: flags.FlagValues):
  """Trains and evaluates, resuming from --workdir's checkpoints. Exits 75 (EX_TEMPFAIL)
  when SIGTERM stopped it after saving: rerun the same command to resume."""
  initialize_distributed(f)
  from vgg_jax import train

  _, result = train.train_and_evaluate(f.config, f.workdir)
  if result:
    print(
      f"final: top-1 error {result['val_top1_err']:.4f}, top-5 error "
      f"{result['val_top5_err']:.4f} on {result['val_count']} "
      f"{f.config.data.name} {f.config.data.eval_split} images"
    )


def eval_main(f: flags.FlagValues):
  """Evaluates --workdir's best checkpoint (else its newest) with the paper's test
  protocols; prints a table row, writes WORKDIR/eval/*.json."""
  initialize_distributed(f)
  from vgg_jax import checkpoint, lock, paths

  if not paths.Path(f.workdir).is_dir():  # the lock would create it
    raise checkpoint.NoCheckpoint(f"no vgg_jax checkpoint in {f.workdir}: no such directory")
  with lock.workdir_lock(f.workdir, "eval"):  # it writes WORKDIR/eval/
    evaluate_main(f)


def evaluate_main(f: flags.FlagValues):
  from vgg_jax import evaluate

  models = [evaluate.load_trained(f.workdir, f.step)]
  models += [evaluate.load_trained(workdir) for workdir in f.ensemble]
  if f.configured:
    evaluations = evaluate.configured(models[0].config)
  else:
    evaluations = [(f.protocol, f.scales, f.eval_split)]
  results = evaluate.evaluate_many(
    models, evaluations, batch_size=f.eval_batch_size, bucket=f.bucket, chunk=f.eval_chunk
  )
  paths = [evaluate.write_result(result) for result in results]
  print("\n".join([evaluate.TABLE_HEADER] + [evaluate.table_row(r) for r in results]))
  print("\n".join(f"{r['count']} {r['split']} images: {path}" for r, path in zip(results, paths)))
  print(f"{results[-1]['compilations']} compiled programs")


def sweep_main(f: flags.FlagValues):
  """The runs of --config's sweep(ARG), parents first, then seed-major, each in
  ROOT/NAME, all in this process; finished runs are skipped, killed ones resume, a
  failed run's children do not start, a preempted run stops the sweep (exit status 75).
  --backend slurm writes ROOT/slurm/*.sbatch and submits them with afterok
  dependencies; --backend tpu starts each run on every host of a Cloud TPU VM pod."""
  from vgg_jax import lock, paths, sweep, train

  config_file, runs = sweep.load_sweep(f.config)
  root = f.workdir
  flops = sweep.run_flops(runs, config_file)
  topology = f.topology if f.backend == "tpu" else None
  print(sweep.forecast(runs, config_file, f.accelerator, f.mfu, flops, topology), flush=True)
  if f.backend == "slurm":
    scripts = sweep.slurm_scripts(
      runs,
      config_file,
      root,
      repo=f.repo,
      python=f.python,
      nodes=f.nodes,
      gpus_per_node=f.gpus_per_node,
    )
    if f.dry_run:
      print("\n".join(f"# {name}\n{text}" for name, text in scripts.items()))
      return
    paths.Path(root, "slurm").mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
      paths.Path(root, "slurm", name).write_text(text)
    subprocess.run(["bash", paths.join(root, "slurm", "submit.sh")], check=True)
  elif f.backend == "tpu":
    if paths.is_local(root):
      logging.warning(
        "--workdir %s is a local path: a pod's hosts share no disk, so give a bucket "
        "(gs://BUCKET/ROOT) unless ROOT is a filesystem every host mounts",
        root,
      )
    commands = sweep.tpu_commands(
      runs, config_file, root, repo=f.repo, tpu=f.tpu, zone=f.zone, python=f.python
    )
    for command in commands:
      print(command)
      if not f.dry_run:
        subprocess.run(command, shell=True, check=True)
  elif f.dry_run:
    for run in runs:
      print(" ".join(sweep.train_command(run, config_file, root)[1:]))
  else:
    with lock.workdir_lock(root, "sweep"):  # one sweep per root
      outcome = sweep.run_local(
        runs,
        config_file,
        root,
        parallel=f.parallel,
        subprocesses=f.subprocess,
        costs=flops,
        time_budget_s=f.time_budget_s,
        retrain=f.retrain,
      )
    print(sweep.status_table(runs, root), flush=True)
    status = sweep.exit_status(outcome)
    if status == train.PREEMPTED_EXIT_CODE:
      fail("sweep", sweep.preempted_line(outcome, root), status)
    sys.exit(status)


def status_main(f: flags.FlagValues):
  """Each run of --config's sweep(ARG): its state and last validation metrics."""
  from vgg_jax import sweep

  _, runs = sweep.load_sweep(f.config)
  print(sweep.status_table(runs, f.workdir))


def report_main(f: flags.FlagValues, root: str):
  """Tables 3-6 of ROOT's evaluations (mean +- std over seeds) beside the paper's
  numbers and, per claim of the paper, the paired-seed difference with a t-interval and
  whether it reproduced, as Markdown and CSV, each run's validation error by epoch (has
  it converged?), the error-vs-depth figure and each run's training curves, in
  ROOT/report/; prints the Markdown."""
  del f  # report has no flags
  from vgg_jax import report

  text, written = report.report(root)
  print(text + "\nwritten:" + "\n  ".join([""] + written))


def convert_main(f: flags.FlagValues, path: str):
  """Imports a torchvision state dict (.pth: vgg11/13/16/19 and _bn) or a Keras
  VGG16/VGG19 (.keras/.h5) from FILE and writes it as a vgg_jax orbax checkpoint (read
  it with weights.load_orbax)."""
  import vgg_jax
  from vgg_jax import lock, weights

  model = weights.import_file(f["from"].value, path)
  with lock.workdir_lock(f.to, "convert"):  # a trainer there would lose its checkpoints
    directory = weights.save_orbax(model, f.to)
  print(
    f"VGG-{model.cfg.name} ({vgg_jax.count_params(model):,} parameters) from {path} "
    f"written to {directory}; read it with weights.load_orbax({f.to!r}, model) "
    f"for a model of signature {model.cfg.signature()}"
  )


def compile_main(f: flags.FlagValues):
  """Compiles the run's train and eval steps, as training builds them, for the TPU slice
  --topology names, on this machine (libtpu's deviceless compilation: no TPU, no data):
  prints chips and hosts, per chip the arguments, temporaries, outputs and donated bytes
  against the chip's HBM, FLOPs, bytes accessed and collectives a step, a roofline bound
  and the compile times. Exits 1 when the run does not fit, naming the sharding rule that
  would move its largest tensor; 2 for a topology libtpu does not know."""
  from vgg_jax import tpu_compile

  try:
    report = tpu_compile.compile_run(f.config, f.topology)
  except tpu_compile.UnknownTopology as e:
    fail("compile", e, 2)
  print(tpu_compile.format_report(report), flush=True)
  if not report.fits:
    fail("compile", tpu_compile.verdict(report))


@dataclasses.dataclass(frozen=True)
class Command:
  """What a command runs, given its own parsed flags and its positional arguments."""

  run: Callable[..., None]
  define_flags: Callable[[flags.FlagValues], None] = lambda f: None
  positional: tuple[str, ...] = ()

  def flag_values(self) -> flags.FlagValues:
    f = flags.FlagValues()
    self.define_flags(f)
    return f


COMMANDS = {
  "summary": Command(summary_main, summary_flags),
  "train": Command(train_main, train_flags),
  "eval": Command(eval_main, eval_flags),
  "sweep": Command(sweep_main, sweep_flags),
  "status": Command(status_main, define_sweep_spec),
  "report": Command(report_main, positional=("ROOT",)),
  "convert": Command(convert_main, convert_flags, positional=("FILE",)),
  "compile": Command(compile_main, compile_flags),
}
HELP = ("--help", "-h", "--helpfull", "-?")

# ---------------------------------------------------------------------- running one


def fail(command: str, error: BaseException | str, status: int = 1, at_once: bool = False):
  """A known failure as one line on stderr: its message names the cause and the cure.
  `at_once` skips the interpreter's shutdown, where orbax's leftover futures may log
  tracebacks after the line; every file is closed by then (train's `finally`)."""
  sys.stderr.write(f"launch.py {command}: {error}\n")  # one write: other threads cannot split it
  sys.stderr.flush()
  if at_once:
    sys.stdout.flush()
    os._exit(status)
  sys.exit(status)


def known_failure(error: BaseException) -> BaseException | None:
  """The failure whose message says all there is to say, so no traceback is needed: the
  error or one it interrupted (closing files after a full disk may fail again), or a
  full disk itself."""
  from vgg_jax import checkpoint, config, lock, paths, report, sweep, train

  known = (
    paths.BadFile,
    report.NoEvaluations,
    sweep.DesignChanged,
    config.ConfigError,
    lock.Locked,
    checkpoint.CheckpointMismatch,
    checkpoint.CorruptCheckpoint,
    checkpoint.NoCheckpoint,
    checkpoint.DiskFull,
    train.NonFiniteLoss,
  )
  cause = error
  while cause is not None:
    if isinstance(cause, known):
      return cause
    cause = cause.__context__
  return error if checkpoint.no_space(error) else None


@dataclasses.dataclass(frozen=True)
class Invocation:
  """One command line, parsed: what `parse_flags` hands to `main`."""

  name: str
  flags: flags.FlagValues
  args: list[str]


LIBRARY_LOG = "orbax.log"


class LibraryLog(logging_lib.Filter):
  """What orbax's and asyncio's threads print as they fail with a save (a full disk:
  RESOURCE_EXHAUSTED, "Event loop is closed"), put in WORKDIR/orbax.log instead of
  before the one line that says what happened; lost, not printed, when it cannot be
  written there (a full disk)."""

  def __init__(self, workdir: str):
    super().__init__()
    self.workdir = workdir

  def install(self):
    for handler in logging_lib.getLogger().handlers:
      handler.addFilter(self)
    sys.unraisablehook = lambda u: self.write(
      f"{u.err_msg or 'Exception ignored'}: {u.object!r}", u
    )
    threading.excepthook = lambda a: self.write(f"Exception in thread {a.thread}", a)

  def filter(self, record: logging_lib.LogRecord) -> bool:
    """Other records go on to the terminal; the libraries' go to the file."""
    if record.name != "asyncio" and "/orbax/" not in record.pathname:
      return True
    self.write(logging_lib.Formatter().format(record))
    return False

  def write(self, text: str, failure=None):
    from vgg_jax import paths

    if failure is not None and failure.exc_type is not None:
      text += "\n" + "".join(
        traceback.format_exception(failure.exc_type, failure.exc_value, failure.exc_traceback)
      )
    with contextlib.suppress(Exception):
      if paths.Path(self.workdir).is_dir():
        paths.append_text(paths.join(self.workdir, LIBRARY_LOG), text.rstrip() + "\n")


def stop_on_sigterm(signum, frame):
  """SIGTERM outside a training loop (which saves first, see train.Preemption): stop
  here, as a preemption. Once: a second SIGTERM is ignored while this one unwinds."""
  from vgg_jax import train

  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  raise train.Preempted("SIGTERM: stopped before finishing; rerun the same command to resume")


def main(invocation: Invocation):
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  signal.signal(signal.SIGTERM, stop_on_sigterm)
  workdir = getattr(invocation.flags, "workdir", None) or getattr(invocation.flags, "to", None)
  if workdir:
    LibraryLog(workdir).install()
  from vgg_jax import train

  try:
    COMMANDS[invocation.name].run(invocation.flags, *invocation.args)
  except train.Preempted as e:
    fail(invocation.name, e, train.PREEMPTED_EXIT_CODE)
  except Exception as e:  # pylint: disable=broad-except
    known = known_failure(e)
    if known is None:
      raise
    from vgg_jax import config

    fail(invocation.name, known, 2 if isinstance(known, config.BadArgument) else 1, at_once=True)


def usage(name: str) -> str:
  command = COMMANDS[name]
  return " ".join(["usage: launch.py", name, "[flags]", *command.positional])


def command_help(name: str, f: flags.FlagValues) -> str:
  text = f.get_help(include_special_flags=False).strip()
  doc = inspect.getdoc(COMMANDS[name].run)
  return f"{usage(name)}\n\n{doc}\n\n{text or '(no flags)'}"


def parse_flags(argv: list[str]) -> Invocation:
  """The command's own flags, parsed from argv[2:]. `launch.py --help` describes the
  commands, `launch.py COMMAND --help` lists one's flags. A bad flag or config field is
  one line (not ml_collections' traceback) and status 2."""
  flags.FLAGS(argv[:1])  # absl's own flags keep their defaults; app.run reads them
  name = argv[1] if len(argv) > 1 else ""
  if name in HELP:
    print(__doc__)
    sys.exit(0)
  if name not in COMMANDS:
    print(
      f"usage: launch.py {{{'|'.join(COMMANDS)}}} [flags] (launch.py --help describes "
      f"them){f'; no command {name!r}' if name else ''}",
      file=sys.stderr,
    )
    sys.exit(2)
  f = COMMANDS[name].flag_values()
  if any(arg in HELP for arg in argv[2:]):
    print(command_help(name, f))
    sys.exit(0)
  try:
    args = f([argv[0], *argv[2:]])[1:]
  except (flags.Error, AttributeError, KeyError, ValueError) as e:
    fail(name, flag_error(e, argv), 2)
  missing = missing_config_file(f)
  if missing:
    fail(name, f"--config={missing}: no such file", 2)
  if len(args) != len(COMMANDS[name].positional):
    fail(name, usage(name), 2)
  return Invocation(name, f, args)


def missing_config_file(f: flags.FlagValues) -> str | None:
  """The file of a config flag that could not be loaded: ml_collections defers that
  error (two tracebacks) to the config's first use."""
  for name in f:
    try:
      getattr(f[name].value, "to_dict", None)
    except OSError:
      return f[name].config_filename
  return None


def flag_error(error: BaseException, argv) -> str:
  """The cause of a flag's failure in one line: ml_collections wraps an unknown field
  (a KeyError) or an experiment's refusal of its ARG in tracebacks of its own."""
  top = str(error)
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  text = " ".join(str(error.args[0] if error.args else error).split())
  if isinstance(error, KeyError):
    field = text.split("'")[1] if text.count("'") >= 2 else text
    flag = next(
      (
        a.split("=")[0]
        for a in argv
        if a.startswith("--config.") and f".{field}." in a.split("=")[0] + "."
      ),
      "--config",
    )
    return (
      f"{flag}: unknown config field {text} (every field is in vgg_jax/config.py's base_config())"
    )
  first = top.splitlines()[0] if top else ""
  if text in first:
    return first
  return f"{first.split(': ')[0]}: {text}" if first.startswith("flag --") else text


if __name__ == "__main__":
  app.run(main, argv=sys.argv, flags_parser=parse_flags)
