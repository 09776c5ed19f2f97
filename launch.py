"""The one entry point: `python launch.py COMMAND [flags]`.

  summary  parameters, depth and multiply-adds of all six nets beside the paper's
           (--resolution N adds the dense cost at N x N).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_RESOLUTION = flags.DEFINE_integer("resolution", None,
                                   "summary: also report multiply-adds at this size.")


def summary_main():
  from vgg_jax import summary
  print(summary.summary(_RESOLUTION.value))


COMMANDS = {"summary": summary_main}


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: launch.py {{{'|'.join(COMMANDS)}}} [flags]\n{__doc__}")
  COMMANDS[argv[1]]()


if __name__ == "__main__":
  app.run(main, argv=sys.argv)
