"""Input pipeline: the paper's training augmentation (Section 3.1) and test-time rescaling
(Section 3.2), served by two backends that yield the same batches.

Every batch is a dict of per-process NumPy arrays:
  image: float32 [B, H, W, C], mean-subtracted pixels (0-255 scale, no other normalisation,
    as in the paper); label: int32 [B]; mask: bool [B], False on padding (evaluation only).
`to_global` turns them into global `jax.Array`s for a sharded step.

Backends (`data.backend`):
  * "tfds": any tfds dataset by name, augmented per image in tf.data (`vgg_jax.data_tf`).
    Fashion-MNIST comes from the Debian package's IDX files through the local builder
    `fashion_mnist_local` (the name "fashion_mnist" resolves to it), so nothing is downloaded.
  * "numpy": the IDX files read with NumPy and augmented in JAX; no TensorFlow (the GPU
    machine has none), Fashion-MNIST only. This module never imports TensorFlow itself.

Training: pad (Fashion-MNIST 28 -> 32), rescale the shortest side to S (fixed, or drawn per
image from [S_min, S_max]), random crop, random horizontal flip, PCA colour shift (AlexNet
lighting), mean subtraction. Evaluation: pad, rescale the shortest side to Q, centre crop,
mean subtraction; the split is divided between processes and the last batch padded and
masked, so every example counts exactly once.

Per-channel statistics live in `data_stats.json`, written by
  python -m vgg_jax.data stats --dataset fashion_mnist
"""

import argparse
import dataclasses
import functools
import gzip
import itertools
import json
import math
import os
import re
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

STATS_PATH = os.path.join(os.path.dirname(__file__), "data_stats.json")
STATS_COMMAND = "python -m vgg_jax.data stats --dataset {name}"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# The trainer's `config.data`; every field is documented in `default_config`.
DEFAULTS = dict(
    name="imagenet2012", data_dir="", manual_dir="", backend="tfds", train_split="train",
    eval_split="validation", scale=256, crop=224, eval_scale=256, eval_crop=0, pad_to=0,
    flip=True, pca_std=0.1, shuffle_buffer=16_384, cache=False, stats="")


def default_config(**overrides) -> ml_collections.ConfigDict:
  """The `data` block of a trainer config, with the paper's ImageNet recipe as defaults.

  name: tfds dataset name (imagenet2012, cifar10, cifar100, imagenette, fashion_mnist).
  data_dir: where tfds prepares datasets ("" = tfds' default, ~/tensorflow_datasets).
  manual_dir: the raw files: Fashion-MNIST's IDX files ("" = the Debian package's
    /usr/share/datasets/fashion-mnist), imagenet2012's ILSVRC2012 tars ("" = tfds'
    <data_dir>/downloads/manual).
  backend: "tfds" (tf.data) or "numpy" (NumPy + JAX, no TensorFlow; Fashion-MNIST only).
  train_split / eval_split: tfds split strings; the numpy backend accepts "name" and
    "name[start:stop]" with absolute indices.
  scale: training S, an int or [S_min, S_max] (S drawn per image, both ends included).
  crop: training crop side (224 in the paper).
  eval_scale: Q, the shortest side at test time.
  eval_crop: side of the square centre crop at test time; 0 means Q (the whole central
    square, for dense evaluation).
  pad_to: zero-pad images smaller than this to a centred pad_to x pad_to (32 for
    Fashion-MNIST; S is then in pixels of the padded image); 0 disables.
  flip: random horizontal flips in training.
  pca_std: standard deviation of the AlexNet lighting coefficients alpha (0.1); 0 disables.
  shuffle_buffer: tf.data shuffle buffer (the numpy backend shuffles whole epochs).
  cache: cache decoded images in memory (before augmentation); not for ImageNet.
  stats: key of `data_stats.json` to use ("" = name).
  """
  # Not type-safe: `scale` may switch between an int and a pair.
  return ml_collections.ConfigDict({**DEFAULTS, **overrides}, type_safe=False)


def resolve_config(cfg: Any) -> ml_collections.ConfigDict:
  """Fills the fields a config leaves out with the defaults and rejects unknown ones."""
  given = dict(cfg.items()) if hasattr(cfg, "items") else dict(vars(cfg))
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"unknown data config fields {unknown}; known: {sorted(DEFAULTS)}")
  resolved = default_config(**given)
  if resolved.backend not in ("tfds", "numpy"):
    raise ValueError(f"data.backend must be 'tfds' or 'numpy', got {resolved.backend!r}")
  if resolved.crop > scale_range(resolved.scale)[0] or eval_crop(resolved) > resolved.eval_scale:
    raise ValueError(f"crops must fit the rescaled images: crop {resolved.crop} <= S_min of "
                     f"{resolved.scale}, eval_crop {resolved.eval_crop} <= eval_scale "
                     f"{resolved.eval_scale}")
  return resolved


def scale_range(scale) -> tuple[int, int]:
  """S as (S_min, S_max); a fixed S is (S, S)."""
  lo, hi = (scale, scale) if np.isscalar(scale) else tuple(scale)
  if not 0 < int(lo) <= int(hi):
    raise ValueError(f"data.scale must be S or [S_min, S_max] with 0 < S_min <= S_max, "
                     f"got {scale!r}")
  return int(lo), int(hi)


# ---------------------------------------------------------------------------- statistics


class Stats(NamedTuple):
  """Per-channel training-set statistics in 0-255 pixel units.

  eigvec[:, i] is the i-th principal axis of the channel covariance, largest first, and
  eigval[i] the covariance eigenvalue of pixels scaled to [0, 1], times 255: the
  convention of the AlexNet values everyone uses (fb.resnet.torch's [0.2175, 0.0188,
  0.0045], eigenvalues for [0, 1] pixels, times 255). The lighting shift
  eigvec @ (alpha * eigval) is then in 0-255 pixel units.
  """
  mean: np.ndarray
  eigval: np.ndarray
  eigvec: np.ndarray


def load_stats(name: str, path: str = STATS_PATH) -> Stats:
  with open(path) as f:
    table = json.load(f)
  if name not in table:
    raise KeyError(f"no statistics for {name!r} in {path}; compute them with "
                   f"`{STATS_COMMAND.format(name=name)}`")
  entry = table[name]
  return Stats(*(np.asarray(entry[k], np.float32) for k in Stats._fields))


def compute_stats(chunks: Iterable[tuple[np.ndarray, np.ndarray, int]]) -> Stats:
  """Mean and covariance eigen decomposition from (pixel sum [C], sum of x x^T [C, C],
  pixel count) partial sums, accumulated in float64."""
  total, gram, count = (sum(parts) for parts in zip(*chunks))
  mean = np.asarray(total, np.float64) / count
  cov = np.asarray(gram, np.float64) / count - np.outer(mean, mean)
  lam, vec = np.linalg.eigh(cov)
  order = np.argsort(lam)[::-1]
  # eig(cov(x / 255)) * 255 == eig(cov(x)) / 255, with x in 0-255 units.
  return Stats(mean, np.maximum(lam[order], 0.0) / 255, vec[:, order])


def pixel_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """The partial sums `compute_stats` takes, for a batch [..., C] of pixels."""
  x = images.reshape(-1, images.shape[-1]).astype(np.float64)
  return x.sum(0), x.T @ x, x.shape[0]


def write_stats(name: str, stats: Stats, info: dict, path: str = STATS_PATH):
  """Adds or replaces one dataset's entry, keeping the others."""
  table = {}
  if os.path.exists(path):
    with open(path) as f:
      table = json.load(f)
  table[name] = {**{k: np.round(v, 6).tolist() for k, v in stats._asdict().items()}, **info}
  with open(path, "w") as f:
    json.dump(dict(sorted(table.items())), f, indent=2)
    f.write("\n")


# -------------------------------------------------------------------------- IDX files

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """One IDX file (LeCun's MNIST format), gzipped or not."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  zeros, code, ndim = raw[:2], raw[2], raw[3]
  if zeros != b"\0\0" or code not in IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file")
  shape = np.frombuffer(raw, ">i4", count=ndim, offset=4)
  data = np.frombuffer(raw, IDX_DTYPES[code], offset=4 + 4 * ndim)
  return data.reshape(shape).astype(IDX_DTYPES[code].replace(">", "="))


def fashion_mnist_dir(manual_dir: str = "") -> str:
  """The directory with the four IDX files, or a FileNotFoundError saying how to get them."""
  directory = manual_dir or FASHION_MNIST_DIR
  missing = [f for files in FASHION_MNIST_FILES.values() for f in files
             if not os.path.exists(os.path.join(directory, f))]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files missing from {directory}: {', '.join(missing)}. Install "
        f"them with `apt-get install dataset-fashion-mnist` (into {FASHION_MNIST_DIR}), or "
        "point data.manual_dir at a directory holding them.")
  return directory


def load_idx_numpy(manual_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Fashion-MNIST's split ("train" or "test") as uint8 images [N, 28, 28, 1], int32 labels."""
  directory = fashion_mnist_dir(manual_dir)
  image_file, label_file = FASHION_MNIST_FILES[split]
  images = read_idx(os.path.join(directory, image_file))[..., None]
  labels = read_idx(os.path.join(directory, label_file)).astype(np.int32)
  return images, labels


def load_numpy_split(cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The numpy backend's data: a split of Fashion-MNIST, the one dataset it reads."""
  if cfg.name != "fashion_mnist":
    raise ValueError(f"the numpy backend reads Fashion-MNIST's IDX files only, not "
                     f"{cfg.name!r}; use backend='tfds'")
  name, start, stop = parse_split(split)
  images, labels = load_idx_numpy(cfg.manual_dir, name)
  return images[start:stop], labels[start:stop]


# ----------------------------------------------------------------------------- splits


def parse_split(split: str) -> tuple[str, int | None, int | None]:
  """"test[:1003]" -> ("test", None, 1003): the split strings the numpy backend reads."""
  m = re.fullmatch(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?", split.strip())
  if not m:
    raise ValueError(f"the numpy backend reads 'name' or 'name[start:stop]', got {split!r}")
  name, start, stop = m.groups()
  return name, int(start) if start else None, int(stop) if stop else None


def shard(num_examples: int, index: int, count: int, drop_remainder: bool) -> range:
  """This process's slice of [0, num_examples), as `tfds.even_splits` cuts it: equal
  slices, the remainder dropped or given one each to the first processes."""
  per, extra = divmod(num_examples, count)
  start, stop = per * index, per * (index + 1)
  if not drop_remainder:
    start, stop = start + min(index, extra), stop + min(index + 1, extra)
  return range(start, stop)


def process_seed(seed: int, process_index: int) -> int:
  """Independent randomness for each process from one config seed."""
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0] >> 1)


def eval_steps(local_counts: Iterable[int], local_batch_size: int) -> int:
  """Batches every process runs so the largest shard fits; the others pad."""
  return max(1, math.ceil(max(local_counts) / local_batch_size))


# ------------------------------------------------------------------ JAX augmentation


def rescaled_hw(short_side: jax.Array, h: int, w: int) -> jax.Array:
  """[..., 2] height and width once the shortest side is `short_side`; the long side is
  truncated (300x500 at S=256 gives 256x426), as torchvision's Resize does."""
  s = jnp.asarray(short_side, jnp.int32)[..., None]
  return s * jnp.array([h, w], jnp.int32) // min(h, w)


def rescale_crop(images: jax.Array, short_side: jax.Array, offsets: jax.Array,
                 crop: int) -> jax.Array:
  """Rescales each image of [N, H, W, C] so its shortest side is short_side[i], then cuts
  the crop x crop window at offsets[i] = (y, x): one resampling per image with the kernel
  of tf.image.resize(bilinear, antialias=True), so both backends agree."""
  n, h, w, c = images.shape
  scale = rescaled_hw(short_side, h, w) / jnp.array([h, w], jnp.float32)

  def one(image, s, offset):
    return jax.image.scale_and_translate(
        image, (crop, crop, c), (0, 1), s, -offset.astype(jnp.float32), "linear",
        antialias=True)

  return jax.vmap(one)(images.astype(jnp.float32), scale, offsets)


def lighting(images: jax.Array, alpha: jax.Array, stats: Stats) -> jax.Array:
  """AlexNet's PCA colour shift: adds eigvec @ (alpha_i * eigval) to every pixel of image i."""
  shift = (alpha * jnp.asarray(stats.eigval)) @ jnp.asarray(stats.eigvec).T
  return images + shift[:, None, None, :]


@functools.partial(jax.jit, static_argnames=("scale", "crop", "flip", "pca_std"))
def augment_batch(keys: jax.Array, images: jax.Array, stats: Stats, *,
                  scale: tuple[int, int], crop: int, flip: bool, pca_std: float) -> jax.Array:
  """The training augmentation on a batch of same-sized images [N, H, W, C] (any dtype),
  one key per image: S ~ U{S_min..S_max}, random crop, flip, lighting, mean subtraction."""
  n, h, w, c = images.shape
  k_scale, k_crop, k_flip, k_alpha = jnp.moveaxis(jax.vmap(jax.random.split, (0, None))(
      keys, 4), 1, 0)
  short_side = jax.vmap(lambda k: jax.random.randint(k, (), scale[0], scale[1] + 1))(k_scale)
  offsets = jax.vmap(lambda k, hi: jax.random.randint(k, (2,), 0, hi))(
      k_crop, rescaled_hw(short_side, h, w) - crop + 1)
  x = rescale_crop(images, short_side, offsets, crop)
  if flip:
    flips = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(k_flip)
    x = jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)
  if pca_std:
    x = lighting(x, pca_std * jax.vmap(lambda k: jax.random.normal(k, (c,)))(k_alpha), stats)
  return x - jnp.asarray(stats.mean)


def eval_batch(images: jax.Array, stats: Stats, *, scale: int, crop: int) -> jax.Array:
  """Test-time preprocessing: shortest side to Q, centre crop, mean subtraction."""
  n, h, w, _ = images.shape
  short_side = jnp.full((n,), scale)
  offsets = (rescaled_hw(short_side, h, w) - crop) // 2
  return rescale_crop(images, short_side, offsets, crop) - jnp.asarray(stats.mean)


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
  """Centred zero padding of [N, H, W, C] up to size x size (no-op when already larger)."""
  h, w = images.shape[1:3]
  dy, dx = max(size - h, 0), max(size - w, 0)
  return np.pad(images, ((0, 0), (dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2), (0, 0)))


# ----------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class Pipeline:
  """Per-process batches plus what a trainer needs to know about them.

  iter_from(step): an iterator over the batches from `step` (0-based) on, the same batches
    an iterator from 0 yields there, so a resumed run sees the data it would have seen.
    Train: endless; eval: `steps - step` batches. `iter(pipeline)` is iter_from(0).
  num_examples: examples of the split over all processes (train: after dropping the
    remainder that does not divide between processes).
  steps: train: global steps per epoch (num_examples // global batch); eval: batches each
    process yields, padding included.
  """
  iter_from: Callable[[int], Iterator[dict[str, np.ndarray]]]
  num_examples: int
  steps: int
  local_batch_size: int
  image_shape: tuple[int, int, int]
  num_classes: int

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iter_from(0)


def make_pipeline(cfg: Any, *, train: bool, global_batch_size: int, seed: int = 0,
                  split: str | None = None, process_index: int | None = None,
                  process_count: int | None = None) -> Pipeline:
  """The one entry point: `cfg` is the `data` config (missing fields take the defaults),
  `split` overrides cfg.train_split / cfg.eval_split, the process arguments default to
  JAX's (pass them to simulate several processes). Same seed, same batches."""
  cfg = resolve_config(cfg)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} does not divide between "
                     f"{process_count} processes")
  args = dict(cfg=cfg, train=train, local_batch_size=global_batch_size // process_count,
              seed=seed,
              split=split or (cfg.train_split if train else cfg.eval_split),
              process_index=process_index, process_count=process_count)
  if cfg.backend == "numpy":
    return numpy_pipeline(**args)
  from vgg_jax import data_tf  # TensorFlow only for this backend
  return data_tf.tfds_pipeline(**args)


def eval_crop(cfg) -> int:
  return cfg.eval_crop or cfg.eval_scale


def numpy_pipeline(*, cfg, train, local_batch_size, seed, split, process_index,
                   process_count) -> Pipeline:
  """Fashion-MNIST from IDX files, augmented in JAX on the CPU (the accelerator stays
  free for the model). Training batches are cut from one global stream that does not
  depend on the number of processes: every process reads the whole (small) split and
  keeps its slice of each global batch, so 1 and N processes train on the same data."""
  images, labels = load_numpy_split(cfg, split)
  stats = Stats(*on_cpu(*load_stats(cfg.stats or cfg.name)))
  if train:
    global_batch = local_batch_size * process_count
    side, steps = cfg.crop, len(labels) // global_batch
    augment = functools.partial(augment_batch, stats=stats, scale=scale_range(cfg.scale),
                                crop=side, flip=bool(cfg.flip), pca_std=float(cfg.pca_std))
    mine = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)
    batches = numpy_train_batches(pad_images(images, cfg.pad_to), labels, augment,
                                  global_batch, mine, seed)
    return Pipeline(batches, len(labels), steps, local_batch_size,
                    (side, side, images.shape[-1]), len(FASHION_MNIST_CLASSES))
  shards = [shard(len(labels), i, process_count, drop_remainder=False)
            for i in range(process_count)]
  local = shards[process_index]
  side, steps = eval_crop(cfg), eval_steps(map(len, shards), local_batch_size)
  preprocess = functools.partial(eval_batch, stats=stats, scale=cfg.eval_scale, crop=side)
  batches = numpy_eval_batches(pad_images(images[local.start:local.stop], cfg.pad_to),
                               labels[local.start:local.stop], preprocess,
                               local_batch_size, steps)
  return Pipeline(batches, len(labels), steps, local_batch_size,
                  (side, side, images.shape[-1]), len(FASHION_MNIST_CLASSES))


def on_cpu(*arrays):
  cpu = jax.local_devices(backend="cpu")[0]
  return [jax.device_put(a, cpu) for a in arrays]


def numpy_train_batches(images, labels, augment, global_batch, mine: slice,
                        seed) -> Callable[[int], Iterator]:
  """Epochs of whole global batches, each epoch a permutation seeded by its number, so
  any step can start the stream; each example's augmentation key is the step's key split
  by its position in the global batch. This process yields the `mine` slice."""
  per_epoch = len(labels) // global_batch
  if not per_epoch:
    raise ValueError(f"{len(labels)} training examples < global batch {global_batch}")
  key, = on_cpu(jax.random.key(seed))

  @functools.lru_cache(maxsize=1)
  def order(epoch):
    return np.random.default_rng([seed, epoch]).permutation(len(labels))

  def batches(start):
    for step in itertools.count(start):
      epoch, k = divmod(step, per_epoch)
      idx = order(epoch)[k * global_batch:][:global_batch][mine]
      keys = jax.random.split(jax.random.fold_in(key, step), global_batch)[mine]
      image, = on_cpu(images[idx])
      yield {"image": np.asarray(augment(keys, image)), "label": labels[idx],
             "mask": np.ones(len(idx), bool)}

  return batches


def numpy_eval_batches(images, labels, preprocess, batch, steps) -> Callable[[int], Iterator]:
  """Preprocesses the shard once, then pads it to `steps` batches with masked zeros."""
  shape = jax.eval_shape(preprocess, jax.ShapeDtypeStruct((batch,) + images.shape[1:],
                                                          images.dtype)).shape[1:]
  image = np.zeros((steps * batch,) + shape, np.float32)
  for i in range(0, len(labels), batch):
    chunk = images[i:i + batch]
    image[i:i + len(chunk)] = np.asarray(preprocess(*on_cpu(chunk)))
  label = np.zeros(steps * batch, np.int32)
  label[:len(labels)] = labels
  mask = np.arange(steps * batch) < len(labels)

  def batches(start):
    for s in range(start * batch, steps * batch, batch):
      yield {"image": image[s:s + batch], "label": label[s:s + batch], "mask": mask[s:s + batch]}

  return batches


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
  """Per-process batches -> global arrays laid out by `sharding` (leading axis split over
  the data-parallel devices); on one process this is a device_put."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


# ---------------------------------------------------------------------------------- CLI


def stats_command(args):
  """Computes one dataset's training-set statistics and writes them to the stats file."""
  cfg = default_config(name=args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                       train_split=args.split)
  if args.backend == "numpy":
    images, _ = load_numpy_split(cfg, cfg.train_split)
    chunks = (pixel_moments(images[i:i + 4096]) for i in range(0, len(images), 4096))
  else:
    from vgg_jax import data_tf
    chunks = data_tf.pixel_moment_chunks(cfg)
  stats = compute_stats(chunks)
  info = dict(computed=True, split=cfg.train_split, units="mean in 0-255 pixels; eigval = "
              "covariance eigenvalues of [0, 1] pixels x 255 (the AlexNet convention); "
              "eigvec columns are the principal axes",
              command=STATS_COMMAND.format(name=args.dataset))
  write_stats(args.dataset, stats, info, args.out)
  print(json.dumps({k: np.round(v, 4).tolist() for k, v in stats._asdict().items()}))


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m vgg_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  stats = sub.add_parser("stats", help="per-channel mean and covariance eigen decomposition "
                         "of the training set, into the stats file")
  stats.add_argument("--dataset", required=True)
  stats.add_argument("--split", default="train")
  stats.add_argument("--backend", choices=("tfds", "numpy"), default="tfds")
  stats.add_argument("--data_dir", default="")
  stats.add_argument("--manual_dir", default="")
  stats.add_argument("--out", default=STATS_PATH)
  stats.set_defaults(run=stats_command)
  args = parser.parse_args(argv)
  args.run(args)


if __name__ == "__main__":
  main()
