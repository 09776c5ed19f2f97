"""The "tfds" backend of `vgg_jax.data`: tf.data ops, the local Fashion-MNIST builder, and
the per-process pipelines. Importing this module imports TensorFlow; no other module of
vgg_jax does (the dispatch in `vgg_jax.data` imports it only for backend "tfds").

Each op takes an image [H, W, C] and works eagerly and inside `Dataset.map`; flip, lighting
and mean subtraction also take batches [N, H, W, C] (one draw per image), so the pipeline
runs them once per batch. Randomness is stateless: an op takes a shape-[2] int seed, and
the pipeline derives one per example (and per batch) from the config seed and its position
in the stream, so the same seed gives the same batches.
"""

import functools
import itertools

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vgg_jax.data import core

AUTOTUNE = tf.data.AUTOTUNE


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST read from the IDX files of Debian's dataset-fashion-mnist (no download).

  The files are its manual_dir: pass `DownloadConfig(manual_dir=...)`, as for imagenet2012.
  Features match tfds' own fashion_mnist, so `data.name = "fashion_mnist"` resolves here.
  """

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f"`apt-get install dataset-fashion-mnist` puts the IDX files in {core.FASHION_MNIST_DIR}."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(names=core.FASHION_MNIST_CLASSES),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,  # record i is IDX example i, as in the numpy backend
      homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    return {
      split: self._generate_examples(dl_manager.manual_dir, split)
      for split in core.FASHION_MNIST_FILES
    }

  def _generate_examples(self, manual_dir, split):
    images, labels = core.load_idx_numpy(str(manual_dir), split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


# Config names served by a local builder instead of tfds' downloading one.
LOCAL_BUILDERS = {"fashion_mnist": "fashion_mnist_local"}


def prepared_builder(cfg) -> tfds.core.DatasetBuilder:
  """The dataset's builder, prepared in cfg.data_dir; says what is missing when it can't be."""
  name = LOCAL_BUILDERS.get(cfg.name, cfg.name)
  builder = tfds.builder(name, data_dir=cfg.data_dir or None)
  if cfg.manual_dir and builder.is_prepared():
    from vgg_jax.config import ConfigError  # pylint: disable=import-outside-toplevel

    raise ConfigError(
      f"config: data.manual_dir {cfg.manual_dir} would not be read: {name} is already "
      f"prepared in {builder.data_dir}, which tfds reads instead; drop data.manual_dir, "
      "or give data.data_dir an empty directory to build it there from manual_dir"
    )
  manual_dir = cfg.manual_dir or None
  if name == "fashion_mnist_local" and not builder.is_prepared():
    manual_dir = core.fashion_mnist_dir(cfg.manual_dir)
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
  except Exception as e:  # tfds raises many kinds; all mean "not there, can't fetch"
    how = (
      builder.MANUAL_DOWNLOAD_INSTRUCTIONS
      or f"tfds downloads it; offline, run `tfds build {name} --data_dir DIR` where there "
      "is internet and copy DIR to data.data_dir"
    )
    raise RuntimeError(
      f"tfds could not prepare {name} in {builder.data_dir}: {e}\n"
      f"To get {name}: {how} (manual files go in data.manual_dir)."
    ) from e
  return builder


# ------------------------------------------------------------------------------------ ops


def pad_to(image: tf.Tensor, size: int) -> tf.Tensor:
  """Centred zero padding up to size x size (no-op when already as large, or size 0)."""
  hw = tf.shape(image)[-3:-1]
  pad = tf.maximum(size - hw, 0)
  return tf.pad(
    image, [[pad[0] // 2, pad[0] - pad[0] // 2], [pad[1] // 2, pad[1] - pad[1] // 2], [0, 0]]
  )


def sample_scale(scale, seed: tf.Tensor) -> tf.Tensor:
  """S: fixed, or uniform over the integers S_min..S_max (both included)."""
  lo, hi = core.scale_range(scale)
  return tf.random.stateless_uniform([], seed, lo, hi + 1, dtype=tf.int32)


def rescale(image: tf.Tensor, short_side) -> tf.Tensor:
  """Isotropic bilinear rescale so the shortest side is `short_side` (float32 out), the long
  side truncated as in `core.rescaled_shape`; antialiased when shrinking, as
  `augment.resample`: this backend's one resampling rule."""
  hw = tf.shape(image)[-3:-1]
  new_hw = hw * tf.cast(short_side, tf.int32) // tf.reduce_min(hw)
  # Antialiasing changes nothing when enlarging and is 5x slower, so only when shrinking.
  return tf.cond(
    tf.reduce_any(new_hw < hw),
    lambda: tf.image.resize(image, new_hw, "bilinear", antialias=True),
    lambda: tf.image.resize(image, new_hw, "bilinear"),
  )


def random_crop(image: tf.Tensor, crop: int, seed: tf.Tensor) -> tf.Tensor:
  return tf.image.stateless_random_crop(image, [crop, crop, tf.shape(image)[-1]], seed)


def centre_crop(image: tf.Tensor, crop: int) -> tf.Tensor:
  """The central crop x crop window; offsets round down as in `augment.eval_batch`."""
  hw = tf.shape(image)[-3:-1]
  top, left = tf.unstack((hw - crop) // 2)
  return tf.image.crop_to_bounding_box(image, top, left, crop, crop)


def random_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Horizontal flip of each image with probability 1/2."""
  flip = tf.random.stateless_uniform(tf.shape(images)[:-3], seed) < 0.5
  return tf.where(flip[..., None, None, None], tf.reverse(images, [-2]), images)


def lighting(images: tf.Tensor, alpha: tf.Tensor, stats: core.Stats) -> tf.Tensor:
  """AlexNet's PCA colour shift: adds eigvec @ (alpha * eigval) to every pixel; alpha is
  [..., C] with the images' leading shape."""
  shift = tf.linalg.matvec(stats.eigvec, alpha * stats.eigval)
  return images + shift[..., None, None, :]


def random_lighting(images: tf.Tensor, std: float, stats: core.Stats, seed: tf.Tensor) -> tf.Tensor:
  """`lighting` with alpha_i ~ N(0, std) drawn per image."""
  shape = tf.concat([tf.shape(images)[:-3], [len(stats.eigval)]], 0)
  return lighting(images, tf.random.stateless_normal(shape, seed, stddev=std), stats)


def subtract_mean(images: tf.Tensor, mean) -> tf.Tensor:
  return tf.cast(images, tf.float32) - mean


# ------------------------------------------------------------------------------ pipeline


def pipeline(
  *, cfg, train, local_batch_size, seed, split, process_index, process_count, sharding=None
) -> core.Pipeline:
  """See `data.make_pipeline` (`sharding` is not needed: batches are per process): this
  process's share of the split via
  `tfds.split_for_jax_process`, dropping the remainder in training only. Each process
  shuffles and augments its shard with its own seed drawn from the config's."""
  del sharding
  seed = core.process_seed(seed, process_index)
  builder = prepared_builder(cfg)
  stats = core.Stats(*(tf.constant(a) for a in core.load_stats(cfg.stats or cfg.name)))
  read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
  # Ordered datasets (the local Fashion-MNIST) refuse file shuffling; the buffer still shuffles.
  shuffle_files = train and not builder.info.disable_shuffling
  shards = [
    builder.as_dataset(
      split=tfds.split_for_jax_process(
        split, process_index=i, process_count=process_count, drop_remainder=train
      ),
      shuffle_files=shuffle_files,
      read_config=read_config,
    )
    for i in range(process_count)
  ]
  counts = [int(ds.cardinality()) for ds in shards]
  ds = shards[process_index].map(
    lambda ex: {"image": pad_to(ex["image"], cfg.pad_to), "label": tf.cast(ex["label"], tf.int32)},
    num_parallel_calls=AUTOTUNE,
  )
  if train:
    side = cfg.crop
    steps = sum(counts) // (local_batch_size * process_count)
    if cfg.cache:
      ds = ds.cache()
    make = functools.partial(
      train_batches, ds, cfg, stats, local_batch_size, seed, counts[process_index]
    )
  else:
    side, steps = core.eval_crop(cfg), core.eval_steps(counts, local_batch_size)
    ds = eval_batches(ds, cfg, stats, local_batch_size, steps, counts[process_index])
    make = ds.skip
  features = builder.info.features
  return core.Pipeline(
    lambda start: make(start).prefetch(AUTOTUNE).as_numpy_iterator(),
    sum(counts),
    steps,
    local_batch_size,
    (side, side, features["image"].shape[-1]),
    features["label"].num_classes,
  )


def stream_seed(seed: int, stream: int, index: tf.Tensor) -> tf.Tensor:
  """The stateless seed of the index-th element of one random stream."""
  return tf.random.experimental.stateless_fold_in(tf.constant([seed, stream], tf.int64), index)


def train_image(image: tf.Tensor, cfg, seed: tf.Tensor) -> tf.Tensor:
  """The per-image half of training augmentation: rescale to S, random crop."""
  s_scale, s_crop = tf.unstack(tf.random.split(seed, 2))
  return random_crop(rescale(image, sample_scale(cfg.scale, s_scale)), cfg.crop, s_crop)


def train_batch(images: tf.Tensor, cfg, stats: core.Stats, seed: tf.Tensor) -> tf.Tensor:
  """The per-batch half: flip, lighting, mean subtraction."""
  s_flip, s_light = tf.unstack(tf.random.split(seed, 2))
  if cfg.flip:
    images = random_flip(images, s_flip)
  if cfg.pca_std:
    images = random_lighting(images, cfg.pca_std, stats, s_light)
  return subtract_mean(images, stats.mean)


def train_batches(ds, cfg, stats, batch, seed, num_examples, start_step) -> tf.data.Dataset:
  """Endless training batches from `start_step` on, the same as if run from step 0.

  The stream is the epochs' examples one after another, each epoch shuffled with its own
  seed, so a restart jumps to its epoch and skips into it without augmenting what it skips.
  Each image is rescaled and cropped alone (sizes differ before the crop), then whole
  batches are flipped, lit and centred.
  """
  first_epoch, offset = divmod(start_step * batch, num_examples)

  def epoch(e):
    shuffled = ds.shuffle(cfg.shuffle_buffer, seed=stream_seed(seed, 2, e)[0])
    return shuffled.enumerate(start=e * num_examples)

  ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch).skip(offset)
  ds = ds.map(
    lambda i, ex: {**ex, "image": train_image(ex["image"], cfg, stream_seed(seed, 0, i))},
    num_parallel_calls=AUTOTUNE,
  )
  ds = ds.batch(batch, drop_remainder=True).enumerate(start=start_step)
  return ds.map(
    lambda i, ex: {
      **ex,
      "mask": tf.ones([batch], tf.bool),
      "image": train_batch(ex["image"], cfg, stats, stream_seed(seed, 1, i)),
    },
    num_parallel_calls=AUTOTUNE,
  )


def eval_batches(ds, cfg, stats, batch, steps, count) -> tf.data.Dataset:
  """Rescale to Q, centre crop, centre; then masked zero examples fill `steps` batches."""
  crop = core.eval_crop(cfg)

  def preprocess(ex):
    image = centre_crop(rescale(ex["image"], cfg.eval_scale), crop)
    return {
      "image": subtract_mean(image, stats.mean),
      "label": ex["label"],
      "mask": tf.constant(True),
    }

  ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
  if cfg.cache:
    ds = ds.cache()
  filler = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(steps * batch - count))
  return ds.batch(batch, drop_remainder=True)


def pixel_moment_chunks(cfg):
  """`core.compute_stats` input over the training split: per-image sums in TF, float64."""
  builder = prepared_builder(cfg)
  channels = builder.info.features["image"].shape[-1]

  def moments(ex):
    x = tf.reshape(tf.cast(ex["image"], tf.float64), [-1, channels])
    return tf.reduce_sum(x, 0), tf.matmul(x, x, transpose_a=True), tf.shape(x)[0]

  ds = builder.as_dataset(split=cfg.train_split).map(moments, num_parallel_calls=AUTOTUNE)
  for s, g, n in ds.batch(1024).prefetch(AUTOTUNE).as_numpy_iterator():
    yield s.sum(0), g.sum(0), int(np.sum(n))


def read_split(cfg, split, process_index, process_count, chunk):
  """See `data.read_split`: the examples of `tfds.split_for_jax_process`, as read."""
  examples = (
    prepared_builder(cfg)
    .as_dataset(
      split=tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=False
      )
    )
    .as_numpy_iterator()
  )
  while part := list(itertools.islice(examples, chunk)):
    yield [ex["image"] for ex in part], np.array([ex["label"] for ex in part], np.int32)


def rescale_images(cfg, images: np.ndarray, short_side: int) -> np.ndarray:
  """See `data.rescale_images`: `rescale` in TensorFlow (ImageNet's thousands of image sizes
  would each compile a JAX resize)."""
  return rescale(images, short_side).numpy() - core.load_stats(cfg.stats or cfg.name).mean
