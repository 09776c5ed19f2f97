"""python -m vgg_jax.data stats --dataset NAME: a dataset's per-channel statistics (the
mean and the covariance's eigen decomposition of its training set), into the stats file."""

import json

import numpy as np
from absl import app, flags

from vgg_jax import data

_DATASET = flags.DEFINE_string("dataset", None, "the tfds name of the dataset.")
_SPLIT = flags.DEFINE_string("split", "train", "the split the statistics are taken over.")
_BACKEND = flags.DEFINE_enum("backend", "tfds", data.BACKENDS, "the input backend reading it.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "where tfds prepares datasets.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "the raw files (Fashion-MNIST's IDX).")
_OUT = flags.DEFINE_string("out", data.STATS_PATH, "the stats file to update.")
flags.mark_flag_as_required("dataset")


def stats_command():
  """Computes one dataset's training-set statistics and writes them to the stats file."""
  cfg = data.default_config(
    name=_DATASET.value,
    data_dir=_DATA_DIR.value,
    backend=_BACKEND.value,
    manual_dir=_MANUAL_DIR.value,
    train_split=_SPLIT.value,
  )
  stats = data.compute_stats(data.backend(cfg).pixel_moment_chunks(cfg))
  info = dict(
    computed=True,
    split=cfg.train_split,
    units="mean in 0-255 pixels; eigval = "
    "covariance eigenvalues of [0, 1] pixels x 255 (the AlexNet convention); "
    "eigvec columns are the principal axes",
    command=data.STATS_COMMAND.format(name=_DATASET.value),
  )
  data.write_stats(_DATASET.value, stats, info, _OUT.value)
  print(json.dumps({k: np.round(v, 4).tolist() for k, v in stats._asdict().items()}))


def main(argv):
  if argv[1:] != ["stats"]:
    raise app.UsageError("usage: python -m vgg_jax.data stats --dataset NAME [flags]")
  stats_command()


if __name__ == "__main__":
  app.run(main)
