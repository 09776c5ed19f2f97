"""What every test shares: 8 simulated CPU devices (so sharding tests need no special
launch), the Fashion-MNIST skip marker, and the helpers several test files use.
Test files import the helpers with `from conftest import ...`."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

# libtpu (requirements-test.txt) makes JAX look for a TPU: the suite runs on the CPU, and
# libtpu compiles for TPU topologies without one (tests/test_tpu_compile.py). Before JAX
# is imported (vgg_jax imports it), which reads JAX_PLATFORMS once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from vgg_jax import xla_flags  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as launch.py: the same tf.data ops
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
xla_flags.apply_cpu_defaults()  # as every entry point does; VGG_JAX_XLA_CPU_DEFAULTS=0: off

# One persistent compilation cache for the whole run: the pytest process that imports this
# first (xdist's controller, or plain pytest) names it, and its workers and every
# subprocess a test starts inherit it. The suite compiles the same tiny programs in many
# processes; from the second on they load in a fraction of the time (the cache's keys are
# the program, the devices and the XLA flags). A user's own cache directory wins.
OWN_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_COMPILATION_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(  # JAX makes it on its first write
    tempfile.gettempdir(), f"vgg_jax_tests_jax_cache_{os.getpid()}"
  )
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# torchvision's native libraries crash the process when loaded after TensorFlow's (the
# other order works), and one pytest worker may run both kinds of test: load it first.
try:
  import torchvision  # noqa: F401,E402
except ImportError:
  pass

import pytest  # noqa: E402

from vgg_jax import config as config_lib  # noqa: E402
from vgg_jax import data, metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = os.path.join(ROOT, "experiments", "fashion_mnist.py")

HAS_FASHION_MNIST = all(
  os.path.exists(os.path.join(data.FASHION_MNIST_DIR, f))
  for files in data.FASHION_MNIST_FILES.values()
  for f in files
)
NO_FASHION_MNIST = "needs `apt-get install dataset-fashion-mnist` (setup.sh installs it)"
needs_fashion_mnist = pytest.mark.skipif(not HAS_FASHION_MNIST, reason=NO_FASHION_MNIST)


def pytest_unconfigure(config):
  """The run's compilation cache goes with the process that made it."""
  if OWN_COMPILATION_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def tiny_config(steps=4, devices=1, model_axis=1, arg="quick,backend=numpy", **optim):
  """A few steps of a 1/16-width A on real Fashion-MNIST (NumPy input: the same global
  batches for any device or process count)."""
  c = config_lib.experiment_config("fashion_mnist", arg)
  c.model.width = 1 / 16  # convs 4..32 wide, fc 256
  c.optim.update(batch_size=32, max_steps=steps, **optim)
  c.data.eval_split = "test[:200]"
  c.mesh = (("data", devices // model_axis), ("model", model_axis))
  c.log_every_steps = 1
  return c


@pytest.fixture
def sweep_cache(monkeypatch):
  """For a test of the sweep's own cache (ROOT/jax_cache): the suite's is unset, and
  JAX's is pointed back at it afterwards (an in-process sweep sets it to the root)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc

  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", before)
  cc.reset_cache()


def finish(process, timeout=900, status=0):
  """A subprocess's output once it ended with `status` (generous: CI machines differ)."""
  out, _ = process.communicate(timeout=timeout)
  assert process.returncode == status, out[-3000:]
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ------------------------------------------------------------------- sweeps and reports

SWEEP_TINY = {  # a sweep run's overrides: 4 steps of a 1/16-width net
  "model.width": 0.0625,
  "optim.batch_size": 32,
  "optim.max_steps": 4,
  "data.eval_split": "test[:64]",
  "mesh": (("data", 1), ("model", 1)),
  "evaluations": ("dense@@test[:64]", "dense@table4@test[:64]"),
}


def write_run(
  root, name: str, seed: int, results: list[dict], init: str = "glorot", crop: int = 32
):
  """A run directory as a sweep leaves it: config.json and eval/*.json."""
  os.makedirs(root / name / "eval")
  (root / name / "config.json").write_text(
    json.dumps(dict(seed=seed, data=dict(name="fashion_mnist", crop=crop), model=dict(init=init)))
  )
  for i, result in enumerate(results):
    (root / name / "eval" / f"{i}.json").write_text(json.dumps(result))


def result(
  config: str,
  s: str,
  q: list[int],
  protocol: str,
  top1: float,
  top5: float,
  models: int = 1,
  split: str = "test",
  count: int = 10_000,
) -> dict:
  return dict(
    models=[dict(config=config, S=s, Q=q)] * models,
    protocol=protocol,
    split=split,
    count=count,
    top1_err=top1,
    top5_err=top5,
  )


TRAIN_TINY = (  # launch.py flags: what `tiny_config` runs in-process
  "--config.model.width=0.0625",
  "--config.optim.batch_size=32",
  "--config.data.eval_split=test[:200]",
  "--config.log_every_steps=1",
)


def cpu_env(devices: int) -> dict:
  """A child process's environment: this one's, on `devices` simulated CPU devices."""
  return dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )


def launch(workdir, config_arg, *flags, devices=1, tiny=True):
  """`launch.py train` in a subprocess with its own simulated CPU devices; `tiny` runs
  what `tiny_config` runs in-process."""
  command = [
    sys.executable,
    os.path.join(ROOT, "launch.py"),
    "train",
    f"--config={ROOT}/experiments/fashion_mnist.py:{config_arg}",
    f"--workdir={workdir}",
    *(TRAIN_TINY if tiny else ()),
    *flags,
  ]
  return subprocess.Popen(
    command,
    env=cpu_env(devices),
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def train_on_two_processes(workdir, config_arg, *flags) -> list[str]:
  """`launch.py train` as two real processes on 127.0.0.1, 2 simulated CPU devices each
  (a 4-way data mesh); their outputs, once both finished."""
  port = free_port()
  workers = [
    launch(
      workdir,
      config_arg,
      *flags,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
      "--config.mesh=(('data', 4), ('model', 1))",
      devices=2,
    )
    for i in range(2)
  ]
  return [finish(w) for w in workers]


def losses(workdir):
  return [r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r]


def run_launch(*args, timeout=300) -> subprocess.CompletedProcess:
  """`launch.py ARGS` on one CPU device, its stdout and stderr apart."""
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "launch.py"), *args],
    env=cpu_env(1),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
