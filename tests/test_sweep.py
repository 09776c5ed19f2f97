"""Sweeps: the paper's chain as data, dependency order, failures, resumption."""

import os
import subprocess

import pytest

from vgg_jax import metrics, sweep
from vgg_jax.config import load_experiment_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = os.path.join(ROOT, "experiments", "fashion_mnist.py")


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
      "A_S32_seed1", "paper",
      "model=D,S=32,seed=1,width=0.125,epochs=2,holdout=5000,backend=tfds,dtype=float32,"
      "quick=False,manual_dir=")
  d384, jitter = by_name["D_S40_seed0"], by_name["D_S32-48_seed0"]
  assert (d384.parent, d384.layers, dict(d384.overrides)) == (
      "D_S32_seed0", "all", {"optim.lr": 1e-3, "optim.epochs": 1})
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


def fake(fail: set[str], calls: list[tuple[str, str]]):
  """An executor that records each (command, run), fails the commands of the runs
  named in `fail` and, as training does, leaves the run's config.json."""
  def execute(command):
    workdir = next(a for a in command if a.startswith("--workdir=")).partition("=")[2]
    name = os.path.basename(workdir)
    calls.append((command[2], name))
    if command[2] == "train" and name not in fail:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write('{"data": {"scale": %s}}' % ("[32, 48]" if name == "J" else "32"))
    return subprocess.CompletedProcess(command, 1 if name in fail else 0, "", "boom")
  return execute


def runs_of(calls: list[tuple[str, str]], command: str) -> list[str]:
  return [name for kind, name in calls if kind == command]


def test_failed_parent_blocks_its_children_and_a_rerun_runs_only_what_is_left(tmp_path):
  runs = sweep.expand([dict(name="A", arg=""), dict(name="B", arg="", parent="A"),
                       dict(name="C", arg="", parent="B"), dict(name="Z", arg="")])
  calls, messages = [], []
  outcome = sweep.run_local(runs, FASHION, str(tmp_path), execute=fake({"A"}, calls),
                            log=messages.append)
  assert outcome == {"A": "failed", "B": "blocked", "C": "blocked", "Z": "done"}
  assert runs_of(calls, "train") == ["A", "Z"] and runs_of(calls, "eval") == ["Z"]
  assert any("B: blocked, parent A is failed" in m for m in messages)
  assert "boom" in open(tmp_path / "A" / sweep.FAILED).read()
  calls.clear()
  assert set(sweep.run_local(runs, FASHION, str(tmp_path), execute=fake(set(), calls),
                             log=messages.append).values()) == {"done"}
  assert runs_of(calls, "train") == ["A", "B", "C"]  # Z was done
  calls.clear()
  sweep.run_local(runs, FASHION, str(tmp_path), execute=fake(set(), calls), log=print)
  assert calls == []  # a finished sweep runs nothing


def test_each_run_is_evaluated_once_and_a_failed_evaluation_is_redone(tmp_path):
  """One `launch.py eval --configured` per run (its config.evaluations: the tables'
  protocols, see test_config). A run whose evaluation failed is evaluated again, not
  trained again."""
  runs = sweep.expand([dict(name="A", arg=""), dict(name="J", arg="", parent="A")])
  calls = []
  execute = fake(set(), calls)

  def failing_eval(command):
    result = execute(command)
    return result if command[2] == "train" else subprocess.CompletedProcess(command, 1)

  outcome = sweep.run_local(runs, FASHION, str(tmp_path), execute=failing_eval, log=print)
  assert outcome == {"A": "failed", "J": "blocked"}
  assert sweep.state(runs[0], str(tmp_path)) == "failed"
  calls.clear()
  assert sweep.run_local(runs, FASHION, str(tmp_path), execute=execute,
                         log=print) == {"A": "done", "J": "done"}
  assert runs_of(calls, "train") == ["J"]
  assert [c for c in calls if c[0] == "eval"] == [("eval", "A"), ("eval", "J")]
  assert sweep.eval_command(runs[1], str(tmp_path))[2:] == [
      "eval", f"--workdir={tmp_path / 'J'}", "--configured"]
  assert os.path.exists(tmp_path / "J" / sweep.EVALUATED)


TINY = {"model.width": 0.0625, "optim.batch_size": 32, "optim.max_steps": 4,
        "data.eval_split": "test[:64]", "mesh": (("data", 1), ("model", 1)),
        "evaluations": ("dense@@test[:64]", "dense@table4@test[:64]")}


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="needs `apt-get install dataset-fashion-mnist`")
def test_a_real_sweep_warm_starts_and_resumes_a_killed_run(tmp_path):
  """A then B warm-started from it, for real; A was 'killed' after 2 of its 4 steps
  (its checkpoint is there, no done marker), so the sweep resumes it."""
  from vgg_jax import train
  runs = sweep.expand([dict(name="A", arg="quick,backend=numpy", overrides=TINY),
                       dict(name="B", arg="quick,backend=numpy,model=B", parent="A",
                            overrides=TINY)])
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
  assert sorted(os.listdir(tmp_path / "B" / "eval")) == ["test_64_dense_Q32-37.json",
                                                         "test_64_dense_Q32.json"]
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "B"))
          if "val_top1_err" in r] == [4]
  table = sweep.status_table(runs, str(tmp_path))
  assert "| A | done | - | 4 |" in table and "| B | done | A | 4 |" in table


def golden_sweep():
  """Three runs with a parent, a warm start of every layer and a quoted override."""
  return sweep.expand([
      dict(name="A_S32_seed0", arg="model=A,S=32,seed=0"),
      dict(name="D_S32_seed0", arg="model=D,S=32,seed=0", parent="A_S32_seed0"),
      dict(name="D_S40_seed0", arg="model=D,S=40,seed=0", parent="D_S32_seed0",
           layers="all", overrides={"optim.lr": 1e-3,
                                    "mesh": (("data", -1), ("model", 2))})])


def golden(name: str) -> str:
  with open(os.path.join(ROOT, "tests", "golden", name)) as f:
    return f.read()


def test_slurm_scripts_match_the_golden_file():
  """One sbatch per run (one task per host, srun, --distributed), submitted with afterok
  dependencies on the parent's job. Overwrite the golden file only after reading the
  diff."""
  scripts = sweep.slurm_scripts(golden_sweep(), FASHION, "/ckpt/sweep", repo="/src/vgg_jax",
                                nodes=2, gpus_per_node=4)
  assert "".join(f"# {n}\n{t}" for n, t in scripts.items()) == golden("slurm.txt")
  assert "--dependency=afterok:${job_D_S32_seed0}" in scripts["submit.sh"]


def test_tpu_commands_match_the_golden_file():
  commands = sweep.tpu_commands(golden_sweep(), FASHION, "/ckpt/sweep", repo="/src/vgg_jax",
                                tpu="v4-32", zone="us-central2-b")
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
  assert "At 50% of h100's 989 TFLOP/s" in text


def test_parallel_runs_start_when_their_parents_are_done(tmp_path):
  """Two at a time: A and Z run together; B waits for A, whatever Z does."""
  import threading
  import time
  runs = sweep.expand([dict(name="A", arg=""), dict(name="B", arg="", parent="A"),
                       dict(name="Z", arg="")])
  calls, events, lock = [], [], threading.Lock()
  execute = fake(set(), calls)

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

  outcome = sweep.run_local(runs, FASHION, str(tmp_path), parallel=2, execute=timed,
                            log=lambda m: None)
  assert outcome == {"A": "done", "B": "done", "Z": "done"}
  assert events[:2] == [("start", "A"), ("start", "Z")]  # both before either ended
  assert events.index(("end", "A")) < events.index(("start", "B"))
