"""python -m vgg_jax.data stats --dataset NAME: a dataset's per-channel statistics."""

import argparse
import json

import numpy as np

from vgg_jax import data


def stats_command(args):
  """Computes one dataset's training-set statistics and writes them to the stats file."""
  cfg = data.default_config(name=args.dataset, data_dir=args.data_dir, backend=args.backend,
                            manual_dir=args.manual_dir, train_split=args.split)
  stats = data.compute_stats(data.backend(cfg).pixel_moment_chunks(cfg))
  info = dict(computed=True, split=cfg.train_split, units="mean in 0-255 pixels; eigval = "
              "covariance eigenvalues of [0, 1] pixels x 255 (the AlexNet convention); "
              "eigvec columns are the principal axes",
              command=data.STATS_COMMAND.format(name=args.dataset))
  data.write_stats(args.dataset, stats, info, args.out)
  print(json.dumps({k: np.round(v, 4).tolist() for k, v in stats._asdict().items()}))


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m vgg_jax.data", description=data.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  stats = sub.add_parser("stats", help="per-channel mean and covariance eigen decomposition "
                         "of the training set, into the stats file")
  stats.add_argument("--dataset", required=True)
  stats.add_argument("--split", default="train")
  stats.add_argument("--backend", choices=("tfds", "numpy"), default="tfds")
  stats.add_argument("--data_dir", default="")
  stats.add_argument("--manual_dir", default="")
  stats.add_argument("--out", default=data.STATS_PATH)
  stats.set_defaults(run=stats_command)
  args = parser.parse_args(argv)
  args.run(args)


if __name__ == "__main__":
  main()
