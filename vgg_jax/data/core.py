"""The data interface's vocabulary, shared by every backend and importing none: the data
config's schema (`DEFAULTS`, `default_config`, `resolve_config`), the scale S, splits and
their division between processes, Fashion-MNIST's IDX files, per-channel statistics, the
`Pipeline` every backend returns, and `to_global`.
"""

import dataclasses
import functools
import gzip
import json
import math
import os
import re
import zlib
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import ml_collections
import numpy as np

from vgg_jax import paths
from vgg_jax.scale import Scale

BACKENDS = ("tfds", "numpy", "device")

# (train images, classes, channels) of the data sets known without reading them: for a
# sweep's forecast and for compiling a run's steps with no data at hand (`tpu_compile`).
DATASET_SIZES = {
  "imagenet2012": (1_281_167, 1000, 3),
  "fashion_mnist": (60_000, 10, 1),
  "cifar10": (50_000, 10, 3),
  "cifar100": (50_000, 100, 3),
  "imagenette": (9_469, 10, 3),
}
STATS_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data_stats.json")
STATS_COMMAND = "python -m vgg_jax.data stats --dataset {name}"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)

# The trainer's `config.data`; every field is documented in `default_config`.
DEFAULTS = dict(
  name="imagenet2012",
  data_dir="",
  manual_dir="",
  backend="tfds",
  train_split="train",
  eval_split="validation",
  scale=256,
  crop=224,
  eval_scale=256,
  eval_crop=0,
  pad_to=0,
  flip=True,
  pca_std=0.1,
  shuffle_buffer=16_384,
  cache=False,
  stats="",
)


def default_config(**overrides) -> ml_collections.ConfigDict:
  """The `data` block of a trainer config, with the paper's ImageNet recipe as defaults.

  name: tfds dataset name (imagenet2012, cifar10, cifar100, imagenette, fashion_mnist).
  data_dir: where tfds prepares datasets ("" = tfds' default, ~/tensorflow_datasets).
  manual_dir: the raw files: Fashion-MNIST's IDX files ("" = the Debian package's
    /usr/share/datasets/fashion-mnist), imagenet2012's ILSVRC2012 tars ("" = tfds'
    <data_dir>/downloads/manual).
  backend: "tfds" (tf.data), "numpy" (NumPy + JAX on the host, no TensorFlow;
    Fashion-MNIST only) or "device" (the split held on the accelerators as uint8, each
    batch gathered and augmented inside jit; Fashion-MNIST, no TensorFlow).
  train_split / eval_split: tfds split strings; the numpy and device backends accept
    "name" and "name[start:stop]" with absolute indices.
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
  if resolved.backend not in BACKENDS:
    raise ValueError(f"data.backend must be one of {', '.join(BACKENDS)}, got {resolved.backend!r}")
  if resolved.crop > scale_range(resolved.scale)[0] or eval_crop(resolved) > resolved.eval_scale:
    raise ValueError(
      f"crops must fit the rescaled images: crop {resolved.crop} <= S_min of "
      f"{resolved.scale}, eval_crop {resolved.eval_crop} <= eval_scale "
      f"{resolved.eval_scale}"
    )
  return resolved


def eval_crop(cfg) -> int:
  return cfg.eval_crop or cfg.eval_scale


def scale_range(scale) -> tuple[int, int]:
  """S as (S_min, S_max); a fixed S is (S, S)."""
  return tuple(Scale.of(scale))


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

  @property
  def pixel_std(self) -> float:
    """The mean-subtracted pixels' standard deviation in 0-255 units over all channels:
    the covariance's trace is sum(eigval) * 255 (see above), shared by C channels."""
    return float(np.sqrt(np.sum(self.eigval, dtype=np.float64) * 255 / len(self.mean)))


def load_stats(name: str, path: str = STATS_PATH) -> Stats:
  table = json.loads(paths.Path(path).read_text())
  if name not in table:
    raise KeyError(
      f"no statistics for {name!r} in {path}; compute them with `{STATS_COMMAND.format(name=name)}`"
    )
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
  table = json.loads(paths.Path(path).read_text()) if paths.Path(path).exists() else {}
  table[name] = {**{k: np.round(v, 6).tolist() for k, v in stats._asdict().items()}, **info}
  paths.write_text(path, json.dumps(dict(sorted(table.items())), indent=2) + "\n")


# -------------------------------------------------------------------------- IDX files

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """One IDX file (LeCun's MNIST format), gzipped or not; paths.BadFile naming it when
  it is cut short or not IDX at all."""
  raw = paths.Path(path).read_bytes()
  if path.endswith(".gz"):
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise paths.BadFile(path, f"not a complete gzip file ({e})") from e
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES:
    raise paths.BadFile(path, "not an IDX file")
  dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
  shape = np.frombuffer(raw[: 4 + 4 * ndim].ljust(4 + 4 * ndim, b"\0"), ">i4", offset=4)
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - 4 - 4 * ndim != expected:
    raise paths.BadFile(
      path,
      f"an IDX file cut short: {len(raw) - 4 - 4 * ndim} bytes of data where its header "
      f"announces {tuple(int(n) for n in shape)} ({expected} bytes)",
    )
  data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
  return data.reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(manual_dir: str = "") -> str:
  """The directory with the four IDX files, or a FileNotFoundError saying how to get them."""
  directory = manual_dir or FASHION_MNIST_DIR
  missing = [
    f
    for files in FASHION_MNIST_FILES.values()
    for f in files
    if not paths.Path(directory, f).exists()
  ]
  if missing:
    raise FileNotFoundError(
      f"Fashion-MNIST IDX files missing from {directory}: {', '.join(missing)}. Install "
      f"them with `apt-get install dataset-fashion-mnist` (into {FASHION_MNIST_DIR}), or "
      "point data.manual_dir at a directory holding them."
    )
  return directory


def load_idx_numpy(manual_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Fashion-MNIST's split ("train" or "test") as uint8 images [N, 28, 28, 1], int32 labels,
  read-only: parsed once per process while the files are unchanged, as a sweep's runs
  and their evaluations read the same split many times (a gzip inflate each)."""
  directory = fashion_mnist_dir(manual_dir)
  files = tuple(paths.join(directory, f) for f in FASHION_MNIST_FILES[split])
  return parsed_idx_pair(files, tuple(file_stamp(f) for f in files))


@functools.lru_cache(maxsize=4)
def parsed_idx_pair(files: tuple[str, str], stamps: tuple) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, H, W, 1], int32 labels) of an IDX pair; `stamps` keys the cache."""
  del stamps
  images = read_idx(files[0])[..., None]
  labels = read_idx(files[1]).astype(np.int32)
  for array in (images, labels):
    array.flags.writeable = False
  return images, labels


def file_stamp(path: str) -> tuple:
  """(modification time, size) of a file, local or in a bucket: a changed file is read again."""
  stat = paths.Path(path).stat()
  return stat.mtime, stat.length


def load_idx_split(cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A split of Fashion-MNIST, the one dataset the numpy and device backends read."""
  if cfg.name != "fashion_mnist":
    raise ValueError(
      f"the {cfg.backend} backend reads Fashion-MNIST's IDX files only, not "
      f"{cfg.name!r}; use backend='tfds'"
    )
  name, start, stop = parse_split(split)
  images, labels = load_idx_numpy(cfg.manual_dir, name)
  return images[start:stop], labels[start:stop]


def read_idx_chunks(
  cfg, split: str, process_index: int, process_count: int, chunk: int
) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
  """`data.read_split` for the IDX files: this process's `shard`, sliced into chunks."""
  images, labels = load_idx_split(cfg, split)
  mine = shard(len(labels), process_index, process_count, drop_remainder=False)
  for start in range(mine.start, mine.stop, chunk):
    stop = min(start + chunk, mine.stop)
    yield list(images[start:stop]), labels[start:stop]


def idx_pixel_moments(cfg) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
  """`compute_stats` input over the IDX files' training split."""
  images, _ = load_idx_split(cfg, cfg.train_split)
  return (pixel_moments(images[i : i + 4096]) for i in range(0, len(images), 4096))


# ----------------------------------------------------------------------------- splits


def parse_split(split: str) -> tuple[str, int | None, int | None]:
  """ "test[:1003]" -> ("test", None, 1003): the split strings the IDX reader takes."""
  m = re.fullmatch(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?", split.strip())
  if not m:
    raise ValueError(f"IDX splits are 'name' or 'name[start:stop]', got {split!r}")
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


def train_order(num_examples: int, global_batch: int, seed: int) -> Callable[[int], np.ndarray]:
  """step -> the global batch's example indices: epochs of whole global batches, each
  epoch a permutation seeded by its number, so any step can start the stream and the
  stream does not depend on the number of processes or devices."""
  per_epoch = num_examples // global_batch
  if not per_epoch:
    raise ValueError(f"{num_examples} training examples < global batch {global_batch}")

  @functools.lru_cache(maxsize=1)
  def order(epoch):
    return np.random.default_rng([seed, epoch]).permutation(num_examples)

  def indices(step):
    epoch, k = divmod(step, per_epoch)
    return order(epoch)[k * global_batch :][:global_batch]

  return indices


# ------------------------------------------------------------------------- images


def rescaled_shape(height, width, short_side):
  """(height, width) once the shortest side is `short_side`, the long side truncated
  (300x500 at S=256 gives 256x426), as torchvision's Resize does; ints or arrays."""
  return short_side * height // min(height, width), short_side * width // min(height, width)


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
  """Centred zero padding of [N, H, W, C] up to size x size (no-op when already larger)."""
  h, w = images.shape[1:3]
  dy, dx = max(size - h, 0), max(size - w, 0)
  return np.pad(images, ((0, 0), (dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2), (0, 0)))


# ----------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class Pipeline:
  """Batches plus what a trainer needs to know about them.

  iter_from(step): an iterator over the batches from `step` (0-based) on, the same batches
    an iterator from 0 yields there, so a resumed run sees the data it would have seen.
    Train: endless; eval: `steps - step` batches. `iter(pipeline)` is iter_from(0).
    A batch is a dict of this process's NumPy arrays (tfds, numpy) or of global
    `jax.Array`s already on the batch sharding (device); `to_global` takes both.
  num_examples: examples of the split over all processes (train: after dropping the
    remainder that does not divide between processes).
  steps: train: global steps per epoch (num_examples // global batch); eval: batches each
    process yields, padding included.
  prefetch: batches a host thread may prepare ahead of the loop (`train.prefetch`); 0
    where making a batch only dispatches device work, which must stay in the loop's
    order: its collectives must be issued in the same order on every process.
  """

  iter_from: Callable[[int], Iterator[dict[str, Any]]]
  num_examples: int
  steps: int
  local_batch_size: int
  image_shape: tuple[int, int, int]
  num_classes: int
  prefetch: int = 2

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self.iter_from(0)


def to_global(batch: dict[str, Any], sharding: jax.sharding.Sharding) -> dict:
  """Per-process batches -> global arrays laid out by `sharding` (leading axis split over
  the data-parallel devices); on one process this is a device_put. Global arrays (the
  device backend's) pass through, moved only if laid out otherwise."""

  def one(x):
    if isinstance(x, jax.Array):
      return x if x.sharding == sharding else jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(one, batch)
