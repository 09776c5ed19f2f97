"""`launch.py compile` and `vgg_jax.tpu_compile`: the run's steps compiled for a TPU slice
on this CPU machine with libtpu (requirements-test.txt), at a small width so each compile
takes seconds. Every figure is checked against the compiled object: it moves when the
batch or the sharding rules do."""

import os
import subprocess
import sys

import ml_collections
import pytest

from conftest import ROOT
from vgg_jax import config as config_lib
from vgg_jax import sharding as sharding_lib
from vgg_jax import tpu_compile

pytest.importorskip("libtpu")

SLICE = "v5e:2x2"  # 4 chips, 1 host
GIB = 2**30


def small_config(
  batch: int = 32, sharding: str = "replicated", **model
) -> ml_collections.ConfigDict:
  """The paper's recipe (ImageNet's 1000 classes) for A at 1/16 width and 32 px."""
  c = config_lib.experiment_config("paper", "")
  c.model.update(name="A", width=1 / 16, dtype="bfloat16", **model)
  c.data.update(crop=32, scale=(32, 32), eval_scale=32)
  c.optim.batch_size = batch
  c.sharding = sharding
  return c


@pytest.fixture(scope="module")
def report():
  return tpu_compile.compile_run(small_config(), SLICE)


def test_a_small_A_compiles_for_a_v5e_slice_and_fits(report):
  assert (report.chips, report.hosts, report.mesh) == (4, 1, {"data": 4, "model": 1})
  assert report.fits and tpu_compile.verdict(report).startswith("fits: ")
  memory = report.steps["train"].memory
  assert memory.arguments > 0 and memory.temporaries > 0
  assert memory.donated > 0  # the state is donated to the step, as in training
  assert report.steps["eval"].memory.donated == 0
  assert (
    report.steps["train"].flops > 3 * report.steps["eval"].flops > 0
  )  # forward, backward and update
  assert report.steps["train"].collectives["all-reduce"] > 0  # the gradients, data-parallel
  assert report.steps["train"].compile_s > 0  # 20-30 s on 2 shared cores; no bound: CI is shared


def test_tpu_compiles_keep_xla_convolutions(report):
  """conv="auto" picks per platform inside the program (lax.platform_dependent): the TPU
  branch is XLA's convolution, never the CPU's matmul lowering."""
  assert report.config.model.conv == "auto"
  assert "convolution(" in report.steps["train"].hlo and "convolution(" in report.steps["eval"].hlo


def test_figures_follow_the_batch_and_the_sharding_rules(report):
  costs = tpu_compile.train_step_costs(
    {"batch": small_config(batch=128), "fsdp": small_config(sharding="fsdp")}, SLICE
  )
  base = report.steps["train"]
  # 4 x the images: their pixels are an argument (in the TPU's padded layout, so no
  # exact figure), their activations temporaries.
  assert costs["batch"].memory.arguments > base.memory.arguments + 96 * 32 * 32 * 3 * 4 // 4
  assert costs["batch"].memory.total > base.memory.total
  assert costs["batch"].flops > 3 * base.flops
  # fc6/fc7 and their momenta split over the 4 chips of `data`: gathered for the step,
  # their gradients reduce-scattered.
  assert costs["fsdp"].memory.arguments < base.memory.arguments
  assert {"all-gather", "reduce-scatter"} & set(costs["fsdp"].collectives)
  assert costs["fsdp"].collectives.get("all-reduce", 0) < base.collectives["all-reduce"]


def test_the_report_prints_the_compiled_figures(report):
  text = tpu_compile.format_report(report)
  assert "on v5e:2x2: 4 chips, 1 host(s); mesh data 4 x model 1" in text
  assert tpu_compile.gib(report.steps["train"].memory.temporaries) in text
  assert f"{report.steps['train'].flops / 1e12:.3f}" in text
  assert f"AR {report.steps['train'].collective_counts['all-reduce']} x" in text
  assert "roofline bound" in text and text.endswith("\n" + tpu_compile.verdict(report))


# launch.py compile in a fresh interpreter; then whether TensorFlow was imported by then.
COMPILE = """
import runpy, sys
sys.argv = ["launch.py", "compile", *sys.argv[1:]]
try:
  runpy.run_path("launch.py", run_name="__main__")
finally:
  print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def launch_compile(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", COMPILE, f"--config={ROOT}/experiments/paper.py", *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )


def test_a_run_that_cannot_fit_says_so_in_one_line_naming_the_rule():
  """fc7 of 65536 x 65536 float32 (16 GiB, 32 with its momentum) on every chip of a v5e
  (16 GiB): XLA's TPU compiler refuses the step, and the verdict names fsdp's rule.
  TensorFlow is never imported."""
  out = launch_compile(
    f"--topology={SLICE}",
    "--config.model.width=0.0625",
    "--config.model.fc_width=65536",
    "--config.data.crop=32",
    "--config.data.scale=(32, 32)",
  )
  assert out.returncode == 1, out.stderr[-2000:]
  line = out.stderr.strip().splitlines()[-1]  # after libtpu's own line about this host
  assert line.startswith("launch.py compile: does not fit: the train step: ")
  assert "fc7/kernel (65536, 65536) float32" in line
  assert "'fc7/kernel$' -> ('data',) (--config.sharding=fsdp)" in line
  assert out.stdout.strip().splitlines()[-2:] == [
    line.removeprefix("launch.py compile: "),
    "tensorflow imported: False",
  ]


def test_an_unknown_topology_is_refused_in_one_line():
  out = launch_compile("--topology=v9:2x2")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
    "launch.py compile: unknown TPU topology 'v9:2x2': give CHIP:AxB[xC], CHIP one of "
    "v4, v5e, v5p, v6e (e.g. v5p:2x2x2)"
  ]


def test_libtpu_refuses_a_slice_it_does_not_know():
  with pytest.raises(tpu_compile.UnknownTopology, match="libtpu does not know TPU topology"):
    tpu_compile.topology_devices("v5e:3x7")


def test_v4_and_v5p_slices_have_a_device_per_chip():
  """Their chips have two TensorCores: megacore makes them one device, as a mesh needs."""
  for topology, chips in (("v4:2x2x2", 8), ("v5p:2x2x1", 4)):
    devices = tpu_compile.topology_devices(topology)
    assert len(devices) == chips
    assert sharding_lib.make_mesh((("data", -1), ("model", 1)), devices).shape["data"] == chips
