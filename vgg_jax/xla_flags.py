"""The XLA flags this project turns on for CPU runs, set before JAX starts a backend.

XLA reads XLA_FLAGS once per process, when JAX starts its first backend, so every entry
point (launch.py, benchmarks/*.py, tests/conftest.py) calls `apply_cpu_defaults()` before
it uses a device. The flags name only XLA's CPU compiler, which GPU and TPU runs use for
host code alone; jaxlib 0.10.2 and 0.11.2 (CPU and CUDA) know them: XLA aborts on a
flag it does not know. `VGG_JAX_XLA_CPU_DEFAULTS=0` turns them off; a flag that
XLA_FLAGS already sets keeps the user's value. Measured in benchmarks/README.md ("XLA
flags on a CPU").
"""

import importlib.util
import os
import re

SWITCH = "VGG_JAX_XLA_CPU_DEFAULTS"
# YNNPACK library fusions of dots, elementwise ops and reductions (XLA's default keeps only
# single dots there): the train step's ReLUs, bias gradients and SGD update fuse into them.
CPU_DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "dot,eltwise,reduce"}


def cpu_defaults_enabled(environ=os.environ) -> bool:
  return environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def with_cpu_defaults(xla_flags: str) -> str:
  """`xla_flags` with each default flag appended that it does not set already."""
  present = set(re.findall(r"--(\w+)", xla_flags))
  added = [f"--{name}={value}" for name, value in CPU_DEFAULTS.items() if name not in present]
  return " ".join([xla_flags.strip(), *added]).strip()


def apply_cpu_defaults() -> None:
  """Adds the defaults to this process's XLA_FLAGS (and its children's), unless switched
  off, and leaves out a TPU backend that has no TPU to run on."""
  if cpu_defaults_enabled():
    os.environ["XLA_FLAGS"] = with_cpu_defaults(os.environ.get("XLA_FLAGS", ""))
  leave_out_absent_tpu()


def leave_out_absent_tpu() -> None:
  """With libtpu installed (requirements-test.txt has it, for `launch.py compile`) JAX
  starts a TPU backend first; on a machine without a TPU chip that costs about 20 s and
  a page of libtpu errors before JAX falls back to the CPU. There, without a GPU, this
  process and its children run on the CPU; a JAX_PLATFORMS the user set wins."""
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  import jax
  from jax._src import hardware_utils  # JAX's own test for TPU chips and GPUs

  if not hardware_utils.num_available_tpu_chips_and_device_id()[0]:
    if not hardware_utils.has_visible_nvidia_gpu():
      os.environ["JAX_PLATFORMS"] = "cpu"  # for child processes
      jax.config.update("jax_platforms", "cpu")
