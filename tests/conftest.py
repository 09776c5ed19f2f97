"""Every test sees 8 simulated CPU devices, so sharding tests need no special launch."""

import os

from vgg_jax import xla_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
xla_flags.apply_cpu_defaults()  # as every entry point does; VGG_JAX_XLA_CPU_DEFAULTS=0: off

# torchvision's native libraries crash the process when loaded after TensorFlow's (the
# other order works), and one pytest worker may run both kinds of test: load it first.
try:
  import torchvision  # noqa: F401,E402
except ImportError:
  pass
