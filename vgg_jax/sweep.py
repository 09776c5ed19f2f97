"""Sweeps: many training runs as data, run in dependency order, resumable.

An experiment file may define `sweep(arg)` beside `get_config(arg)`: a list of runs,
each a dict with
  name      the run's directory under the sweep root (e.g. "D_S256_seed0");
  arg       the `get_config` argument of this run (e.g. "model=D,S=256,seed=0");
  parent    (optional) the run whose finished weights start this one;
  layers    (optional) which of the parent's layers: "paper" or "all" (see
            `weights.warm_start_tensors`);
  overrides (optional) more {config field: value}, e.g. {"optim.lr": 1e-3}.
`paper_chain` builds the paper's (Section 3.1): A from random init, B-E warm-started
from A, S=384 from S=256 with LR 1e-3, multi-scale from S=384.

The local backend runs each run as `launch.py train` in a subprocess, parents first.
A run that trained leaves ROOT/NAME/sweep_done.json; the sweep then evaluates it for
the paper's tables (`eval_command`: `launch.py eval --configured`, into ROOT/NAME/eval/)
and leaves
sweep_evaluated.json, after which the run is "done" and skipped next time. A run that
failed (training or evaluation) leaves sweep_failed.txt, and its descendants are not
started ("blocked"). A run that was killed simply runs again and resumes from its
checkpoints; one killed while evaluating is only evaluated again.
"""

import concurrent.futures
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from typing import Callable, Sequence

from vgg_jax import config as config_lib
from vgg_jax import metrics as metrics_lib

DONE, EVALUATED, FAILED = "sweep_done.json", "sweep_evaluated.json", "sweep_failed.txt"
LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "launch.py")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  arg: str
  parent: str | None = None
  layers: str = "paper"
  overrides: tuple[tuple[str, object], ...] = ()


# The training scales that stand for the paper's S = 256, 384 and [256, 512], per data
# set (Fashion-MNIST's 32x32 crops scale S down by 7).
PAPER_SCALES = {"imagenet2012": {"256": "256", "384": "384", "256-512": "256-512"},
                "fashion_mnist": {"256": "32", "384": "40", "256-512": "32-48"}}

# Table 3's (configuration, training scale) pairs.
TABLE3 = (("A", "256"), ("A-LRN", "256"), ("B", "256"),
          ("C", "256"), ("C", "384"), ("C", "256-512"),
          ("D", "256"), ("D", "384"), ("D", "256-512"),
          ("E", "256"), ("E", "384"), ("E", "256-512"))


def paper_chain(table: Sequence[tuple[str, str]], seeds: Sequence[int], *,
                warm_start: bool = True, scales: dict[str, str], extra: str = "",
                finetune: dict | None = None) -> list[dict]:
  """Runs for the (config, S) pairs of `table` per seed; `scales` maps the paper's S
  ("256", "384", "256-512") to this data set's, `extra` is appended to every run's arg
  and `finetune` (overrides) to the fine-tuned runs'. With `warm_start`, the paper's
  chain; without, every run starts from Glorot init (the paper's note)."""
  runs = []
  for seed in seeds:
    name = lambda model, scale: f"{model}_S{scales[scale]}_seed{seed}"  # noqa: E731
    for model, scale in table:
      run = dict(name=name(model, scale),
                 arg=f"model={model},S={scales[scale]},seed={seed}{extra}")
      previous = {"384": "256", "256-512": "384"}.get(scale)
      if previous:  # fine-tune the same config's net trained at the previous scale
        run.update(parent=name(model, previous), layers="all",
                   overrides={"optim.lr": 1e-3, **(finetune or {})})
      elif model not in ("A", "A-LRN") and warm_start:
        run.update(parent=name("A", "256"), layers="paper")
      elif not warm_start:
        run["arg"] += ",init=glorot"
      runs.append(run)
  return runs


def table3_sweep(arg: str, scales: dict[str, str], finetune_epochs: int = 0,
                 **run_args) -> list[dict]:
  """An experiment's `sweep(arg)`: Table 3's runs with the paper's chain (`chain=glorot`:
  no warm start, Glorot init), `seeds=N` of each, the fine-tuned runs (S=384 and
  multi-scale, whose length the paper does not give) trained for `finetune_epochs=N`
  (default as given; 0: as the others). `run_args` are more arguments, with their
  defaults, handed on to every run's `get_config` (e.g. `quick=False`, `width=0.125`)."""
  parsed = config_lib.parse_arg(arg, seeds=1, chain="paper", finetune_epochs=finetune_epochs,
                                **run_args)
  return paper_chain(
      TABLE3, range(parsed.seeds), warm_start=parsed.chain == "paper", scales=scales,
      extra="".join(f",{key}={parsed[key]}" for key in run_args),
      finetune={"optim.epochs": parsed.finetune_epochs} if parsed.finetune_epochs else {})


def expand(specs: Sequence[dict]) -> list[Run]:
  """Checks a sweep's runs and puts parents before children."""
  runs = {}
  for spec in specs:
    unknown = set(spec) - {f.name for f in dataclasses.fields(Run)}
    if unknown:
      raise ValueError(f"run {spec.get('name')!r}: unknown keys {sorted(unknown)}")
    if spec["name"] in runs:
      raise ValueError(f"two runs are named {spec['name']!r}")
    runs[spec["name"]] = Run(**dict(spec, overrides=tuple(spec.get("overrides", {}).items())))
  ordered, placed = [], set()

  def place(run: Run, path: tuple[str, ...]):
    if run.name in placed:
      return
    if run.name in path:
      raise ValueError(f"the sweep's parents form a cycle: {' -> '.join(path + (run.name,))}")
    if run.parent is not None:
      if run.parent not in runs:
        raise ValueError(f"run {run.name!r} has parent {run.parent!r}, which is not in the sweep")
      place(runs[run.parent], path + (run.name,))
    placed.add(run.name)
    ordered.append(run)

  for run in runs.values():
    place(run, ())
  return ordered


def train_command(run: Run, config_file: str, root: str) -> list[str]:
  """The `launch.py train` command line of one run."""
  command = [sys.executable, LAUNCH, "train", f"--config={config_file}:{run.arg}",
             f"--workdir={os.path.join(root, run.name)}"]
  if run.parent:
    command += [f"--config.warm_start.workdir={os.path.join(root, run.parent)}",
                f"--config.warm_start.layers={run.layers}"]
  return command + [f"--config.{key}={value}" for key, value in run.overrides]


def state(run: Run, root: str) -> str:
  workdir = os.path.join(root, run.name)
  for marker, name in ((EVALUATED, "done"), (FAILED, "failed"), (DONE, "trained")):
    if os.path.exists(os.path.join(workdir, marker)):
      return name
  return "started" if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else "pending"


def eval_command(run: Run, root: str) -> list[str]:
  """The `launch.py eval` of a trained run: all its config.evaluations (the paper's
  tables, see `config.paper_evaluations`) in one process."""
  return [sys.executable, LAUNCH, "eval", f"--workdir={os.path.join(root, run.name)}",
          "--configured"]


def run_local(runs: Sequence[Run], config_file: str, root: str, *, parallel: int = 1,
              execute: Callable[[list[str]], subprocess.CompletedProcess] | None = None,
              log: Callable[[str], None] = print) -> dict[str, str]:
  """Trains and evaluates what is not done, up to `parallel` runs at a time, each as
  soon as its parent is done; returns each run's final state. A failed run's
  descendants are "blocked" and never start."""
  execute = execute or (lambda command: subprocess.run(
      command, capture_output=True, text=True, check=False))
  outcome = {run.name: "done" for run in runs if state(run, root) == "done"}
  pending = [run for run in runs if run.name not in outcome]  # parents first
  running = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    while pending or running:
      for run in list(pending):
        parent = outcome.get(run.parent, "pending") if run.parent else "done"
        if parent in ("failed", "blocked"):
          outcome[run.name] = "blocked"
          log(f"{run.name}: blocked, parent {run.parent} is {parent}"
              f" (see {os.path.join(root, run.parent)})")
          pending.remove(run)
        elif parent == "done" and len(running) < max(1, parallel):
          running[pool.submit(train_and_evaluate_run, run, config_file, root, execute,
                              log)] = run
          pending.remove(run)
      finished, _ = concurrent.futures.wait(
          running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        outcome[running.pop(future).name] = future.result()
  return {run.name: outcome[run.name] for run in runs}


def train_and_evaluate_run(run: Run, config_file: str, root: str, execute, log) -> str:
  """One run's training (unless already trained) and evaluations: "done" or "failed"."""
  workdir = os.path.join(root, run.name)
  os.makedirs(workdir, exist_ok=True)
  if os.path.exists(os.path.join(workdir, FAILED)):
    os.remove(os.path.join(workdir, FAILED))  # tried again: it resumes
  trained = (os.path.exists(os.path.join(workdir, DONE))
             or attempt(run, root, [train_command(run, config_file, root)], DONE, execute,
                        log))
  done = trained and attempt(run, root, [eval_command(run, root)], EVALUATED, execute, log)
  return "done" if done else "failed"


def attempt(run: Run, root: str, commands: list[list[str]], marker: str,
            execute: Callable[[list[str]], subprocess.CompletedProcess],
            log: Callable[[str], None]) -> bool:
  """Runs `commands` until one fails, which leaves FAILED with its output; when all
  succeed, leaves `marker` with the run's last validation metrics."""
  workdir = os.path.join(root, run.name)
  for command in commands:
    log(f"{run.name}: {' '.join(command[1:])}")
    result = execute(command)
    if result.returncode:
      with open(os.path.join(workdir, FAILED), "w") as f:
        f.write((result.stdout or "") + (result.stderr or ""))
      log(f"{run.name}: failed, exit code {result.returncode}; its output is in "
          f"{os.path.join(workdir, FAILED)}")
      return False
  with open(os.path.join(workdir, marker), "w") as f:
    json.dump(last_metrics(workdir), f)
  return True


def last_metrics(workdir: str) -> dict:
  """The newest validation record of a run, or {}."""
  evals = [r for r in metrics_lib.read_metrics(workdir) if "val_top1_err" in r]
  return evals[-1] if evals else {}


def status_table(runs: Sequence[Run], root: str) -> str:
  from vgg_jax.summary import markdown_table  # pylint: disable=import-outside-toplevel
  rows = []
  for run in runs:
    last = last_metrics(os.path.join(root, run.name))
    rows.append([run.name, state(run, root), run.parent or "-",
                 last.get("step", "-"), _percent(last.get("val_top1_err")),
                 _percent(last.get("val_top5_err"))])
  return markdown_table(["run", "state", "parent", "step", "val top-1 %", "val top-5 %"], rows)


def _percent(value) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def load_sweep(config_spec: str) -> tuple[str, list[Run]]:
  """"experiments/FILE.py:ARG" -> (the file, its `sweep(ARG)` expanded)."""
  config_file, _, arg = config_spec.partition(":")
  config_file = os.path.abspath(config_file)
  module = config_lib.load_experiment_module(config_file)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{config_file} has no sweep(arg)")
  return config_file, expand(module.sweep(arg))


# ------------------------------------------------------------------------ forecast


# (train images, classes, channels) of the data sets a sweep may use, for the forecast.
DATASETS = {"imagenet2012": (1_281_167, 1000, 3), "fashion_mnist": (60_000, 10, 1),
            "cifar10": (50_000, 10, 3), "cifar100": (50_000, 100, 3),
            "imagenette": (9_469, 10, 3)}
# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "tpu-v4": 275e12,
              "tpu-v5p": 459e12}


def run_config(run: Run, config_file: str):
  """The run's resolved config, as `launch.py train` will see it."""
  config = config_lib.experiment_config(config_file, run.arg)
  for key, value in run.overrides:
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def training_flops(config) -> float:
  """FLOPs to train the model at the training crop (see `model.training_flops_per_image`),
  x the images the run trains on."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from vgg_jax import model as model_lib, train  # pylint: disable=import-outside-toplevel
  images, classes, channels = DATASETS[config.data.name]
  cfg = train.model_config(config, num_classes=classes, in_channels=channels)
  per_image = model_lib.training_flops_per_image(
      nnx.eval_shape(lambda: model_lib.VGG(cfg, rngs=nnx.Rngs(0))), config.data.crop)
  per_epoch = images // config.optim.batch_size
  steps = config.optim.max_steps or config.optim.epochs * per_epoch
  return per_image * steps * config.optim.batch_size


def forecast(runs: Sequence[Run], config_file: str, accelerator: str, mfu: float) -> str:
  """Per run: training FLOPs and device-hours on `accelerator` at `mfu` of its peak."""
  from vgg_jax.summary import markdown_table  # pylint: disable=import-outside-toplevel
  rows, total = [], 0.0
  for run in runs:
    flops = training_flops(run_config(run, config_file))
    hours = flops / (PEAK_FLOPS[accelerator] * mfu) / 3600
    total += hours
    rows.append([run.name, f"{flops:.3g}", f"{hours:.3g}"])
  rows.append(["total", "", f"{total:.3g}"])
  return (markdown_table(["run", "training FLOPs", f"{accelerator}-hours"], rows)
          + f"\n\nAt {mfu:.0%} of {accelerator}'s {PEAK_FLOPS[accelerator] / 1e12:.0f} "
          f"TFLOP/s bf16 peak; evaluation not included.")


# ------------------------------------------------------------------- cluster backends


def cluster_commands(run: Run, config_file: str, root: str, repo: str) -> tuple[str, str]:
  """One run's training and evaluation commands on a cluster host, as shell lines:
  every host runs the same program and `--distributed` has JAX find the others (SLURM
  or Cloud TPU). Paths inside this checkout become paths inside `repo`, the checkout
  on the hosts."""
  here = os.path.dirname(LAUNCH)
  remote_config = os.path.join(repo, os.path.relpath(config_file, here))
  return tuple(  # each without this python and launch.py
      shlex.join(["python3", os.path.join(repo, "launch.py"), *command[2:], "--distributed"])
      for command in (train_command(run, remote_config, root), eval_command(run, root)))


def slurm_scripts(runs: Sequence[Run], config_file: str, root: str, *, repo: str,
                  nodes: int = 1, gpus_per_node: int = 8, time: str = "72:00:00"
                  ) -> dict[str, str]:
  """sbatch scripts, one per run (one task per host), and `submit.sh`, which submits
  them with afterok dependencies so a run starts only when its parent succeeded."""
  scripts, submit = {}, ["#!/bin/bash", "set -euo pipefail"]
  for run in runs:
    workdir = os.path.join(root, run.name)
    scripts[f"{run.name}.sbatch"] = "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={run.name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={workdir}/slurm-%j.out",
        "set -euo pipefail",  # a failed training is not evaluated, and fails the job
        f"mkdir -p {workdir}",
        *(f"srun {command}" for command in cluster_commands(run, config_file, root, repo)),
        ""])
    after = f" --dependency=afterok:${{job_{_shell(run.parent)}}}" if run.parent else ""
    submit.append(f"job_{_shell(run.name)}=$(sbatch --parsable{after} "
                  f"{os.path.join(root, 'slurm', run.name)}.sbatch)")
  scripts["submit.sh"] = "\n".join(submit + [""])
  return scripts


def tpu_commands(runs: Sequence[Run], config_file: str, root: str, *, repo: str,
                 tpu: str, zone: str) -> list[str]:
  """gcloud commands that start each run on every host of a Cloud TPU VM pod, parents
  first (as big_vision's README does); run them one after another."""
  return [f"gcloud compute tpus tpu-vm ssh {tpu} --zone={zone} --worker=all "
          f"--command={shlex.quote(' && '.join(cluster_commands(run, config_file, root, repo)))}"
          for run in runs]


def _shell(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name)
