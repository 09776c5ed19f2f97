"""The benchmarks at toy sizes: what they report is complete and sane, not how fast it is.

Throughput runs A and C at 1/8 width on 32x32 crops, two steps each; the torch baseline
runs torchvision's vgg11 eagerly (full width, which torchvision needs) on a batch of two.
The slow test runs the CPU command of benchmarks/README.md as a fresh clone would.
"""

import json
import math
import os
import re
import subprocess
import sys
import tarfile

import jax
import pytest

from benchmarks import device_run, loop_efficiency, throughput
from conftest import ROOT, needs_fashion_mnist
from vgg_jax import config as config_lib
from vgg_jax import train

TINY = [
  "--resolution",
  "32",
  "--dtype",
  "float32",
  "--warmup",
  "1",
  "--steps",
  "2",
  "--windows",
  "1",
]


def has_torch() -> bool:
  return not throughput.torch_baselines("torch", True)[1]


@pytest.fixture(scope="module")
def tiny():
  """A and C at 1/8 width on 1 and 2 devices, torch asked for (it has no such nets)."""
  args = throughput.parse_args(
    [
      "--configs",
      "A,C",
      "--width",
      "0.125",
      "--batch",
      "8",
      "--devices",
      "1,2",
      "--baseline",
      "torch",
      *TINY,
    ]
  )
  return throughput.benchmark(args)


def test_rows_report_speed_flops_memory_and_compile_time(tiny):
  ours = [r for r in tiny["rows"] if r["framework"] == "vgg_jax"]
  assert [(r["config"], r["chips"]) for r in ours] == [("A", 1), ("A", 2), ("C", 1), ("C", 2)]
  for row in ours:
    assert math.isfinite(row["img_s"]) and row["img_s"] > 0
    assert row["img_s_per_chip"] == pytest.approx(row["img_s"] / row["chips"])
    assert row["step_s"] > 0 and row["compile_s"] > 0 and row["xla_bytes"] > 0
    # XLA's count of the whole step against 6 x the model's own multiply-adds.
    assert 0.5 < row["flops_per_image"] / row["model_flops_per_image"] < 2
    assert row["mfu"] is None  # no peak FLOP/s for a CPU


def test_markdown_has_a_row_per_config_and_framework(tiny):
  table = throughput.markdown(tiny)
  for config in ("A", "C"):
    assert sum(line.startswith(f"| vgg_jax | {config} |") for line in table.splitlines()) == 2
  assert "MFU n/a" in table
  assert [(s["config"], s["chips"]) for s in tiny["scaling"]] == [("A", 2), ("C", 2)]
  assert all(s["efficiency"] > 0 for s in tiny["scaling"])
  json.dumps(tiny)  # what --out writes


@pytest.mark.skipif(not has_torch(), reason="torch/torchvision not installed")
def test_torch_rows_say_why_they_were_not_run(tiny):
  notes = {(r["framework"], r["config"]): r["note"] for r in tiny["rows"]}
  assert (
    notes["torch eager", "A"]
    == notes["torch.compile", "A"]
    == ("torchvision has full-width nets only")
  )
  assert notes["torch eager", "C"] == "no torchvision model for C"


@pytest.mark.skipif(not has_torch(), reason="torch/torchvision not installed")
def test_torchvision_has_exactly_the_vggs_the_benchmark_names():
  import torchvision

  vggs = {name for name in dir(torchvision.models) if re.fullmatch(r"vgg\d+", name)}
  assert vggs == set(throughput.TORCHVISION_VGGS.values())
  assert throughput.torchvision_alias("vgg16") == "vgg16"
  assert throughput.torchvision_alias("C") is None


@pytest.mark.skipif(not has_torch(), reason="torch/torchvision not installed")
def test_torch_eager_baseline_and_ratio():
  args = throughput.parse_args(
    ["--configs", "A", "--batch", "2", "--baseline", "torch", "--no_torch_compile", *TINY]
  )
  ours, eager = throughput.benchmark(args)["rows"]
  assert (ours["framework"], eager["framework"]) == ("vgg_jax", "torch eager")
  assert eager["note"] == "vgg11" and eager["img_s"] > 0
  assert ours["vs_torch_eager"] == pytest.approx(ours["img_s_per_chip"] / eager["img_s"])
  assert "vs_torch_compile" not in ours


def test_without_torch_the_baseline_is_skipped_with_a_message(monkeypatch, tiny):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
  frameworks, message = throughput.torch_baselines("torch", True)
  assert frameworks == [] and message.startswith("torch baseline skipped")
  assert message in throughput.markdown(dict(tiny, notes=[message]))


@pytest.mark.parametrize(
  "kind,peak",
  [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", None),
    ("cpu", None),
  ],
)
def test_peak_flops_by_device_kind(kind, peak):
  assert throughput.peak_flops(kind) == peak


@pytest.mark.parametrize(
  "synthetic",
  [pytest.param(False, marks=needs_fashion_mnist), pytest.param(True, marks=pytest.mark.slow)],
)  # the GPU route; the loop is the same
def test_loop_efficiency_is_a_ratio(tmp_path, synthetic):
  config = config_lib.experiment_config("fashion_mnist", "quick,backend=numpy")
  config.model.width = 1 / 16
  config.optim.batch_size = 32
  config.data.eval_split = "test[:64]"
  config.checkpoint.every_steps = 5
  result = loop_efficiency.measure(
    config,
    warmup=2,
    steps=8,
    synthetic=synthetic,
    workdir=str(tmp_path / "run"),
    bare_steps=4,
    bare_windows=1,
  )
  assert 0 < result["ratio"] <= 1.5
  assert result["checkpoints"] == [5, 10]
  assert "ratio" in loop_efficiency.report(result)


def test_the_loops_prefetch_keeps_order_ends_and_raises():
  """`train.prefetch`, the loop's fix that loop_efficiency measures (--no_prefetch)."""
  assert list(train.prefetch(iter(range(7)), size=2)) == list(range(7))

  def failing():
    yield 1
    raise ValueError("pipeline broke")

  batches = train.prefetch(failing())
  assert next(batches) == 1
  with pytest.raises(ValueError, match="pipeline broke"):
    next(batches)


@pytest.mark.slow
def test_cpu_command_from_a_fresh_clone_prints_the_table(tmp_path):
  """benchmarks/README.md's CPU command in a new process, as on a fresh machine: one
  device, torch eager as the baseline. torch.compile's rows are left out here: compiling
  VGG took over 5 minutes on 2 loaded cores, and how long anything takes is the
  benchmark's business, not the test's (machines differ 2-4x); test_benchmarks' other
  tests check the torch.compile rows' format."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
    [
      sys.executable,
      "benchmarks/throughput.py",
      "--configs",
      "A",
      "--batch",
      "8",
      "--resolution",
      "32",
      "--dtype",
      "float32",
      "--baseline",
      "torch",
      "--no_torch_compile",
      "--warmup",
      "1",
      "--steps",
      "3",
      "--windows",
      "2",
      "--out",
      str(tmp_path / "out"),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| vgg_jax | A |" in out.stdout
  if has_torch():
    assert "| torch eager | A |" in out.stdout
  else:
    assert "torch baseline skipped" in out.stdout
  assert json.load(open(tmp_path / "out" / "throughput.json"))["rows"]


@pytest.mark.slow
@needs_fashion_mnist
def test_device_run_smoke_writes_every_part_without_tensorflow(tmp_path):
  """`device_run.py --smoke` as CI runs it, TensorFlow unimportable in every process it
  starts (a sitecustomize puts None in sys.modules). The time limits are 4x the smoke's
  shares: machines differ, and how long parts take is not the test's business."""
  blocker = tmp_path / "no_tensorflow"
  blocker.mkdir()
  (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as on a GPU
  env["PYTHONPATH"] = str(blocker)
  out = tmp_path / "out"
  shares = [f"--share={part}={4 * s}" for part, s in device_run.SMOKE_SHARES.items()]
  result = subprocess.run(
    [
      sys.executable,
      "benchmarks/device_run.py",
      "--smoke",
      "--out",
      str(out),
      "--ablation",
      "tests/tiny_sweep.py",
      *shares,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  log = (out / "log.txt").read_text()
  assert result.returncode == 0, log[-5000:]
  assert len(os.listdir(out)) <= 8  # what comes back from the GPU machine
  for part in device_run.PARTS:
    assert re.search(rf"^{part} +ok ", log, re.M), log

  env_json = json.loads((out / "env.json").read_text())
  assert env_json["platform"] == "cpu" and env_json["versions"]["jax"] == jax.__version__
  rows = json.loads((out / "throughput.json").read_text())["rows"]
  ours = [r for r in rows if r["framework"] == "vgg_jax"]
  assert [r["config"] for r in ours] == ["D", "A"] and all(r["img_s"] > 0 for r in ours)
  assert "torch.compile not run" in (out / "throughput.md").read_text()

  profile = (out / "profile.md").read_text()
  assert re.search(r"^\| conv fwd \| \d+\.\d+ \|", profile, re.M)
  assert re.search(r"^\| conv5_3 \|", profile, re.M)
  with tarfile.open(out / "profile.tar.gz") as tar:
    names = tar.getnames()
  assert "profile/step_hlo.txt" in names and "profile/summary.json" in names
  assert any(name.endswith(".xplane.pb") for name in names)
  # The ablation's own loop, traced by the trainer's profiler switch, its HLO naming it.
  loop = profile.split("## The ablation's training loop")[1]
  assert re.search(r"^\| all \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d+ \|", loop, re.M)
  assert re.search(r"^\| conv1_1 \|", loop, re.M)
  assert {"loop/A_S32_seed0/profile/step_hlo.txt", "loop/A_S32_seed0/summary.json"} <= set(names)
  assert not any("checkpoints" in name for name in names)

  levers = (out / "levers.md").read_text()
  assert re.search(r"^\| today \| \d+\.\d+ \| \d+\.\d+ \| 1\.000 \|", levers, re.M)
  assert len(re.findall(r"^\| today \| \d+\.\d+ \| \d+\.\d+ \| 1\.000 \|", levers, re.M)) == 2
  assert len(re.findall(r"^\| conv=gemm \| \d+\.\d+ \| \d+\.\d+ \| \d", levers, re.M)) == 2
  assert "skipped: XLA GPU option, not a GPU" in levers

  with tarfile.open(out / "ablation.tar.gz") as tar:
    names = tar.getnames()
  assert "ablation/report/tables.md" in names
  for run in ("A_S32_seed0", "B_S32_seed0"):
    assert f"ablation/{run}/metrics.jsonl" in names
  assert not any("checkpoints" in name for name in names)


def test_device_run_gives_each_part_its_share_and_what_earlier_parts_left():
  parts, shares = ["env", "throughput", "ablation"], dict(env=10, throughput=100, ablation=50)
  assert device_run.part_limits(parts, shares, 160, "env") == 10
  assert device_run.part_limits(parts, shares, 155, "throughput") == 105  # env left 5 s
  assert device_run.part_limits(parts, shares, 70, "ablation") == 70
  assert device_run.with_arg("x.py", "a=1") == "x.py:a=1"
  assert device_run.with_arg("x.py:gpu", "a=1") == "x.py:gpu,a=1"
