"""The "numpy" backend: Fashion-MNIST's IDX files read with NumPy and augmented in JAX on
the host's CPU (the accelerator stays free for the model). No TensorFlow: the GPU machine
has none.
"""

import functools
import itertools
from typing import Callable, Iterator

import jax
import numpy as np

from vgg_jax.data import augment, core


def pipeline(
  *, cfg, train, local_batch_size, seed, split, process_index, process_count, sharding=None
) -> core.Pipeline:
  """See `data.make_pipeline` (`sharding` is not needed: batches are per process).
  Training batches are cut from one global stream that does not depend on the number
  of processes: every process reads the whole (small) split and keeps its slice of each
  global batch, so 1 and N processes train on the same data."""
  del sharding
  images, labels = core.load_idx_split(cfg, split)
  stats = core.Stats(*augment.on_cpu(*core.load_stats(cfg.stats or cfg.name)))
  classes = len(core.FASHION_MNIST_CLASSES)
  if train:
    global_batch = local_batch_size * process_count
    side, steps = cfg.crop, len(labels) // global_batch
    augment_fn = functools.partial(
      augment.augment_batch,
      stats=stats,
      scale=core.scale_range(cfg.scale),
      crop=side,
      flip=bool(cfg.flip),
      pca_std=float(cfg.pca_std),
    )
    mine = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)
    batches = train_batches(
      core.pad_images(images, cfg.pad_to), labels, augment_fn, global_batch, mine, seed
    )
    return core.Pipeline(
      batches, len(labels), steps, local_batch_size, (side, side, images.shape[-1]), classes
    )
  shards = [
    core.shard(len(labels), i, process_count, drop_remainder=False) for i in range(process_count)
  ]
  local = shards[process_index]
  side, steps = core.eval_crop(cfg), core.eval_steps(map(len, shards), local_batch_size)
  preprocess = functools.partial(augment.eval_batch, stats=stats, scale=cfg.eval_scale, crop=side)
  batches = eval_batches(
    core.pad_images(images[local.start : local.stop], cfg.pad_to),
    labels[local.start : local.stop],
    preprocess,
    local_batch_size,
    steps,
  )
  return core.Pipeline(
    batches, len(labels), steps, local_batch_size, (side, side, images.shape[-1]), classes
  )


def train_batches(
  images, labels, augment_fn, global_batch, mine: slice, seed
) -> Callable[[int], Iterator]:
  """The global batches of `core.train_order`, each example augmented with its key of
  `augment.step_keys`; this process yields the `mine` slice."""
  indices = core.train_order(len(labels), global_batch, seed)
  (key,) = augment.on_cpu(jax.random.key(seed))

  def batches(start):
    for step in itertools.count(start):
      idx = indices(step)[mine]
      keys = augment.step_keys(key, step, global_batch)[mine]
      (image,) = augment.on_cpu(images[idx])
      yield {
        "image": np.asarray(augment_fn(keys, image)),
        "label": labels[idx],
        "mask": np.ones(len(idx), bool),
      }

  return batches


def eval_batches(images, labels, preprocess, batch, steps) -> Callable[[int], Iterator]:
  """Preprocesses the shard once, then pads it to `steps` batches with masked zeros."""
  shape = jax.eval_shape(
    preprocess, jax.ShapeDtypeStruct((batch,) + images.shape[1:], images.dtype)
  ).shape[1:]
  image = np.zeros((steps * batch,) + shape, np.float32)
  for i in range(0, len(labels), batch):
    chunk = images[i : i + batch]
    image[i : i + len(chunk)] = np.asarray(preprocess(*augment.on_cpu(chunk)))
  label = np.zeros(steps * batch, np.int32)
  label[: len(labels)] = labels
  mask = np.arange(steps * batch) < len(labels)

  def batches(start):
    for s in range(start * batch, steps * batch, batch):
      yield {
        "image": image[s : s + batch],
        "label": label[s : s + batch],
        "mask": mask[s : s + batch],
      }

  return batches


read_split = core.read_idx_chunks  # see `data.read_split`


def rescale_images(cfg, images: np.ndarray, short_side: int) -> np.ndarray:
  """See `data.rescale_images`: `augment.rescale` on the host's CPU."""
  stack, mean = augment.on_cpu(images, core.load_stats(cfg.stats or cfg.name).mean)
  return np.asarray(augment.rescale(stack, mean, short_side=short_side))


pixel_moment_chunks = core.idx_pixel_moments  # see `python -m vgg_jax.data stats`
