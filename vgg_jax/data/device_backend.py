"""The "device" backend: the split held on the accelerators, each batch made inside jit.

The split is read on the host (Fashion-MNIST's IDX files), padded (`data.pad_to`) and
placed once as uint8, its rows split over the mesh's `data` axis (each process places
its own devices' rows). A training step's global example indices come from the host,
from (seed, step) exactly as in the numpy backend (`core.train_order`); the devices
gather those rows and augment them with the numpy backend's functions (`augment`, the
example keys of `augment.step_keys`), so the two backends give the same batches, for any
number of devices or processes. Batches are global `jax.Array`s on the batch sharding:
`to_global` passes them through, and making one only dispatches (it never waits), from
the loop's own thread (`Pipeline.prefetch` 0): the program has collectives, which every
process must issue in the same order. Evaluation batches are consecutive rows, padded
and masked to whole global batches. The evaluation protocols (`read_split`,
`rescale_images`) read the host copy and rescale on the default device.

Cost per chip: the split's bytes over the data-parallel devices D (Fashion-MNIST at
32x32: 61 MB for the 60,000 training and 10 MB for the 10,000 test images), plus a
step's temporaries (`batch_bytes`: the gathered global batch, which XLA builds as a
masked local gather and an all-reduce of its B x H x W x C uint8 pixels, and the float32
crops). Input needing more than MAX_FRACTION of a chip's memory is refused before
anything is placed; platforms that report no limit (the CPU) skip the check. No
TensorFlow: the GPU machine has none.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vgg_jax import sharding as sharding_lib
from vgg_jax.data import augment, core

MAX_FRACTION = 0.5  # of a chip's memory the input may take; the rest is the model's


def pipeline(
  *, cfg, train, local_batch_size, seed, split, process_index, process_count, sharding=None
) -> core.Pipeline:
  """See `data.make_pipeline`. The batches are global arrays, so the process arguments
  must be JAX's own (this backend cannot simulate other processes)."""
  if (process_index, process_count) != (jax.process_index(), jax.process_count()):
    raise ValueError(
      "the device backend yields global arrays: it runs as JAX's process "
      f"{jax.process_index()} of {jax.process_count()}, not as "
      f"{process_index} of {process_count}"
    )
  sharding = sharding or sharding_lib.batch_sharding(sharding_lib.make_mesh((("data", -1),)))
  global_batch = local_batch_size * process_count
  data_devices = sharding.mesh.shape["data"]
  if global_batch % data_devices:
    raise ValueError(
      f"global batch {global_batch} does not divide between the "
      f"{data_devices} devices of the data axis"
    )
  images, labels = core.load_idx_split(cfg, split)
  images = core.pad_images(images, cfg.pad_to)
  side = cfg.crop if train else core.eval_crop(cfg)
  check_fits(
    split_bytes(images.shape, data_devices)
    + batch_bytes(images.shape[1:], side, global_batch, data_devices),
    sharding,
  )
  stats = core.load_stats(cfg.stats or cfg.name)
  placed = functools.cache(lambda: (place(images, sharding), place(labels, sharding)))
  if train:
    steps = len(labels) // global_batch
    batches = train_batches(placed, len(labels), stats, cfg, global_batch, seed, sharding)
  else:
    steps = math.ceil(len(labels) / global_batch)
    batches = eval_batches(placed, len(labels), stats, cfg, global_batch, steps, sharding)
  return core.Pipeline(
    batches,
    len(labels),
    steps,
    local_batch_size,
    (side, side, images.shape[-1]),
    len(core.FASHION_MNIST_CLASSES),
    prefetch=0,
  )


# --------------------------------------------------------------------------- memory


def split_bytes(shape: tuple[int, ...], data_devices: int) -> int:
  """Bytes of a uint8 split [N, H, W, C] on one chip: its rows over the data axis."""
  return math.ceil(shape[0] / data_devices) * math.prod(shape[1:])


def batch_bytes(
  image_shape: tuple[int, ...], crop: int, global_batch: int, data_devices: int
) -> int:
  """A step's temporaries on one chip, generously: the gathered global batch (uint8 and a
  float32 copy) and the chip's share of float32 crops, twice (input and output)."""
  pixels = math.prod(image_shape)
  channels = image_shape[-1]
  return (
    global_batch * pixels * 5
    + 2 * 4 * math.ceil(global_batch / data_devices) * crop * crop * channels
  )


def memory_limit(device: jax.Device) -> int | None:
  """The bytes a chip may allocate, where the platform says (GPU, TPU); None on CPU."""
  stats = device.memory_stats()
  return stats.get("bytes_limit") if stats else None


def check_fits(need: int, sharding: NamedSharding):
  """Refuses input that needs more than MAX_FRACTION of a chip's memory, before any of
  it is placed."""
  for device in sharding.addressable_devices:
    limit = memory_limit(device)
    if limit is not None and need > MAX_FRACTION * limit:
      raise MemoryError(
        f"the device backend needs {need / 2**20:.0f} MiB on each chip ({device}) for the "
        f"split and a step's batch, more than {MAX_FRACTION:.0%} of its "
        f"{limit / 2**20:.0f} MiB; use more data-parallel devices, a smaller split, or "
        "data.backend='numpy'"
      )


def place(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """`array` on the devices, rows split over the data axis (zero rows pad it to a
  multiple of the axis; no index reaches them); each process places its devices' rows."""
  rows = -len(array) % sharding.mesh.shape["data"]
  padded = np.concatenate([array, np.zeros((rows, *array.shape[1:]), array.dtype)])
  return jax.make_array_from_callback(padded.shape, sharding, lambda index: padded[index])


# -------------------------------------------------------------------------- batches


def on_batch(x: jax.Array, sharding: NamedSharding) -> jax.Array:
  return jax.lax.with_sharding_constraint(x, sharding)


def train_batches(placed, num_examples, stats, cfg, global_batch, seed, sharding):
  """Endless global batches from any step: the rows of `core.train_order`, augmented."""
  indices = core.train_order(num_examples, global_batch, seed)
  make = train_program(
    sharding,
    global_batch,
    core.scale_range(cfg.scale),
    cfg.crop,
    bool(cfg.flip),
    float(cfg.pca_std),
  )

  def batches(start):
    images, labels = placed()
    for step in itertools.count(start):
      yield make(
        images, labels, indices(step).astype(np.int32), np.int32(step), np.int32(seed), stats
      )

  return batches


@functools.cache
def train_program(sharding, global_batch, scale, crop, flip, pca_std):
  """(split images, labels, indices, step, seed, stats) -> the augmented global batch;
  one per shape and option, so the runs of a sweep share it."""
  replicated = NamedSharding(sharding.mesh, P())

  @functools.partial(
    jax.jit, out_shardings=sharding, in_shardings=(sharding, sharding) + (replicated,) * 4
  )
  def make(images, labels, idx, step, seed, stats):
    keys = augment.step_keys(jax.random.key(seed), step, global_batch)
    image = augment.augment_batch(
      on_batch(keys, sharding),
      on_batch(images[idx], sharding),
      stats,
      scale=scale,
      crop=crop,
      flip=flip,
      pca_std=pca_std,
    )
    return {"image": image, "label": labels[idx], "mask": jnp.ones(global_batch, bool)}

  return make


def eval_batches(placed, num_examples, stats, cfg, global_batch, steps, sharding):
  """`steps` global batches of consecutive rows, preprocessed for evaluation; rows past
  the split are zeros with mask False."""
  make = eval_program(sharding, global_batch, cfg.eval_scale, core.eval_crop(cfg))

  def batches(start):
    images, labels = placed()
    for step in range(start, steps):
      yield make(images, labels, np.int32(step * global_batch), np.int32(num_examples), stats)

  return batches


@functools.cache
def eval_program(sharding, global_batch, scale, crop):
  """(split images, labels, first row, rows in the split, stats) -> a masked batch."""
  replicated = NamedSharding(sharding.mesh, P())

  @functools.partial(
    jax.jit, out_shardings=sharding, in_shardings=(sharding, sharding) + (replicated,) * 3
  )
  def make(images, labels, start, num_examples, stats):
    idx = start + jnp.arange(global_batch)
    mask = idx < num_examples
    idx = jnp.minimum(idx, num_examples - 1)
    image = augment.eval_batch(on_batch(images[idx], sharding), stats, scale=scale, crop=crop)
    return {
      "image": jnp.where(mask[:, None, None, None], image, 0),
      "label": jnp.where(mask, labels[idx], 0),
      "mask": mask,
    }

  return make


# ------------------------------------------------------------- evaluation protocols


read_split = core.read_idx_chunks  # see `data.read_split`


def rescale_images(cfg, images: np.ndarray, short_side: int) -> np.ndarray:
  """See `data.rescale_images`: `augment.rescale` on the default device."""
  mean = core.load_stats(cfg.stats or cfg.name).mean
  return np.asarray(augment.rescale(images, mean, short_side=short_side))


pixel_moment_chunks = core.idx_pixel_moments  # see `python -m vgg_jax.data stats`
