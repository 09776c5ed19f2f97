"""Sweeps: the paper's chain as data, dependency order, failures, resumption."""

import json
import os
import subprocess
import types

import pytest

from conftest import FASHION, ROOT, needs_fashion_mnist, result, write_run
from conftest import SWEEP_TINY as TINY
from vgg_jax import metrics, sweep, util
from vgg_jax.config import load_experiment_module


def test_paper_chain_expands_table3_per_seed_parents_first():
  runs = sweep.expand(load_experiment_module("fashion_mnist").sweep("seeds=2"))
  assert len(runs) == 24
  by_name = {r.name: r for r in runs}
  order = [r.name for r in runs]
  for run in runs:
    if run.parent:
      assert order.index(run.parent) < order.index(run.name)
  assert by_name["A_S32_seed1"].parent is None and by_name["A-LRN_S32_seed0"].parent is None
  d = by_name["D_S32_seed1"]
  assert (d.parent, d.layers, d.arg) == (
    "A_S32_seed1",
    "paper",
    "model=D,S=32,seed=1,width=0.125,epochs=2,holdout=5000,backend=tfds,dtype=float32,"
    "quick=False,manual_dir=",
  )
  d384, jitter = by_name["D_S40_seed0"], by_name["D_S32-48_seed0"]
  assert (d384.parent, d384.layers, dict(d384.overrides)) == (
    "D_S32_seed0",
    "all",
    {"optim.lr": 1e-3, "optim.epochs": 1},
  )
  assert jitter.parent == "D_S40_seed0" and jitter.arg.startswith("model=D,S=32-48")
  assert {r.name.split("_")[0] for r in runs} == {"A", "A-LRN", "B", "C", "D", "E"}


def test_glorot_chain_has_no_warm_start_from_a():
  runs = sweep.expand(load_experiment_module("paper").sweep("chain=glorot"))
  b = next(r for r in runs if r.name == "B_S256_seed0")
  assert b.parent is None and b.arg.endswith("init=glorot")
  e384 = next(r for r in runs if r.name == "E_S384_seed0")
  assert e384.parent == "E_S256_seed0" and dict(e384.overrides) == {"optim.lr": 1e-3}


def test_sweep_arguments_reach_every_run_and_unknown_ones_fail():
  runs = load_experiment_module("fashion_mnist").sweep("width=0.25,finetune_epochs=0")
  assert all(",width=0.25," in r["arg"] for r in runs)
  assert all("optim.epochs" not in r.get("overrides", {}) for r in runs)
  with pytest.raises(ValueError, match="unknown config argument 'depth'"):
    load_experiment_module("fashion_mnist").sweep("depth=3")


def test_bad_sweeps_are_clear_errors():
  with pytest.raises(ValueError, match="parent 'X', which is not in the sweep"):
    sweep.expand([dict(name="a", arg="", parent="X")])
  with pytest.raises(ValueError, match="cycle: a -> b -> a"):
    sweep.expand([dict(name="a", arg="", parent="b"), dict(name="b", arg="", parent="a")])
  with pytest.raises(ValueError, match="unknown keys \\['seed'\\]"):
    sweep.expand([dict(name="a", arg="", seed=1)])


def fake(fail: set[str], calls: list[tuple[str, str]], runs: list):
  """An executor that records each (command, run), fails the commands of the runs
  named in `fail` and, as training does, leaves the run's config.json."""
  by_name = {run.name: run for run in runs}

  def execute(command):
    workdir = next(a for a in command if a.startswith("--workdir=")).partition("=")[2]
    name = os.path.basename(workdir)
    calls.append((command[2], name))
    if command[2] == "train" and name not in fail:
      config = sweep.run_config(by_name[name], FASHION, os.path.dirname(workdir))
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    return subprocess.CompletedProcess(command, 1 if name in fail else 0, "", "boom")

  return execute


def runs_of(calls: list[tuple[str, str]], command: str) -> list[str]:
  return [name for kind, name in calls if kind == command]


def test_failed_parent_blocks_its_children_and_a_rerun_runs_only_what_is_left(tmp_path):
  runs = sweep.expand(
    [
      dict(name="A", arg=""),
      dict(name="B", arg="", parent="A"),
      dict(name="C", arg="", parent="B"),
      dict(name="Z", arg=""),
    ]
  )
  calls, messages = [], []
  outcome = sweep.run_local(
    runs, FASHION, str(tmp_path), execute=fake({"A"}, calls, runs), log=messages.append
  )
  assert outcome == {"A": "failed", "B": "blocked", "C": "blocked", "Z": "done"}
  assert runs_of(calls, "train") == ["A", "Z"] and runs_of(calls, "eval") == ["Z"]
  assert any("B: blocked, parent A is failed" in m for m in messages)
  assert "boom" in open(tmp_path / "A" / sweep.FAILED).read()
  calls.clear()
  assert set(
    sweep.run_local(
      runs, FASHION, str(tmp_path), execute=fake(set(), calls, runs), log=messages.append
    ).values()
  ) == {"done"}
  assert runs_of(calls, "train") == ["A", "B", "C"]  # Z was done
  calls.clear()
  sweep.run_local(runs, FASHION, str(tmp_path), execute=fake(set(), calls, runs), log=print)
  assert calls == []  # a finished sweep runs nothing


def test_each_run_is_evaluated_once_and_a_failed_evaluation_is_redone(tmp_path):
  """One `launch.py eval --configured` per run (its config.evaluations: the tables'
  protocols, see test_config). A run whose evaluation failed is evaluated again, not
  trained again."""
  runs = sweep.expand([dict(name="A", arg=""), dict(name="J", arg="", parent="A")])
  calls = []
  execute = fake(set(), calls, runs)

  def failing_eval(command):
    result = execute(command)
    return result if command[2] == "train" else subprocess.CompletedProcess(command, 1)

  outcome = sweep.run_local(runs, FASHION, str(tmp_path), execute=failing_eval, log=print)
  assert outcome == {"A": "failed", "J": "blocked"}
  assert sweep.state(runs[0], str(tmp_path)) == "failed"
  calls.clear()
  assert sweep.run_local(runs, FASHION, str(tmp_path), execute=execute, log=print) == {
    "A": "done",
    "J": "done",
  }
  assert runs_of(calls, "train") == ["J"]
  assert [c for c in calls if c[0] == "eval"] == [("eval", "A"), ("eval", "J")]
  assert sweep.eval_command(runs[1], str(tmp_path))[2:] == [
    "eval",
    f"--workdir={tmp_path / 'J'}",
    "--configured",
  ]
  assert os.path.exists(tmp_path / "J" / sweep.EVALUATED)


@needs_fashion_mnist
def test_a_real_sweep_warm_starts_and_resumes_a_killed_run(tmp_path):
  """A then B warm-started from it, for real; A was 'killed' after 2 of its 4 steps
  (its checkpoint is there, no done marker), so the sweep resumes it."""
  from vgg_jax import train

  runs = sweep.expand(
    [
      dict(name="A", arg="quick,backend=numpy", overrides=TINY),
      dict(name="B", arg="quick,backend=numpy,model=B", parent="A", overrides=TINY),
    ]
  )
  interrupted = sweep.run_config(runs[0], FASHION)
  interrupted.optim.max_steps = 2
  train.train_and_evaluate(interrupted, str(tmp_path / "A"))
  assert sweep.state(runs[0], str(tmp_path)) == "started"
  outputs = []

  def execute(command):
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    outputs.append((command[2], result.stdout + result.stderr))
    return result

  outcome = sweep.run_local(runs, FASHION, str(tmp_path), execute=execute, log=print)
  assert outcome == {"A": "done", "B": "done"}, outputs[-1][1][-3000:]
  trains = [output for command, output in outputs if command == "train"]
  assert "resumed from step 2" in trains[0]
  assert "warm start from" in trains[1] and "fc6/kernel" in trains[1]
  assert sorted(os.listdir(tmp_path / "B" / "eval")) == [
    "test_64_dense_Q32-37.json",
    "test_64_dense_Q32.json",
  ]
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "B")) if "val_top1_err" in r] == [
    4
  ]
  table = sweep.status_table(runs, str(tmp_path))
  assert "| A | done | - | 4 |" in table and "| B | done | A | 4 |" in table


def golden_sweep():
  """Three runs with a parent, a warm start of every layer and a quoted override."""
  return sweep.expand(
    [
      dict(name="A_S32_seed0", arg="model=A,S=32,seed=0"),
      dict(name="D_S32_seed0", arg="model=D,S=32,seed=0", parent="A_S32_seed0"),
      dict(
        name="D_S40_seed0",
        arg="model=D,S=40,seed=0",
        parent="D_S32_seed0",
        layers="all",
        overrides={"optim.lr": 1e-3, "mesh": (("data", -1), ("model", 2))},
      ),
    ]
  )


def golden(name: str) -> str:
  with open(os.path.join(ROOT, "tests", "golden", name)) as f:
    return f.read()


def test_slurm_scripts_match_the_golden_file():
  """One sbatch per run (one task per host, srun, --distributed), submitted with afterok
  dependencies on the parent's job. Overwrite the golden file only after reading the
  diff."""
  scripts = sweep.slurm_scripts(
    golden_sweep(), FASHION, "/ckpt/sweep", repo="/src/vgg_jax", nodes=2, gpus_per_node=4
  )
  assert "".join(f"# {n}\n{t}" for n, t in scripts.items()) == golden("slurm.txt")
  assert "--dependency=afterok:${job_D_S32_seed0}" in scripts["submit.sh"]


def test_tpu_commands_match_the_golden_file():
  commands = sweep.tpu_commands(
    golden_sweep(), FASHION, "/ckpt/sweep", repo="/src/vgg_jax", tpu="v4-32", zone="us-central2-b"
  )
  assert "\n".join(commands) + "\n" == golden("tpu.txt")
  assert all("--worker=all" in c and "--distributed" in c for c in commands)


def test_forecast_counts_the_papers_92_8_gflop_per_training_image():
  runs = sweep.expand(load_experiment_module("paper").sweep(""))
  d = next(r for r in runs if r.name == "D_S256_seed0")
  config = sweep.run_config(d, os.path.join(ROOT, "experiments", "paper.py"))
  images = 1_281_167 // 256 * 256 * 74
  assert sweep.training_flops(config) / images / 1e9 == pytest.approx(92.8, rel=2e-3)
  text = sweep.forecast([d], os.path.join(ROOT, "experiments", "paper.py"), "h100", 0.5)
  hours = sweep.training_flops(config) / (989e12 * 0.5) / 3600
  assert f"| D_S256_seed0 | {sweep.training_flops(config):.3g} | {hours:.3g} |" in text
  assert f"1 runs, {hours * 60:.1f} h100-minutes at an assumed 50% of h100's 989 TFLOP/s" in text


def test_a_tpu_forecast_uses_the_step_compiled_for_the_slice(monkeypatch):
  """With libtpu, each run's hours are its steps x the roofline bound of its train step
  compiled for --topology (here a step of 1% of v5p's peak in FLOPs: 10 ms); without,
  the assumed MFU, saying why."""
  from vgg_jax import tpu_compile, xla_cost

  paper_file = os.path.join(ROOT, "experiments", "paper.py")
  d = next(
    r for r in sweep.expand(load_experiment_module("paper").sweep("")) if r.name == "D_S256_seed0"
  )
  step = tpu_compile.StepCost(
    memory=xla_cost.Memory(arguments=1, outputs=1, temporaries=1, donated=1),
    flops=459e12 * 0.01,
    bytes_accessed=0.0,
    collectives={},
    collective_counts={},
    compile_s=1.0,
    hlo="",
  )
  monkeypatch.setattr(
    tpu_compile, "train_step_costs", lambda configs, _: dict.fromkeys(configs, step)
  )
  monkeypatch.setattr(tpu_compile, "topology_devices", lambda _: [None] * 8)
  monkeypatch.setattr(sweep, "has_libtpu", lambda: True)
  text = sweep.forecast([d], paper_file, "h100", 0.5, topology="v5p:2x2x2")
  hours = 1_281_167 // 256 * 74 * 0.01 / 3600
  assert f"| 10.0 | {hours:.3g} |" in text
  assert f"{hours * 60:.1f} v5p:2x2x2-minutes ({hours * 8:.3g} chip-hours)" in text
  assert "roofline bound of each run's train step compiled for v5p:2x2x2" in text
  monkeypatch.setattr(sweep, "has_libtpu", lambda: False)
  text = sweep.forecast([d], paper_file, "tpu-v5p", 0.5, topology="v5p:2x2x2")
  assert "at an assumed 50% of tpu-v5p's 459 TFLOP/s bf16 peak (libtpu is not installed" in text


def test_parallel_runs_start_when_their_parents_are_done(tmp_path):
  """Two at a time: A and Z run together; B waits for A, whatever Z does."""
  import threading
  import time

  runs = sweep.expand(
    [dict(name="A", arg=""), dict(name="B", arg="", parent="A"), dict(name="Z", arg="")]
  )
  calls, events, lock = [], [], threading.Lock()
  execute = fake(set(), calls, runs)

  def timed(command):
    name = os.path.basename(command[4].partition("=")[2]) if command[2] == "train" else None
    if name:
      with lock:
        events.append(("start", name))
      time.sleep(0.3)
    result = execute(command)
    if name:
      with lock:
        events.append(("end", name))
    return result

  outcome = sweep.run_local(
    runs, FASHION, str(tmp_path), parallel=2, execute=timed, log=lambda m: None
  )
  assert outcome == {"A": "done", "B": "done", "Z": "done"}
  assert sorted(events[:2]) == [("start", "A"), ("start", "Z")]  # both before either ended
  assert events.index(("end", "A")) < events.index(("start", "B"))


def test_runs_are_ordered_parents_first_then_seed_major():
  runs = sweep.expand(load_experiment_module("fashion_mnist").sweep("seeds=2"))
  seeds = [sweep.seed_of(r) for r in runs]
  assert seeds == sorted(seeds) and seeds.count(0) == 12
  assert sweep.seed_of(sweep.Run("x", "model=A", overrides=(("seed", 4),))) == 4


def fake_in_process(monkeypatch, fail=(), preempt=()):
  """train_and_evaluate and the evaluation, faked: each run leaves config.json and a
  metrics line; runs named in `fail` raise, in `preempt` are preempted. Returns the
  runs trained and evaluated, in order."""
  from vgg_jax import evaluate, train

  calls = []

  def train_and_evaluate(config, workdir):
    name = os.path.basename(workdir)
    calls.append(("train", name))
    if name in fail:
      raise RuntimeError(f"injected failure in {name}")
    if name in preempt:
      raise train.Preempted("SIGTERM")
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write('{"step": 4, "val_top1_err": 0.5}\n')
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort())
    return {}, {}

  monkeypatch.setattr(train, "train_and_evaluate", train_and_evaluate)
  monkeypatch.setattr(
    evaluate, "load_trained", lambda workdir: types.SimpleNamespace(config=None, workdir=workdir)
  )
  monkeypatch.setattr(evaluate, "configured", lambda config: [])
  monkeypatch.setattr(
    evaluate,
    "evaluate_many",
    lambda models, evaluations: calls.append(("eval", os.path.basename(models[0].workdir))) or [],
  )
  return calls


def test_in_process_failure_blocks_only_descendants_and_a_rerun_finishes(tmp_path, monkeypatch):
  runs = sweep.expand(
    [
      dict(name="A", arg="seed=0"),
      dict(name="B", arg="seed=0", parent="A"),
      dict(name="Z", arg="seed=0"),
      dict(name="A1", arg="seed=1"),
      dict(name="B1", arg="seed=1", parent="A1"),
    ]
  )
  calls, messages = fake_in_process(monkeypatch, fail={"A"}), []
  outcome = sweep.run_local(runs, FASHION, str(tmp_path), log=messages.append)
  assert outcome == {"A": "failed", "B": "blocked", "Z": "done", "A1": "done", "B1": "done"}
  assert runs_of(calls, "train") == ["A", "Z", "A1", "B1"]
  assert "RuntimeError: injected failure in A" in open(tmp_path / "A" / sweep.FAILED).read()
  assert any("B: blocked, parent A is failed" in m for m in messages)
  assert any("Z: done in" in m and "2 runs to go" in m for m in messages)
  assert sweep.exit_status(outcome) == 1
  calls = fake_in_process(monkeypatch)
  assert set(sweep.run_local(runs, FASHION, str(tmp_path), log=print).values()) == {"done"}
  assert calls == [("train", "A"), ("eval", "A"), ("train", "B"), ("eval", "B")]


def test_a_preempted_run_stops_the_sweep_unmarked_and_resumes_next_time(tmp_path, monkeypatch):
  runs = sweep.expand([dict(name="A", arg=""), dict(name="P", arg=""), dict(name="Z", arg="")])
  calls = fake_in_process(monkeypatch, preempt={"P"})
  outcome = sweep.run_local(runs, FASHION, str(tmp_path), log=print)
  assert outcome == {"A": "done", "P": "preempted", "Z": "pending"}
  assert sweep.exit_status(outcome) == 75
  assert sweep.state(runs[1], str(tmp_path)) == "preempted"  # neither failed nor trained
  calls = fake_in_process(monkeypatch)
  assert sweep.run_local(runs, FASHION, str(tmp_path), log=print) == dict.fromkeys("APZ", "done")
  assert runs_of(calls, "train") == ["P", "Z"]


def test_a_subprocess_exiting_with_the_preempted_status_is_not_a_failure(tmp_path):
  runs = sweep.expand([dict(name="P", arg=""), dict(name="Z", arg="")])
  calls = []
  execute = fake(set(), calls, runs)

  def preempted(command):
    result = execute(command)
    return subprocess.CompletedProcess(command, 75) if command[2] == "train" else result

  outcome = sweep.run_local(runs, FASHION, str(tmp_path), execute=preempted, log=print)
  assert outcome == {"P": "preempted", "Z": "pending"} and calls == [("train", "P")]
  assert not os.path.exists(tmp_path / "P" / sweep.FAILED)


def test_a_changed_design_is_refused_naming_runs_and_fields_until_retrain(tmp_path, monkeypatch):
  design = lambda steps, **model: sweep.expand(  # noqa: E731
    [
      dict(name="A", arg="", overrides={"optim.max_steps": steps, **model}),
      dict(name="B", arg="model=B", parent="A", overrides={"optim.max_steps": steps}),
      dict(name="Z", arg="seed=1", overrides={"optim.max_steps": 40}),
    ]
  )
  fake_in_process(monkeypatch)
  sweep.run_local(design(40), FASHION, str(tmp_path), log=print)
  record = tmp_path / "A" / "config.json"  # as a run from before model.conv recorded it
  old = json.loads(record.read_text())
  del old["model"]["conv"]
  record.write_text(json.dumps(old))
  lowered = design(40, **{"model.conv": "gemm", "model.pool": "reduce_window"})
  assert sweep.run_local(lowered, FASHION, str(tmp_path), log=print) == dict.fromkeys("ABZ", "done")
  with pytest.raises(sweep.DesignChanged) as refused:
    sweep.run_local(design(60), FASHION, str(tmp_path), log=print)
  assert str(refused.value) == (
    f"2 runs in {tmp_path} were trained with another config than the design asks for: "
    "A (optim.max_steps 40 -> 60); B (optim.max_steps 40 -> 60, parent A changed); rerun "
    "with --retrain to train them again into the same root"
  )
  assert sweep.state(design(60)[0], str(tmp_path)) == "done"  # untouched
  calls = fake_in_process(monkeypatch)
  outcome = sweep.run_local(design(60), FASHION, str(tmp_path), retrain=True, log=print)
  assert outcome == dict.fromkeys("ABZ", "done") and runs_of(calls, "train") == ["A", "B"]
  assert sweep.changed_runs(design(60), FASHION, str(tmp_path)) == {}


def test_in_process_evaluation_takes_the_runs_lock(tmp_path, monkeypatch):
  from vgg_jax import lock

  runs = sweep.expand([dict(name="A", arg="")])
  fake_in_process(monkeypatch)
  with lock.workdir_lock(str(tmp_path / "A"), "eval"):
    assert sweep.run_local(runs, FASHION, str(tmp_path), log=print) == {"A": "failed"}
  assert f"{tmp_path / 'A'} is in use by eval" in (tmp_path / "A" / sweep.FAILED).read_text()


def test_sigterm_while_evaluating_in_process_is_a_preemption_the_table_shows(tmp_path, monkeypatch):
  """launch.py's handler turns SIGTERM outside a training loop into train.Preempted: the
  run is "preempted" at its saved step, and the sweep's line says so."""
  import signal

  import launch
  from vgg_jax import evaluate

  runs = sweep.expand([dict(name="A", arg=""), dict(name="Z", arg="")])
  fake_in_process(monkeypatch)
  (tmp_path / "A" / "checkpoints" / "40").mkdir(parents=True)
  monkeypatch.setattr(evaluate, "evaluate_many", lambda *a: os.kill(os.getpid(), signal.SIGTERM))
  previous = signal.signal(signal.SIGTERM, launch.stop_on_sigterm)
  try:
    outcome = sweep.run_local(runs, FASHION, str(tmp_path), log=print)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert outcome == {"A": "preempted", "Z": "pending"} and sweep.exit_status(outcome) == 75
  assert "| A | preempted | - | 40 |" in sweep.status_table(runs, str(tmp_path))
  assert sweep.preempted_line(outcome, str(tmp_path)) == (
    f"preempted: saved A at step 40 in {tmp_path}; rerun the same command to resume"
  )
  assert "preempted while evaluating" in (tmp_path / "A" / sweep.PREEMPTED).read_text()


@needs_fashion_mnist
def test_sigterm_to_a_subprocess_sweep_stops_and_saves_its_child_first(tmp_path):
  """The trainer child gets the SIGTERM, saves and exits 75; the sweep waits for it and
  exits 75 with one line; no child is left running."""
  import signal
  import sys
  import time

  root = tmp_path / "R"
  sweep_process = subprocess.Popen(
    [
      sys.executable,
      "launch.py",
      "sweep",
      f"--config={ROOT}/tests/tiny_sweep.py:steps=100000",
      f"--workdir={root}",
      "--subprocess",
    ],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  child_lock = root / "A_S32_seed0" / "lock"
  deadline = time.monotonic() + 300
  while not (root / "A_S32_seed0" / "metrics.jsonl").exists() and time.monotonic() < deadline:
    assert sweep_process.poll() is None, sweep_process.communicate()
    time.sleep(0.5)
  child = json.loads(child_lock.read_text())["pid"]
  sweep_process.send_signal(signal.SIGTERM)
  out, err = sweep_process.communicate(timeout=300)
  assert sweep_process.returncode == 75, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("launch.py sweep: preempted: saved A_S32_seed0 at step "), err[-3000:]
  assert last.endswith(f" in {root}; rerun the same command to resume")
  assert "| A_S32_seed0 | preempted |" in out
  with pytest.raises(ProcessLookupError):
    os.kill(child, 0)  # gone, not orphaned
  assert not child_lock.exists()


def test_no_run_starts_once_the_time_budget_is_spent(tmp_path, monkeypatch):
  runs = sweep.expand([dict(name=n, arg="") for n in "ABC"])
  fake_in_process(monkeypatch)
  now = iter(range(0, 1000, 10))  # each reading of the clock is 10 s later
  outcome = sweep.run_local(
    runs, FASHION, str(tmp_path), time_budget_s=25, log=print, clock=lambda: next(now)
  )
  assert list(outcome.values()).count("done") in (1, 2)
  assert outcome["C"] == "pending" and sweep.exit_status(outcome) == 0


@needs_fashion_mnist
def test_a_real_in_process_sweep_resumes_and_compiles_a_configs_step_once(
  tmp_path, capfd, sweep_cache
):
  """In one process: A seed 0 'killed' after 2 of its 4 steps resumes; A seed 1 reuses
  its compiled programs; B warm-starts from A; each run keeps its own workdir, metrics
  and evaluations, and A + B is evaluated as an ensemble; JAX's persistent cache fills
  under the root."""
  import jax

  from vgg_jax import evaluate, train

  # Programs another test of this worker compiled would come from memory, not the disk.
  train._COMPILED.clear()  # pylint: disable=protected-access
  evaluate.forward_program.cache_clear()
  jax.clear_caches()
  spec = lambda name, arg, **kw: dict(
    name=name,
    arg=f"quick,backend=numpy,{arg}",  # noqa
    overrides=TINY,
    **kw,
  )
  runs = sweep.expand(
    [spec("A", "seed=0"), spec("A1", "seed=1"), spec("B", "model=B,seed=0", parent="A")]
  )
  interrupted = sweep.run_config(runs[0], FASHION)
  interrupted.optim.max_steps = 2
  train.train_and_evaluate(interrupted, str(tmp_path / "A"))
  outcome = sweep.run_local(runs, FASHION, str(tmp_path), log=print)
  assert outcome == {"A": "done", "A1": "done", "B": "done"}
  printed = capfd.readouterr()
  assert "resumed from step 2" in printed.out + printed.err
  for run in runs:
    assert [
      r["step"] for r in metrics.read_metrics(str(tmp_path / run.name)) if "val_top1_err" in r
    ][-1] == 4
    ensembles = ["test_64_dense_Q32-37_with_B.json", "test_64_dense_Q32_with_B.json"]
    assert sorted(os.listdir(tmp_path / run.name / "eval")) == sorted(
      ["test_64_dense_Q32-37.json", "test_64_dense_Q32.json"]
      + (ensembles if run.name == "A" else [])
    )  # Table 6: the best two of seed 0
  from vgg_jax import config as config_lib
  from vgg_jax import sharding

  config = sweep.run_config(runs[1], FASHION)
  key = train.program_key(
    config, sharding.make_mesh(config.mesh), config_lib.network_config(config, 10, 1)
  )
  step = train._COMPILED[key][3]  # pylint: disable=protected-access
  assert step._cache_size() == 1  # compiled once for the three trainings of A
  assert os.listdir(sweep.compilation_cache_dir(str(tmp_path)))


def test_the_gpu_design_fits_eight_h200_minutes_and_pairs_its_arms_by_seed():
  """Table 3's chain, He init from scratch (A, B, D, E) and 64x64 (A, B, D), 3 seeds:
  every run's config is valid, and the forecast at 20% MFU is at most 8 minutes."""
  from vgg_jax import config as config_lib

  config_file, runs = sweep.load_sweep(f"{FASHION}:gpu")
  assert len(runs) == 3 * (12 + 4 + 3)
  by_name = {r.name: r for r in runs}
  for seed in range(3):
    he, he64 = by_name[f"he_E_S32_seed{seed}"], by_name[f"he64_D_S64_seed{seed}"]
    assert he.parent is None and he64.parent is None and "init=he" in he64.arg
    assert by_name[f"E_S32_seed{seed}"].parent == f"A_S32_seed{seed}"
  for run in runs:
    config = sweep.run_config(run, config_file, "/root")
    config_lib.validate(config, 1)
    assert (config.model.width, config.model.dtype, config.optim.batch_size) == (
      0.5,
      "bfloat16",
      512,
    )
    assert config.data.crop == (64 if run.name.startswith("he64_") else 32)
  flops = sweep.run_flops(runs, config_file)
  minutes = sum(flops.values()) / (util.PEAK_FLOPS["h200"] * 0.2) / 60
  assert minutes <= 8
  assert f"{minutes:.1f} h200-minutes" in sweep.forecast(runs, config_file, "h200", 0.2, flops)
  # A window cut short keeps the paper's comparisons first: the chain's S=32 runs of
  # every seed, seed by seed, then the He arm, the fine-tunings, the 64x64 arm.
  assert [r.name for r in runs[:18]] == [
    f"{model}_S32_seed{seed}" for seed in range(3) for model in ("A", "A-LRN", "B", "C", "D", "E")
  ]
  arms = [r.name.split("_")[0] if r.name.startswith("he") else r.name.split("_")[1] for r in runs]
  assert arms[18:] == ["he"] * 12 + ["S40", "S32-48"] * 9 + ["he64"] * 9
  _, smoke = sweep.load_sweep(f"{FASHION}:smoke")
  assert [r.name for r in smoke] == ["A_S32_seed0", "B_S32_seed0"]
  _, seeds5 = sweep.load_sweep(f"{FASHION}:gpu,seeds=5,backend=tfds")
  assert len(seeds5) == 5 * 19 and all("backend=tfds" in r.arg for r in seeds5)


def test_the_readmes_first_command_sweeps_a_b_and_d_of_the_chain():
  """The README's first command runs the `depth` design: A, then B and D warm-started
  from it, one seed, validated on held-out training images; then reports."""
  from vgg_jax import config as config_lib

  config_file, runs = sweep.load_sweep(f"{FASHION}:depth")
  assert [(r.name, r.parent) for r in runs] == [
    ("A_S32_seed0", None),
    ("B_S32_seed0", "A_S32_seed0"),
    ("D_S32_seed0", "A_S32_seed0"),
  ]
  for run in runs:
    config = sweep.run_config(run, config_file, "/root")
    config_lib.validate(config, 1)
    assert config.data.eval_split == "train[55000:]" and config.evaluations[0] == "dense@@test"
  first = open(os.path.join(ROOT, "README.md")).read().split("```bash\n", 1)[1].split("\n")[0]
  assert "sweep --config experiments/fashion_mnist.py:depth --workdir workdirs/depth" in first
  assert first.endswith("launch.py report workdirs/depth")


def test_the_gpu_designs_he_arm_trains_on_the_papers_raw_pixels():
  """he_A of the gpu design at 1/8 width, batch 64, float32 on real Fashion-MNIST (raw
  pixels minus the mean, std ~90): its conv features start near unit scale, and the loss
  stays finite and falls (He's init as it was gave a NaN at step 3 on an H200)."""
  import numpy as np
  from flax import nnx

  from vgg_jax import data, model, sharding, train

  config_file, runs = sweep.load_sweep(
    f"{FASHION}:gpu,seeds=1,width=0.125,batch=64,dtype=float32,backend=numpy"
  )
  run = next(r for r in runs if r.name == "he_A_S32_seed0")
  config = sweep.run_config(run, config_file, "/root")
  program = train.build_program(config, sharding.make_mesh(config.mesh), 10, 1)
  state, losses = program.init(), []
  batches = data.make_pipeline(config.data, train=True, global_batch_size=64, seed=0)
  for step, batch in zip(range(120), batches):
    batch = data.to_global(batch, program.batch_sharding)
    if step == 0:
      net = nnx.merge(model.model_graphdef(program.model), state["params"], state["batch_stats"])
      net.eval()
      features = net.features(batch["image"], ["relu5_2"])["relu5_2"]
      assert 0.1 < float(np.sqrt(np.mean(np.square(features)))) < 10
    state, metrics = program.step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.3


def test_the_designs_hold_the_lr_for_their_first_epochs_but_not_when_fine_tuning():
  """gpu: no LR drop before epoch 5 for runs from scratch or warm-started from A; the
  fine-tunings (from a trained net) and the cpu and smoke designs keep the paper's rule;
  cpu's last epoch is at LR / 10 as well."""
  config_file, runs = sweep.load_sweep(f"{FASHION}:gpu")
  for run in runs:
    config = sweep.run_config(run, config_file, "/root")
    assert config.optim.plateau_from_epoch == (0 if run.layers == "all" else 5)
  for design, drops in (("cpu", (3,)), ("smoke", ()), ("depth", ())):
    config_file, runs = sweep.load_sweep(f"{FASHION}:{design}")
    configs = [sweep.run_config(r, config_file, "/root") for r in runs]
    assert {c.optim.plateau_from_epoch for c in configs} == {0}
    assert {tuple(c.optim.lr_drop_epochs) for c in configs} == {drops}  # cpu: 4th at LR/10


def test_table6_ensembles_pair_d_with_e_and_the_best_two_per_seed(tmp_path, monkeypatch):
  """Done runs A, B, D, E of two seeds, B and D best on Table 3: the ensembles are D+E
  and B+D of each seed, evaluated once each into the first run's eval/."""
  from vgg_jax import evaluate

  top1 = {"A": 0.12, "B": 0.09, "D": 0.10, "E": 0.11}
  specs = []
  for seed in range(2):
    for config, error in top1.items():
      name = f"{config}_S32_seed{seed}"
      specs.append(dict(name=name, arg=f"model={config},seed={seed}"))
      write_run(tmp_path, name, seed, [result(config, "32", [32], "dense", error, 0.01)])
      (tmp_path / name / sweep.EVALUATED).write_text("{}")
  runs = sweep.expand(specs)
  pairs = sweep.ensemble_pairs(runs, FASHION, str(tmp_path))
  assert [(a.name, b.name) for a, b in pairs] == [
    ("D_S32_seed0", "E_S32_seed0"),
    ("B_S32_seed0", "D_S32_seed0"),
    ("D_S32_seed1", "E_S32_seed1"),
    ("B_S32_seed1", "D_S32_seed1"),
  ]
  evaluated = []
  monkeypatch.setattr(
    evaluate, "load_trained", lambda workdir: types.SimpleNamespace(config=None, workdir=workdir)
  )
  monkeypatch.setattr(evaluate, "configured", lambda config: [("dense", "", "")])
  monkeypatch.setattr(
    evaluate,
    "evaluate_many",
    lambda models, evaluations: (
      evaluated.append(tuple(os.path.basename(m.workdir) for m in models)) or []
    ),
  )
  for _ in range(2):  # the second time, nothing is left to do
    sweep.evaluate_ensembles(pairs, str(tmp_path), log=print)
  assert evaluated == [(a.name, b.name) for a, b in pairs]
