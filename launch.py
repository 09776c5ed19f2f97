"""The one entry point: `python launch.py COMMAND [flags]`.

  summary  parameters, depth and multiply-adds of all six nets beside the paper's
           (--resolution N adds the dense cost at N x N).
  train    --config experiments/FILE.py:ARG --workdir DIR [--config.field=value ...]
           trains and evaluates, resuming from DIR's checkpoints. On several hosts it
           first calls jax.distributed.initialize(): --distributed lets JAX detect the
           cluster (Cloud TPU, SLURM); --coordinator_address, --num_processes and
           --process_id name it explicitly.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_RESOLUTION = flags.DEFINE_integer("resolution", None,
                                   "summary: also report multiply-adds at this size.")

_CONFIG = config_flags.DEFINE_config_file("config", None, "train: experiments/FILE.py:ARG")
_WORKDIR = flags.DEFINE_string("workdir", None, "train: where checkpoints and metrics go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_distributed():
  explicit = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                  process_id=_PROCESS_ID.value)
  if any(v is not None for v in explicit.values()):
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**explicit)
  elif _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()


def train_main():
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("train needs --config experiments/FILE.py:ARG and --workdir DIR")
  initialize_distributed()
  from vgg_jax import train
  _, result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result:
    print(f"final: top-1 error {result['val_top1_err']:.4f}, top-5 error "
          f"{result['val_top5_err']:.4f} on {result['val_count']} "
          f"{_CONFIG.value.data.name} {_CONFIG.value.data.eval_split} images")


def summary_main():
  from vgg_jax import summary
  print(summary.summary(_RESOLUTION.value))


COMMANDS = {"summary": summary_main, "train": train_main}


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: launch.py {{{'|'.join(COMMANDS)}}} [flags]\n{__doc__}")
  COMMANDS[argv[1]]()


if __name__ == "__main__":
  app.run(main, argv=sys.argv)
