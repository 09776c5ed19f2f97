"""The CPU flag defaults (vgg_jax.xla_flags): how they join XLA_FLAGS, and that every
Table 1 network's loss and gradients under them equal XLA's default's.

XLA reads its flags once per process, so the numerics test computes each setting in a
fresh process (this file run as a script) and compares the two here.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vgg_jax import TABLE1, weight_layers, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = next(iter(xla_flags.CPU_DEFAULTS))
# Default and library kernels sum in different orders: float32 rounding, far below what a
# wrong kernel would change (a gradient's whole size).
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4


def test_defaults_are_appended_to_the_users_flags():
  flags = xla_flags.with_cpu_defaults(" --xla_force_host_platform_device_count=8 ")
  assert flags.startswith("--xla_force_host_platform_device_count=8 --")
  assert all(f"--{name}={value}" in flags.split() for name, value in xla_flags.CPU_DEFAULTS.items())
  assert xla_flags.with_cpu_defaults(flags) == flags  # applying twice adds nothing


def test_the_users_own_value_of_a_default_flag_wins():
  assert xla_flags.with_cpu_defaults(f"--{FLAG}=") == f"--{FLAG}="


@pytest.mark.parametrize(
  "value, enabled", [(None, True), ("1", True), ("0", False), ("false", False), ("OFF", False)]
)
def test_the_switch(value, enabled):
  environ = {} if value is None else {xla_flags.SWITCH: value}
  assert xla_flags.cpu_defaults_enabled(environ) is enabled


def test_the_tests_run_with_the_defaults():
  """conftest.py applies them (unless the switch is off), keeping its 8 devices."""
  flags = os.environ["XLA_FLAGS"]
  assert "--xla_force_host_platform_device_count=8" in flags.split()
  if xla_flags.cpu_defaults_enabled():
    assert xla_flags.with_cpu_defaults(flags) == flags  # each default flag is set


def lecun_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """Kernels ~ N(0, 1 / fan-in), biases 0, drawn by NumPy: no per-shape JAX programs to
  compile, and activations that neither vanish nor explode through E's 19 layers."""
  if len(shape) == 1:
    return np.zeros(shape, np.float32)
  return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)


def loss_and_gradients(out_path: str) -> None:
  """In a fresh process: each config's loss and gradients at 1/16 width on 4 random
  32x32 images, saved to `out_path` (.npz), with this process's XLA_FLAGS and how many
  YNNPACK fusions XLA made (.json)."""
  xla_flags.apply_cpu_defaults()
  import jax
  import optax
  from flax import nnx

  from vgg_jax import create_model

  rng = np.random.default_rng(0)
  images = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 10, 4)
  arrays, ynn_fusions = {}, 0
  for name in TABLE1:
    graphdef, shapes = nnx.split(
      nnx.eval_shape(
        lambda name=name: create_model(
          name, num_classes=10, width=1 / 16, dropout=0.0, image_size=32
        )
      ),
      nnx.Param,
    )
    params = jax.tree.map(lambda p: lecun_normal(p.shape, rng), shapes)

    def loss_fn(params, graphdef=graphdef):
      logits = nnx.merge(graphdef, params)(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile()
    ynn_fusions += compiled.as_text().count('"kind":"__ynn_fusion"')
    loss, grads = compiled(params)
    arrays[f"{name}/loss"] = np.asarray(loss)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
      arrays[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(grad)
  np.savez(out_path, **arrays)
  with open(out_path + ".json", "w") as f:
    json.dump(dict(xla_flags=os.environ.get("XLA_FLAGS", ""), ynn_fusions=ynn_fusions), f)


def run_both_settings(tmp_path) -> dict:
  """{defaults on?: (arrays, info)}, each from its own process, both running at once."""
  processes = {}
  for enabled in (False, True):
    env = dict(
      os.environ, XLA_FLAGS="", PYTHONPATH=ROOT, **{xla_flags.SWITCH: "1" if enabled else "0"}
    )
    out = str(tmp_path / f"enabled_{enabled}.npz")
    processes[enabled] = out, subprocess.Popen([sys.executable, __file__, out], env=env, cwd=ROOT)
  results = {}
  for enabled, (out, process) in processes.items():
    assert process.wait(timeout=300) == 0
    with open(out + ".json") as f:
      results[enabled] = dict(np.load(out)), json.load(f)
  return results


@pytest.mark.skipif(
  not importlib.util.find_spec("libtpu"), reason="libtpu is not installed: JAX tries no TPU"
)
def test_a_machine_without_a_tpu_chip_skips_libtpus_backend():
  """requirements-test.txt installs libtpu; on this CPU machine an entry point must not
  start its TPU backend (seconds of libtpu errors), and its children inherit that."""
  script = (
    "from vgg_jax import xla_flags; xla_flags.apply_cpu_defaults(); import os, jax; "
    "print(jax.default_backend(), os.environ['JAX_PLATFORMS'])"
  )
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  done = subprocess.run(
    [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == ["cpu", "cpu"]
  assert "tpu" not in done.stderr.lower(), done.stderr


def test_every_config_has_the_defaults_loss_and_gradients(tmp_path):
  results = run_both_settings(tmp_path)
  (off, off_info), (on, on_info) = results[False], results[True]
  assert FLAG not in off_info["xla_flags"] and FLAG in on_info["xla_flags"]
  # The flag reached XLA: it fused more of the programs into YNNPACK.
  assert on_info["ynn_fusions"] > off_info["ynn_fusions"]
  assert on.keys() == off.keys()
  for name in TABLE1:
    assert on[f"{name}/loss"] == pytest.approx(off[f"{name}/loss"], rel=LOSS_RTOL), name
    leaves = [key for key in off if key.startswith(f"{name}/") and key != f"{name}/loss"]
    assert len(leaves) == 2 * weight_layers(name), name  # a kernel and a bias each
    for key in leaves:
      scale = np.abs(off[key]).max()
      assert scale > 0, key  # a vanished gradient would compare nothing
      np.testing.assert_allclose(on[key], off[key], rtol=0, atol=GRAD_RTOL * scale, err_msg=key)


if __name__ == "__main__":
  loss_and_gradients(sys.argv[1])
