"""Input: the paper's training augmentation (Section 3.1) and test-time rescaling
(Section 3.2), behind one interface served by three backends that yield the same batches.

Training: pad (Fashion-MNIST 28 -> 32), rescale the shortest side to S (fixed, or drawn per
image from [S_min, S_max]), random crop, random horizontal flip, PCA colour shift (AlexNet
lighting), mean subtraction. Evaluation: pad, rescale the shortest side to Q, centre crop,
mean subtraction; the split is divided between processes and the last batch padded and
masked, so every example counts exactly once. Pixels stay on the 0-255 scale, as in the
paper. A batch: image float32 [B, H, W, C], label int32 [B], mask bool [B].

Backends (`data.backend`), each a module with the same functions (`pipeline`,
`read_split`, `rescale_images`, `pixel_moment_chunks`), imported only when asked for:
  * "tfds" (`tfds_backend`): any tfds dataset by name, augmented per image in tf.data.
    Fashion-MNIST comes from the Debian package's IDX files through the local builder
    `fashion_mnist_local`, so nothing is downloaded. The only module importing TensorFlow.
  * "numpy" (`numpy_backend`): the IDX files read with NumPy, augmented in JAX on the
    host's CPU (`augment`); Fashion-MNIST only.
  * "device" (`device_backend`): the split held on the accelerators as uint8, each batch
    gathered by index and augmented inside jit with the numpy backend's functions.
The vocabulary they share (config schema, splits, IDX files, statistics, `Pipeline`) is
`core`. Per-channel statistics live in `vgg_jax/data_stats.json`, written by
  python -m vgg_jax.data stats --dataset fashion_mnist
"""

import importlib
from types import ModuleType
from typing import Any, Iterator

import jax
import numpy as np

from vgg_jax.data.augment import (
  augment_batch,
  eval_batch,
  lighting,
  on_cpu,
  rescale_crop,
  rescaled_hw,
)
from vgg_jax.data.core import (
  BACKENDS,
  DATASET_SIZES,
  DEFAULTS,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DIR,
  FASHION_MNIST_FILES,
  STATS_COMMAND,
  STATS_PATH,
  Pipeline,
  Stats,
  compute_stats,
  default_config,
  eval_crop,
  eval_steps,
  fashion_mnist_dir,
  load_idx_numpy,
  load_idx_split,
  load_stats,
  pad_images,
  parse_split,
  pixel_moments,
  process_seed,
  read_idx,
  rescaled_shape,
  resolve_config,
  scale_range,
  shard,
  to_global,
  train_order,
  write_stats,
)

CHUNK = 1024  # images `read_split` yields at a time


def backend(cfg: Any) -> ModuleType:
  """The backend module `cfg.backend` names, imported on first use (TensorFlow only for
  "tfds")."""
  return importlib.import_module(f"vgg_jax.data.{resolve_config(cfg).backend}_backend")


def make_pipeline(
  cfg: Any,
  *,
  train: bool,
  global_batch_size: int,
  seed: int = 0,
  split: str | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  sharding: jax.sharding.NamedSharding | None = None,
) -> Pipeline:
  """The one entry point: `cfg` is the `data` config (missing fields take the defaults),
  `split` overrides cfg.train_split / cfg.eval_split, the process arguments default to
  JAX's (pass them to simulate several processes). `sharding` is the train step's batch
  sharding (its mesh's `data` axis), where the device backend places the split and its
  batches (default: all devices on one `data` axis). Same seed, same batches."""
  cfg = resolve_config(cfg)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(
      f"global batch {global_batch_size} does not divide between {process_count} processes"
    )
  return backend(cfg).pipeline(
    cfg=cfg,
    train=train,
    local_batch_size=global_batch_size // process_count,
    seed=seed,
    split=split or (cfg.train_split if train else cfg.eval_split),
    process_index=process_index,
    process_count=process_count,
    sharding=sharding,
  )


def read_split(
  cfg: Any,
  split: str = "",
  process_index: int | None = None,
  process_count: int | None = None,
  chunk: int = CHUNK,
) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
  """This process's share of a split (default: the eval split; `shard`, nothing
  dropped) as chunks of at most `chunk` raw images (HWC, any sizes) and their int32
  labels, read as they are needed so memory holds one chunk; the process arguments
  default to JAX's. What the evaluation protocols read."""
  cfg = resolve_config(cfg)
  yield from backend(cfg).read_split(
    cfg,
    split or cfg.eval_split,
    jax.process_index() if process_index is None else process_index,
    jax.process_count() if process_count is None else process_count,
    chunk,
  )


def rescale_images(cfg: Any, images: np.ndarray, short_side: int) -> np.ndarray:
  """Same-sized raw images [N, h, w, C], whole, shortest side to `short_side` with the
  backend's resampling rule, the channel means subtracted: float32 [N, H, W, C]."""
  return backend(cfg).rescale_images(resolve_config(cfg), images, short_side)
