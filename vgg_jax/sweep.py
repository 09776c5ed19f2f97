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
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, Iterator, Sequence

import jax
import ml_collections

from vgg_jax import checkpoint as ckpt_lib
from vgg_jax import config as config_lib
from vgg_jax import data as data_lib
from vgg_jax import lock as lock_lib
from vgg_jax import metrics as metrics_lib
from vgg_jax import paper, paths, train
from vgg_jax.scale import Scale
from vgg_jax.util import PEAK_FLOPS, TPU_CHIPS, markdown_table

DONE, EVALUATED, FAILED = "sweep_done.json", "sweep_evaluated.json", "sweep_failed.txt"
PREEMPTED = "sweep_preempted.txt"  # stopped by SIGTERM after saving: it resumes next time
LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch.py")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  arg: str
  parent: str | None = None
  layers: str = "paper"
  overrides: tuple[tuple[str, object], ...] = ()
  stage: int = 0  # runs of a later stage start after every run of the earlier ones


def paper_chain(
  table: Sequence[tuple[str, Scale]],
  seeds: Sequence[int],
  *,
  warm_start: bool = True,
  scales: dict[Scale, Scale],
  extra: str = "",
  finetune: dict | None = None,
  init: str = "glorot",
  prefix: str = "",
) -> list[dict]:
  """Runs for the (config, paper S) pairs of `table` per seed; `scales` maps the paper's
  S to this data set's (`paper.STAND_INS`; any spelling `Scale.of` reads), `extra` is
  appended to every run's arg and `finetune` (overrides) to the fine-tuned runs'. With
  `warm_start`, the paper's chain; without, every run starts from `init` (Glorot's: the
  paper's note). `prefix` starts every run's name (several arms in one sweep)."""
  scales = {Scale.of(theirs): Scale.of(ours) for theirs, ours in scales.items()}
  runs = []
  for seed in seeds:
    name = lambda model, s: f"{prefix}{model}_S{scales[s].name}_seed{seed}"  # noqa: E731
    for model, scale in table:
      scale = Scale.of(scale)
      run = dict(
        name=name(model, scale), arg=f"model={model},S={scales[scale].name},seed={seed}{extra}"
      )
      previous = paper.FINE_TUNED_FROM.get(scale)
      if previous:  # fine-tune the same config's net trained at the previous scale
        run.update(
          parent=name(model, previous),
          layers="all",
          overrides={"optim.lr": 1e-3, **(finetune or {})},
        )
      elif model not in ("A", "A-LRN") and warm_start:
        run.update(parent=name("A", paper.S256), layers="paper")
      elif not warm_start:
        run["arg"] += f",init={init}"
      runs.append(run)
  return runs


def table3_sweep(
  arg: str, scales: dict[Scale, Scale], finetune_epochs: int = 0, **run_args
) -> list[dict]:
  """An experiment's `sweep(arg)`: Table 3's runs with the paper's chain (`chain=glorot`:
  no warm start, Glorot init), `seeds=N` of each, the fine-tuned runs (S=384 and
  multi-scale, whose length the paper does not give) trained for `finetune_epochs=N`
  (default as given; 0: as the others). `run_args` are more arguments, with their
  defaults, handed on to every run's `get_config` (e.g. `quick=False`, `width=0.125`)."""
  parsed = config_lib.parse_arg(
    arg, seeds=1, chain="paper", finetune_epochs=finetune_epochs, **run_args
  )
  return paper_chain(
    paper.TABLE3_RUNS,
    range(parsed.seeds),
    warm_start=parsed.chain == "paper",
    scales=scales,
    extra="".join(f",{key}={parsed[key]}" for key in run_args),
    finetune={"optim.epochs": parsed.finetune_epochs} if parsed.finetune_epochs else {},
  )


def expand(specs: Sequence[dict]) -> list[Run]:
  """Checks a sweep's runs and orders them: parents before children, otherwise by stage
  and then seed-major (every run of seed 0, then of seed 1, ...), so a sweep stopped
  early still holds complete comparisons paired by seed, the first stage's first."""
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

  for run in sorted(runs.values(), key=lambda run: (run.stage, seed_of(run))):
    place(run, ())
  return ordered


def warm_start_overrides(run: Run, root: str) -> list[tuple[str, object]]:
  """The config fields that start `run` from its parent's weights, then its own."""
  warm = (
    [("warm_start.workdir", paths.join(root, run.parent)), ("warm_start.layers", run.layers)]
    if run.parent
    else []
  )
  return warm + list(run.overrides)


def train_command(run: Run, config_file: str, root: str) -> list[str]:
  """The `launch.py train` command line of one run."""
  return [
    sys.executable,
    LAUNCH,
    "train",
    f"--config={config_file}:{run.arg}",
    f"--workdir={paths.join(root, run.name)}",
  ] + [f"--config.{key}={value}" for key, value in warm_start_overrides(run, root)]


def state(run: Run, root: str) -> str:
  workdir = paths.Path(root, run.name)
  for marker, name in (
    (EVALUATED, "done"),
    (FAILED, "failed"),
    (PREEMPTED, "preempted"),
    (DONE, "trained"),
  ):
    if (workdir / marker).exists():
      return name
  return "started" if (workdir / "metrics.jsonl").exists() else "pending"


def eval_command(run: Run, root: str) -> list[str]:
  """The `launch.py eval` of a trained run: all its config.evaluations (the paper's
  tables, see `config.paper_evaluations`) in one process."""
  return [
    sys.executable,
    LAUNCH,
    "eval",
    f"--workdir={paths.join(root, run.name)}",
    "--configured",
  ]


# ---------------------------------------------------------------------- local backend


class CommandFailed(RuntimeError):
  """A run's subprocess exited with an error; `output` is what it printed."""

  def __init__(self, returncode: int, output: str):
    super().__init__(f"exit code {returncode}")
    self.output = output


def compilation_cache_dir(root: str) -> str:
  """ROOT/jax_cache, or the cache directory the user set (JAX_COMPILATION_CACHE_DIR):
  theirs wins, one cache for all their sweeps."""
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or paths.join(
    paths.absolute(root), "jax_cache"
  )


def enable_compilation_cache(root: str) -> None:
  """JAX's persistent compilation cache under the sweep root, for every program however
  small or quick to compile (CPU ones are both), so a resumed sweep compiles nothing
  twice. Resets JAX's cache if this process already compiled without it."""
  from jax.experimental.compilation_cache import compilation_cache as cc

  path = compilation_cache_dir(root)
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()


def subprocess_env(root: str) -> dict[str, str]:
  """A run's subprocess environment: the same persistent compilation cache."""
  return dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=compilation_cache_dir(root),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
  )


def run_config(run: Run, config_file: str, root: str | None = None):
  """The run's resolved config, as `launch.py train` will see it (with `root`, its warm
  start from the parent's workdir too)."""
  config = config_lib.experiment_config(config_file, run.arg)
  overrides = warm_start_overrides(run, root) if root is not None else run.overrides
  for key, value in overrides:
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


# How the step is lowered, not what it computes: a change of these keeps a run's results.
LOWERING_FIELDS = ("model.conv", "model.pool", "model.relu_grad")


class DesignChanged(ValueError):
  """Runs in the root were trained with another config than the sweep now asks for."""


def config_fields(config) -> dict[str, object]:
  """A config's fields as its config.json records them, the warm start's path made
  absolute (a root given as another path is the same root)."""
  fields = config_lib.flat_fields(json.loads(config.to_json_best_effort()))
  if fields.get("warm_start.workdir"):
    fields["warm_start.workdir"] = paths.absolute(fields["warm_start.workdir"])
  return fields


def config_changes(recorded: dict, wanted: dict) -> list[str]:
  """ "optim.max_steps 40 -> 60" per field that differs; a field the record lacks (it
  is newer than the run) counts as its default, lowering-only fields not at all."""
  old = {**config_fields(config_lib.base_config()), **recorded}
  return [
    f"{key} {old.get(key)} -> {value}"
    for key, value in sorted(wanted.items())
    if key not in LOWERING_FIELDS and old.get(key) != value
  ]


def changed_runs(runs: Sequence[Run], config_file: str, root: str) -> dict[str, list[str]]:
  """The trained runs (which would be skipped) whose config.json differs from what the
  design now asks, with what differs, and the runs started from such a parent. (A run
  not trained yet resumes with the design's config, as `train` does.)"""
  changed = {}
  for run in runs:  # parents first
    workdir = paths.Path(root, run.name)
    changes = [f"parent {run.parent} changed"] if run.parent in changed else []
    if (workdir / DONE).exists():
      recorded = json.loads((workdir / "config.json").read_text())
      wanted = config_fields(run_config(run, config_file, root))
      changes = config_changes(config_fields(ml_collections.ConfigDict(recorded)), wanted) + changes
    if changes and (workdir / "config.json").exists():
      changed[run.name] = changes
  return changed


def check_design(
  runs: Sequence[Run], config_file: str, root: str, retrain: bool, log: Callable[[str], None]
) -> None:
  """DesignChanged naming the runs trained with another config than the design asks
  for; with `retrain`, their directories go instead, so they train again."""
  changed = changed_runs(runs, config_file, root)
  if changed and not retrain:
    listed = "; ".join(
      f"{name} ({', '.join(changes[:3])}{', ...' if len(changes) > 3 else ''})"
      for name, changes in changed.items()
    )
    raise DesignChanged(
      f"{len(changed)} runs in {root} were trained with another config than the design "
      f"asks for: {listed}; rerun with --retrain to train them again into the same root"
    )
  for name, changes in changed.items():
    log(f"{name}: retrained ({', '.join(changes)})")
    paths.Path(root, name).rmtree()


def in_process_steps(run: Run, config_file: str, root: str) -> list[tuple]:
  """(what, function, marker) of one run in this process: training, then the run's
  configured evaluations (what `launch.py eval --configured` does)."""
  workdir = paths.join(root, run.name)

  def evaluate_run():
    from vgg_jax import evaluate  # pylint: disable=import-outside-toplevel

    with lock_lib.workdir_lock(workdir, "eval"):  # as `launch.py eval`: it writes eval/
      trained = evaluate.load_trained(workdir)
      for result in evaluate.evaluate_many([trained], evaluate.configured(trained.config)):
        evaluate.write_result(result)

  return [
    (
      "training",
      lambda: train.train_and_evaluate(run_config(run, config_file, root), workdir),
      DONE,
    ),
    ("evaluating", evaluate_run, EVALUATED),
  ]


def subprocess_steps(run: Run, config_file: str, root: str, execute) -> list[tuple]:
  """(what, function, marker) of one run as `launch.py train` and `eval` subprocesses;
  PREEMPTED_EXIT_CODE is a preemption, any other error a failure."""

  def call(command):
    def step():
      result = execute(command)
      if result.returncode == train.PREEMPTED_EXIT_CODE:
        raise train.Preempted(f"{command[2]} exited with {result.returncode}")
      if result.returncode:
        raise CommandFailed(result.returncode, (result.stdout or "") + (result.stderr or ""))

    return step

  return [
    ("training", call(train_command(run, config_file, root)), DONE),
    ("evaluating", call(eval_command(run, root)), EVALUATED),
  ]


def run_steps(run: Run, root: str, steps: list[tuple], log: Callable[[str], None]) -> str:
  """Runs what `run` has left of `steps`, each leaving its marker (with the last
  validation metrics): "done"; an exception leaves FAILED with the output or traceback:
  "failed"; a preemption leaves PREEMPTED: "preempted" (it resumes next time)."""
  workdir = paths.Path(root, run.name)
  workdir.mkdir(parents=True, exist_ok=True)
  for stale in (FAILED, PREEMPTED):  # tried again: it resumes
    (workdir / stale).unlink(missing_ok=True)
  for what, step, marker in steps:
    if (workdir / marker).exists():
      continue
    try:
      step()
    except train.Preempted as e:
      (workdir / PREEMPTED).write_text(f"preempted while {what}: {e}\n")
      log(f"{run.name}: preempted while {what} ({e}); it resumes next time")
      return "preempted"
    except Exception as e:  # pylint: disable=broad-except
      (workdir / FAILED).write_text(
        e.output if isinstance(e, CommandFailed) else traceback.format_exc()
      )
      log(f"{run.name}: {what} failed ({e}); see {workdir / FAILED}")
      return "failed"
    (workdir / marker).write_text(json.dumps(last_metrics(str(workdir))))
  return "done"


class Children:
  """The sweep's live subprocesses, run by pool threads. SIGTERM to the sweep is passed
  on to each (a trainer saves and exits 75, an evaluation exits 75) and no run starts
  after it: the sweep ends preempted and leaves no orphan."""

  def __init__(self, root: str):
    self.env, self.live, self.stopped = subprocess_env(root), set(), False
    self.lock = threading.Lock()

  def run(self, command: list[str]) -> subprocess.CompletedProcess:
    with self.lock:
      if self.stopped:
        return subprocess.CompletedProcess(command, train.PREEMPTED_EXIT_CODE, "", "")
      process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
      )
      self.live.add(process)
    try:
      out, err = process.communicate()
    finally:
      with self.lock:
        self.live.discard(process)
    return subprocess.CompletedProcess(command, process.returncode, out, err)

  def stop(self, signum=None, frame=None):
    """The SIGTERM handler (main thread, which never holds the lock)."""
    self.stopped = True
    for process in list(self.live):
      process.send_signal(signal.SIGTERM)


@contextlib.contextmanager
def forwarding_sigterm(children: Children | None) -> Iterator[None]:
  """While the block runs, SIGTERM stops `children` instead of this process."""
  if children is None or threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, children.stop)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


class InlineExecutor(concurrent.futures.Executor):
  """Runs each submitted call at once in the calling (main) thread: in-process runs
  need it (SIGTERM handlers can only be installed there)."""

  def submit(self, fn, /, *args, **kwargs):
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args, **kwargs))
    except BaseException as e:  # pylint: disable=broad-except
      future.set_exception(e)
    return future


def seed_of(run: Run) -> int:
  """The run's seed, from its overrides or its `seed=N` argument (0 if neither)."""
  overrides = dict(run.overrides)
  if "seed" in overrides:
    return int(overrides["seed"])
  tokens = dict(t.partition("=")[::2] for t in run.arg.split(",") if "=" in t)
  return int(tokens.get("seed", 0))


def run_local(
  runs: Sequence[Run],
  config_file: str,
  root: str,
  *,
  parallel: int = 1,
  subprocesses: bool = False,
  execute: Callable[[list[str]], subprocess.CompletedProcess] | None = None,
  time_budget_s: float | None = None,
  costs: dict[str, float] | None = None,
  retrain: bool = False,
  log: Callable[[str], None] = print,
  clock: Callable[[], float] = time.monotonic,
) -> dict[str, str]:
  """Trains and evaluates what is not done, in `runs`' order (parents first, see
  `expand`); returns each run's state. By default in this process, one run at a time,
  sharing compiled programs (`train.build_program`) and JAX's persistent compilation
  cache under ROOT; with `subprocesses` (implied by `execute` or `parallel` > 1) as
  `launch.py` commands, up to `parallel` at a time, each as soon as its parent is done.
  A failed run's descendants are "blocked"; a preempted run stops the sweep (its state:
  "preempted"); after `time_budget_s` no run starts (the rest stay "pending"). One line
  per run start and end, with the time left forecast from `costs` (e.g. FLOPs; default
  1 per run) at this call's pace. A run trained with another config than the design
  now asks for is refused (DesignChanged), or with `retrain` trained again."""
  check_design(runs, config_file, root, retrain, log)
  subprocesses = subprocesses or execute is not None or parallel > 1
  children = Children(root) if subprocesses and execute is None else None
  if subprocesses:
    execute = execute or children.run
    steps = lambda run: subprocess_steps(run, config_file, root, execute)  # noqa: E731
    pool = concurrent.futures.ThreadPoolExecutor(max(1, parallel))
  else:
    enable_compilation_cache(root)
    steps = lambda run: in_process_steps(run, config_file, root)  # noqa: E731
    pool = InlineExecutor()
  outcome = {run.name: "done" for run in runs if state(run, root) == "done"}
  pending = [run for run in runs if run.name not in outcome]
  pace = Pace({run.name: (costs or {}).get(run.name, 1.0) for run in pending}, clock)
  running, stopping = {}, ""
  with pool, forwarding_sigterm(children):
    while pending and not stopping or running:
      for run in list(pending):
        parent = outcome.get(run.parent, "pending") if run.parent else "done"
        if parent in ("failed", "blocked"):
          outcome[run.name] = "blocked"
          log(
            f"{run.name}: blocked, parent {run.parent} is {parent}"
            f" (see {paths.join(root, run.parent)})"
          )
          pending.remove(run)
          pace.drop(run.name)
        elif children is not None and children.stopped:
          stopping = "SIGTERM"
        elif time_budget_s is not None and pace.elapsed() >= time_budget_s:
          stopping = f"the time budget of {time_budget_s:g} s is spent"
        elif parent == "done" and len(running) < max(1, parallel) and not stopping:
          log(pace.started(run.name))
          pending.remove(run)
          running[pool.submit(run_steps, run, root, steps(run), log)] = run
      if not running:
        break
      finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        run = running.pop(future)
        outcome[run.name] = future.result()
        log(pace.finished(run.name, outcome[run.name]))
        if outcome[run.name] == "preempted":
          stopping = "a run was preempted"
  if pending:
    log(
      f"{len(pending)} runs not started ({stopping or 'their parents did not finish'});"
      " run the same command again to continue"
    )
  elif not stopping:
    evaluate_ensembles(ensemble_pairs(runs, config_file, root), root, log)
  return {run.name: outcome.get(run.name, "pending") for run in runs}


def ensemble_pairs(runs: Sequence[Run], config_file: str, root: str) -> list[tuple[Run, Run]]:
  """Table 6's ensembles among the done runs: per arm (init, crop), S and seed, D with E,
  and the two configs with the lowest mean Table 3 top-1 error over seeds if another
  pair."""
  from vgg_jax import report  # pylint: disable=import-outside-toplevel

  groups = {}
  for run in runs:
    if state(run, root) == "done":
      c = run_config(run, config_file)
      key = (c.model.init, c.data.crop, tuple(c.data.scale))
      groups.setdefault(key, {}).setdefault(c.seed, {})[c.model.name] = run
  if all(len(members) < 2 for by_seed in groups.values() for members in by_seed.values()):
    return []
  table3 = {
    r["run"]: r["top1_err"]
    for r in report.largest_splits(report.collect(root))
    if 3 in report.table_of(r)
  }
  pairs = []
  for by_seed in groups.values():
    errors = {}
    for members in by_seed.values():
      for config, run in members.items():
        if run.name in table3:
          errors.setdefault(config, []).append(table3[run.name])
    best = tuple(sorted(errors, key=lambda config: sum(errors[config]) / len(errors[config]))[:2])
    for members in by_seed.values():
      for pair in dict.fromkeys([("D", "E"), tuple(sorted(best))]):
        if len(pair) == 2 and all(config in members for config in pair):
          pairs.append(tuple(members[config] for config in pair))
  return pairs


def evaluate_ensembles(
  pairs: Sequence[tuple[Run, Run]], root: str, log: Callable[[str], None]
) -> None:
  """Each pair's soft-max average under the first run's configured evaluations (what
  `launch.py eval --workdir FIRST --ensemble SECOND` does per protocol), written to the
  first run's eval/ (..._with_SECOND.json, for the report's Table 6); done once."""
  from vgg_jax import evaluate  # pylint: disable=import-outside-toplevel

  for first, second in pairs:
    marker = paths.Path(root, first.name, f"sweep_ensemble_{second.name}.json")
    if marker.exists():
      continue
    try:
      with lock_lib.workdir_lock(paths.join(root, first.name), "eval"):  # it writes eval/
        models = [evaluate.load_trained(paths.join(root, run.name)) for run in (first, second)]
        written = [
          evaluate.write_result(result)
          for result in evaluate.evaluate_many(models, evaluate.configured(models[0].config))
        ]
    except Exception as e:  # pylint: disable=broad-except
      log(f"ensemble {first.name} + {second.name} failed: {e!r}")
      continue
    marker.write_text(json.dumps(written))
    log(f"[{time.strftime('%H:%M:%S')}] ensemble {first.name} + {second.name}: evaluated")


def exit_status(outcome: dict[str, str]) -> int:
  """`launch.py sweep`'s: PREEMPTED_EXIT_CODE if a run was preempted (run it again), 1 if
  one failed or was blocked, else 0 (runs left by the time budget included)."""
  states = set(outcome.values())
  if "preempted" in states:
    return train.PREEMPTED_EXIT_CODE
  return 1 if states & {"failed", "blocked"} else 0


class Pace:
  """Progress lines: the time, the run, and the time left at this call's pace (seconds
  per unit of cost, over the runs finished so far)."""

  def __init__(self, costs: dict[str, float], clock: Callable[[], float]):
    self.left, self.clock, self.start = dict(costs), clock, clock()
    self.done_cost, self.done_seconds, self.began = 0.0, 0.0, {}

  def elapsed(self) -> float:
    return self.clock() - self.start

  def drop(self, name: str):
    self.left.pop(name, None)

  def started(self, name: str) -> str:
    self.began[name] = self.clock()
    return f"[{time.strftime('%H:%M:%S')}] {name}: started; {self.forecast()}"

  def finished(self, name: str, outcome: str) -> str:
    seconds = self.clock() - self.began.pop(name)
    cost = self.left.pop(name)
    if outcome == "done":
      self.done_cost, self.done_seconds = self.done_cost + cost, self.done_seconds + seconds
    return f"[{time.strftime('%H:%M:%S')}] {name}: {outcome} in {seconds:.0f} s; {self.forecast()}"

  def forecast(self) -> str:
    runs = f"{len(self.left)} runs to go"
    if not self.done_cost:
      return runs
    minutes = self.done_seconds / self.done_cost * sum(self.left.values()) / 60
    return f"{runs}, about {minutes:.1f} min at this call's pace"


def last_metrics(workdir: str) -> dict:
  """The newest validation record of a run, or {}."""
  evals = [r for r in metrics_lib.read_metrics(workdir) if "val_top1_err" in r]
  return evals[-1] if evals else {}


def status_table(runs: Sequence[Run], root: str) -> str:
  rows = []
  for run in runs:
    last = last_metrics(paths.join(root, run.name))
    now = state(run, root)
    rows.append(
      [
        run.name,
        now,
        run.parent or "-",
        saved_step(paths.join(root, run.name)) if now == "preempted" else last.get("step", "-"),
        _percent(last.get("val_top1_err")),
        _percent(last.get("val_top5_err")),
      ]
    )
  return markdown_table(["run", "state", "parent", "step", "val top-1 %", "val top-5 %"], rows)


def saved_step(workdir: str) -> int | str:
  """The newest complete checkpoint's step, or "-"."""
  return max(ckpt_lib.complete_steps(paths.join(workdir, "checkpoints")), default="-")


def preempted_line(outcome: dict[str, str], root: str) -> str:
  """The sweep's one-line preemption message."""
  names = [name for name, now in outcome.items() if now == "preempted"]
  saved = ", ".join(f"{name} at step {saved_step(paths.join(root, name))}" for name in names)
  return f"preempted: saved {saved} in {root}; rerun the same command to resume"


def _percent(value) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def load_sweep(config_spec: str) -> tuple[str, list[Run]]:
  """ "experiments/FILE.py:ARG" -> (the file, its `sweep(ARG)` expanded)."""
  config_file, _, arg = config_spec.partition(":")
  config_file = os.path.abspath(config_file)
  if not paths.Path(config_file).is_file():
    raise config_lib.BadArgument(f"--config={config_spec}: no such file")
  module = config_lib.load_experiment_module(config_file)
  if not hasattr(module, "sweep"):
    raise config_lib.BadArgument(f"--config={config_spec}: {config_file} has no sweep(arg)")
  try:
    specs = module.sweep(arg)
  except ValueError as e:  # an unknown design or argument: parse_arg names the known ones
    raise config_lib.BadArgument(f"--config={config_spec}: {e}") from e
  return config_file, expand(specs)


# ------------------------------------------------------------------------ forecast


def training_steps(config) -> int:
  """The steps a run trains for: max_steps, else its epochs of the data set."""
  images, _, _ = data_lib.DATASET_SIZES[config.data.name]
  return config.optim.max_steps or config.optim.epochs * (images // config.optim.batch_size)


def training_flops(config) -> float:
  """FLOPs to train the model at the training crop (see `model.training_flops_per_image`),
  x the images the run trains on."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from vgg_jax import model as model_lib  # pylint: disable=import-outside-toplevel

  _, classes, channels = data_lib.DATASET_SIZES[config.data.name]
  cfg = config_lib.network_config(config, num_classes=classes, in_channels=channels)
  per_image = model_lib.training_flops_per_image(
    nnx.eval_shape(lambda: model_lib.VGG(cfg, rngs=nnx.Rngs(0))), config.data.crop
  )
  return per_image * training_steps(config) * config.optim.batch_size


def run_flops(runs: Sequence[Run], config_file: str) -> dict[str, float]:
  """Each run's training FLOPs (see `training_flops`)."""
  return {run.name: training_flops(run_config(run, config_file)) for run in runs}


def has_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def forecast(
  runs: Sequence[Run],
  config_file: str,
  accelerator: str,
  mfu: float,
  flops: dict[str, float] | None = None,
  topology: str | None = None,
) -> str:
  """Per run: training FLOPs and device-hours on `accelerator` at `mfu` of its peak; with
  a TPU `topology` and libtpu installed, the hours at the roofline bound of each run's
  train step compiled for that slice instead (`compiled_forecast`)."""
  flops = flops or run_flops(runs, config_file)
  if topology and has_libtpu():
    return compiled_forecast(runs, config_file, topology, flops)
  rows, total = [], 0.0
  for run in runs:
    hours = flops[run.name] / (PEAK_FLOPS[accelerator] * mfu) / 3600
    total += hours
    rows.append([run.name, f"{flops[run.name]:.3g}", f"{hours:.3g}"])
  rows.append(["total", "", f"{total:.3g}"])
  why = f" (libtpu is not installed: {topology} not compiled)" if topology else ""
  return (
    markdown_table(["run", "training FLOPs", f"{accelerator}-hours"], rows)
    + f"\n\n{len(runs)} runs, {total * 60:.1f} {accelerator}-minutes at an assumed {mfu:.0%} of "
    f"{accelerator}'s {PEAK_FLOPS[accelerator] / 1e12:.0f} TFLOP/s bf16 peak{why}; "
    "evaluation not included."
  )


def compiled_forecast(
  runs: Sequence[Run], config_file: str, topology: str, flops: dict[str, float]
) -> str:
  """Per run: its steps x the roofline bound of its train step compiled for `topology`
  (`tpu_compile`: FLOPs at peak, bytes at HBM and collectives at ICI bandwidth), in
  slice-hours. A lower bound: the chip's MFU is not assumed but its best case."""
  from vgg_jax import tpu_compile  # pylint: disable=import-outside-toplevel

  configs = {run.name: run_config(run, config_file) for run in runs}
  costs = tpu_compile.train_step_costs(configs, topology)
  chip = TPU_CHIPS[tpu_compile.chip_name(topology)]
  rows, total = [], 0.0
  for run in runs:
    if costs[run.name] is None:
      rows.append([run.name, f"{flops[run.name]:.3g}", "does not fit", ""])
      continue
    bound = costs[run.name].bound_s(chip)
    hours = training_steps(configs[run.name]) * bound / 3600
    total += hours
    rows.append([run.name, f"{flops[run.name]:.3g}", f"{bound * 1e3:.1f}", f"{hours:.3g}"])
  rows.append(["total", "", "", f"{total:.3g}"])
  chips = len(tpu_compile.topology_devices(topology))
  return (
    markdown_table(["run", "training FLOPs", "step bound (ms)", f"{topology}-hours"], rows)
    + f"\n\n{len(runs)} runs, {total * 60:.1f} {topology}-minutes ({total * chips:.3g} "
    f"chip-hours) at the roofline bound of each run's train step compiled for {topology} "
    "(libtpu; launch.py compile prints one): a lower bound, no MFU assumed; evaluation "
    "not included."
  )


# ------------------------------------------------------------------- cluster backends


def cluster_commands(
  run: Run, config_file: str, root: str, repo: str, python: str
) -> tuple[str, str]:
  """One run's training and evaluation commands on a cluster host, as shell lines:
  every host runs the same program with `python` and `--distributed` has JAX find the
  others (SLURM or Cloud TPU). Paths inside this checkout become paths inside `repo`,
  the checkout on the hosts."""
  here = os.path.dirname(LAUNCH)
  remote_config = os.path.join(repo, os.path.relpath(config_file, here))
  return tuple(  # each without this python and launch.py
    shlex.join([python, os.path.join(repo, "launch.py"), *command[2:], "--distributed"])
    for command in (train_command(run, remote_config, root), eval_command(run, root))
  )


def slurm_scripts(
  runs: Sequence[Run],
  config_file: str,
  root: str,
  *,
  repo: str,
  python: str = "python3",
  nodes: int = 1,
  gpus_per_node: int = 8,
  time: str = "72:00:00",
) -> dict[str, str]:
  """sbatch scripts, one per run (one task per host), and `submit.sh`, which submits
  them with afterok dependencies so a run starts only when its parent succeeded."""
  if not paths.is_local(root):
    raise ValueError(
      f"--backend slurm needs a shared filesystem for its scripts and job logs, not {root}"
    )
  scripts, submit = {}, ["#!/bin/bash", "set -euo pipefail"]
  for run in runs:
    workdir = paths.join(root, run.name)
    scripts[f"{run.name}.sbatch"] = "\n".join(
      [
        "#!/bin/bash",
        f"#SBATCH --job-name={run.name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={workdir}/slurm-%j.out",
        "#SBATCH --requeue",
        "set -euo pipefail",  # a failed training is not evaluated, and fails the job
        "# A preempted step (exit 75) requeues the job, which resumes from its checkpoints.",
        f'run() {{ "$@" || {{ status=$?; [ $status -ne {train.PREEMPTED_EXIT_CODE} ] || '
        'scontrol requeue "$SLURM_JOB_ID"; exit $status; }; }',
        f"mkdir -p {workdir}",
        *(
          f"run srun {command}"
          for command in cluster_commands(run, config_file, root, repo, python)
        ),
        "",
      ]
    )
    after = f" --dependency=afterok:${{job_{_shell(run.parent)}}}" if run.parent else ""
    submit.append(
      f"job_{_shell(run.name)}=$(sbatch --parsable{after} "
      f"{paths.join(root, 'slurm', run.name)}.sbatch)"
    )
  scripts["submit.sh"] = "\n".join(submit + [""])
  return scripts


def tpu_commands(
  runs: Sequence[Run],
  config_file: str,
  root: str,
  *,
  repo: str,
  tpu: str,
  zone: str,
  python: str = "python3",
) -> list[str]:
  """gcloud commands that start each run on every host of a Cloud TPU VM pod, parents
  first (as big_vision's README does); run them one after another. A preempted training
  (exit 75) starts again and resumes from its checkpoints; the evaluation follows."""
  commands = []
  for run in runs:
    training, evaluation = cluster_commands(run, config_file, root, repo, python)
    remote = (
      f"until {training}; do s=$?; [ $s -eq {train.PREEMPTED_EXIT_CODE} ] || exit $s;"
      f" done && {evaluation}"
    )
    commands.append(
      f"gcloud compute tpus tpu-vm ssh {tpu} --zone={zone} --worker=all "
      f"--command={shlex.quote(remote)}"
    )
  return commands


def _shell(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name)
