"""The input pipeline: each tf.data op eagerly and inside Dataset.map, the JAX path against
the TF one, tfds' mocked imagenet2012, and the real Fashion-MNIST from the Debian files."""

import functools
import gzip
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import HAS_FASHION_MNIST, NO_FASHION_MNIST, needs_fashion_mnist
from vgg_jax import data
from vgg_jax import sharding as sharding_lib
from vgg_jax.data import device_backend
from vgg_jax.data import tfds_backend as data_tf


def in_dataset(fn, *tensors):
  """Runs `fn` inside tf.data's graph mode, the way the pipeline does."""
  ds = tf.data.Dataset.from_tensors(tuple(tensors)).map(fn)
  return next(iter(ds.as_numpy_iterator()))


def both_modes(fn, *tensors):
  """fn's result eagerly and inside Dataset.map, which must agree."""
  eager, graph = np.asarray(fn(*tensors)), in_dataset(fn, *tensors)
  np.testing.assert_array_equal(eager, graph)
  return eager


def seed(i):
  return tf.stack([tf.constant(7, tf.int64), tf.cast(i, tf.int64)])


def position_image(h, w):
  """Pixel (y, x) holds (y, x, y + x): a crop shows where it came from."""
  y, x = np.mgrid[:h, :w]
  return np.stack([y, x, y + x], -1).astype(np.float32)


ROTATION = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].astype(np.float32)
STATS3 = data.Stats(np.float32([100, 110, 120]), np.float32([3, 2, 1]), ROTATION)


# ----------------------------------------------------------------------------- tf ops


@pytest.mark.parametrize(
  "h, w, s, expected",
  [
    (300, 500, 256, (256, 426)),
    (500, 300, 256, (426, 256)),
    (333, 333, 224, (224, 224)),
    (28, 37, 32, (32, 42)),
    (301, 257, 384, (449, 384)),
  ],
)
def test_rescale_sets_shortest_side_and_keeps_aspect(h, w, s, expected):
  image = tf.zeros([h, w, 3], tf.uint8)
  out = both_modes(lambda x: data_tf.rescale(x, s), image)
  assert out.shape == expected + (3,) and out.dtype == np.float32
  np.testing.assert_array_equal(data.rescaled_hw(s, h, w), expected)
  assert abs(max(expected) / min(expected) - max(h, w) / min(h, w)) < 1 / min(expected)


def test_jittered_scale_is_uniform_over_the_range():
  lo, hi = 256, 512
  ds = tf.data.Dataset.range(3000).map(
    lambda i: data_tf.sample_scale((lo, hi), tf.stack([tf.constant(3, tf.int64), i]))
  )
  s = np.fromiter(ds.as_numpy_iterator(), int)
  assert lo <= s.min() <= lo + 5 and hi - 5 <= s.max() <= hi
  assert abs(s.mean() - (lo + hi) / 2) < 6  # standard error 1.4
  assert abs(s.std() - (hi - lo + 1) / np.sqrt(12)) < 4
  assert int(data_tf.sample_scale(384, seed(0))) == 384
  assert lo <= int(data_tf.sample_scale((lo, hi), seed(1))) <= hi


def test_random_crop_is_an_in_bounds_window():
  image = tf.constant(position_image(256, 300))
  offsets = set()
  for i in range(20):
    crop = both_modes(lambda x: data_tf.random_crop(x, 224, seed(i)), image)
    assert crop.shape == (224, 224, 3)
    y, x = int(crop[0, 0, 0]), int(crop[0, 0, 1])
    np.testing.assert_array_equal(crop, image.numpy()[y : y + 224, x : x + 224])
    offsets.add((y, x))
  assert len(offsets) > 15


def test_centre_crop_rounds_offsets_down():
  image = tf.constant(position_image(257, 300))
  crop = both_modes(lambda x: data_tf.centre_crop(x, 224), image)
  assert crop.shape == (224, 224, 3) and tuple(crop[0, 0, :2]) == (16, 38)


def test_flip_mirrors_each_image_independently():
  images = tf.constant(np.stack([position_image(4, 5)] * 64))
  out = both_modes(lambda x: data_tf.random_flip(x, seed(0)), images)
  mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images.numpy())])
  same = np.array([np.array_equal(o, i) for o, i in zip(out, images.numpy())])
  assert np.all(mirrored ^ same) and 16 < mirrored.sum() < 48
  single = [both_modes(lambda x: data_tf.random_flip(x, seed(i)), images[0]) for i in range(10)]
  assert {int(s[0, 0, 1]) for s in single} == {0, 4}


def test_lighting_adds_the_pca_vector_for_a_fixed_alpha():
  images = tf.zeros([2, 3, 4, 3])
  alpha = np.float32([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0]])
  expected = STATS3.eigvec @ (alpha[0] * STATS3.eigval)
  out = both_modes(lambda x, a: data_tf.lighting(x, a, STATS3), images, tf.constant(alpha))
  np.testing.assert_allclose(out[0], np.broadcast_to(expected, (3, 4, 3)), atol=1e-6)
  np.testing.assert_array_equal(out[1], 0)
  jax_out = data.lighting(np.zeros((2, 3, 4, 3), np.float32), alpha, STATS3)
  np.testing.assert_allclose(jax_out, out, atol=1e-6)


@pytest.mark.parametrize(
  "stats",
  [STATS3, data.Stats(np.float32([70]), np.float32([90]), np.float32([[1]]))],
  ids=["rgb", "gray"],
)
def test_random_lighting_draws_alpha_with_the_given_std(stats):
  c = len(stats.eigval)
  images = tf.zeros([4000, 1, 1, c])
  shift = both_modes(lambda x: data_tf.random_lighting(x, 0.1, stats, seed(0)), images)[:, 0, 0]
  alpha = shift @ stats.eigvec / stats.eigval  # eigvec is orthogonal
  np.testing.assert_allclose(alpha.std(0), 0.1, rtol=0.06)
  np.testing.assert_allclose(alpha.mean(0), 0, atol=0.006)


def test_subtract_mean():
  image = tf.fill([2, 2, 3], tf.constant(200, tf.uint8))
  out = both_modes(lambda x: data_tf.subtract_mean(x, STATS3.mean), image)
  np.testing.assert_array_equal(out, np.broadcast_to([100, 90, 80], (2, 2, 3)))


def test_pad_to_centres_the_image():
  image = tf.ones([28, 28, 1], tf.uint8)
  out = both_modes(lambda x: data_tf.pad_to(x, 32), image)
  assert out.shape == (32, 32, 1) and out.sum() == 28 * 28 and out[2:30, 2:30].all()
  np.testing.assert_array_equal(data.pad_images(image.numpy()[None], 32)[0], out)
  assert data_tf.pad_to(tf.ones([40, 30, 3]), 32).shape == (40, 32, 3)


# ------------------------------------------------------------------------- JAX vs TF


@pytest.mark.parametrize(
  "hw, s, offset, crop",
  [((37, 53), 45, (3, 11), 40), ((32, 32), 32, (0, 0), 32), ((300, 200), 150, (40, 9), 128)],
)
def test_jax_rescale_crop_matches_tf(hw, s, offset, crop):
  image = np.random.default_rng(1).integers(0, 256, hw + (3,)).astype(np.uint8)
  tf_out = data_tf.rescale(image, s)[offset[0] : offset[0] + crop, offset[1] : offset[1] + crop]
  jax_out = data.rescale_crop(image[None], np.int32([s]), np.int32([offset]), crop)[0]
  np.testing.assert_allclose(jax_out, tf_out, atol=1e-2)  # float32 sums on 0-255 values


def test_jax_augment_batch_draws_in_range():
  images = np.stack([position_image(32, 32)] * 256)
  stats = data.Stats(np.zeros(3, np.float32), np.zeros(3, np.float32), np.eye(3, dtype=np.float32))
  keys = jax.random.split(jax.random.key(0), 256)
  out = np.asarray(
    data.augment_batch(keys, images, stats, scale=(32, 32), crop=24, flip=True, pca_std=0.0)
  )
  assert out.shape == (256, 24, 24, 3)
  top = np.round(out[:, 0, 0, 0])
  left = np.round(out[:, 0, [0, -1], 1].min(1))  # the window's left edge, flipped or not
  assert set(top) == set(left) == set(range(9))
  flipped = out[:, 0, 0, 1] > out[:, 0, -1, 1]
  assert 80 < flipped.sum() < 176


def test_jax_scale_jitter_is_uniform_over_the_range():
  """On a ramp, neighbouring output pixels differ by 32 / S: S is read back from the crop."""
  images = np.stack([position_image(32, 32)] * 2000)
  stats = data.Stats(np.zeros(3, np.float32), np.zeros(3, np.float32), np.eye(3, dtype=np.float32))
  keys = jax.random.split(jax.random.key(1), 2000)
  out = np.asarray(
    data.augment_batch(keys, images, stats, scale=(32, 64), crop=32, flip=False, pca_std=0.0)
  )
  s = np.round(32 / (out[:, 16, 16, 1] - out[:, 16, 15, 1]))
  assert s.min() == 32 and s.max() == 64 and abs(s.mean() - 48) < 1


# -------------------------------------------------------------------- stats & config


def test_compute_stats_matches_numpy():
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(5000, 3)) @ np.array([[40, 0, 0], [20, 10, 0], [5, 5, 3]]) + 100
  stats = data.compute_stats(data.pixel_moments(pixels[i : i + 999]) for i in range(0, 5000, 999))
  np.testing.assert_allclose(stats.mean, pixels.mean(0))
  cov = np.cov(pixels.T, bias=True)
  # eigval is the AlexNet convention: eigenvalues of cov(pixels / 255), times 255.
  np.testing.assert_allclose(
    stats.eigvec @ np.diag(stats.eigval * 255) @ stats.eigvec.T, cov, rtol=1e-9
  )
  assert np.all(np.diff(stats.eigval) < 0)


def test_committed_stats_file():
  table = json.load(open(data.STATS_PATH))
  assert (
    table["imagenet2012"]["computed"] is False
    and "fb.resnet.torch" in table["imagenet2012"]["source"]
  )
  imagenet = data.load_stats("imagenet2012")
  np.testing.assert_allclose(imagenet.mean, [123.68, 116.779, 103.939])
  np.testing.assert_allclose(imagenet.eigval, np.array([0.2175, 0.0188, 0.0045]) * 255, rtol=1e-6)
  assert table["fashion_mnist"]["computed"] is True
  with pytest.raises(KeyError, match="vgg_jax.data stats --dataset nope"):
    data.load_stats("nope")


@needs_fashion_mnist
def test_fashion_mnist_stats_are_the_training_set_s():
  images, _ = data.load_idx_numpy("", "train")
  stats = data.load_stats("fashion_mnist")
  np.testing.assert_allclose(stats.mean, [images.mean()], rtol=1e-6)
  np.testing.assert_allclose(stats.eigval, [(images / 255.0).var() * 255], rtol=1e-6)


def write_idx(path, array: np.ndarray) -> None:
  """A gzipped IDX file of uint8 `array`, as Fashion-MNIST's."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_idx_files_are_parsed_once_until_they_change(tmp_path):
  images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 251
  for split, (image_file, label_file) in data.FASHION_MNIST_FILES.items():
    write_idx(tmp_path / image_file, images)
    write_idx(tmp_path / label_file, np.array([3, 7]))
  first = data.load_idx_numpy(str(tmp_path), "test")
  np.testing.assert_array_equal(first[0][..., 0], images)
  assert data.load_idx_numpy(str(tmp_path), "test")[0] is first[0]  # parsed once
  with pytest.raises(ValueError, match="read-only"):
    first[0][0, 0, 0, 0] = 1  # shared by every reader, so nobody may change it
  write_idx(tmp_path / data.FASHION_MNIST_FILES["test"][1], np.array([1, 2, 5]))
  assert data.load_idx_numpy(str(tmp_path), "test")[1].tolist() == [1, 2, 5]  # read again


def test_config_defaults_and_checks():
  cfg = data.resolve_config({"name": "cifar10", "scale": (256, 512)})
  assert cfg.crop == 224 and data.scale_range(cfg.scale) == (256, 512)
  assert data.scale_range(384) == (384, 384)
  with pytest.raises(ValueError, match="unknown data config fields"):
    data.resolve_config({"sclae": 256})
  with pytest.raises(ValueError, match="S_min <= S_max"):
    data.resolve_config({"scale": (512, 256)})
  with pytest.raises(ValueError, match="crops must fit"):
    data.resolve_config({"scale": 200, "crop": 224})
  with pytest.raises(ValueError, match="crops must fit"):
    data.resolve_config({"eval_scale": 256, "eval_crop": 288})


def test_shard_cuts_like_tfds_even_splits():
  for n, count in [(11, 3), (1003, 2), (10, 5), (3, 4)]:
    for drop in (False, True):
      ours = [data.shard(n, i, count, drop) for i in range(count)]
      assert sum(map(len, ours)) == (n - n % count if drop else n)
      assert all(a.stop == b.start or drop for a, b in zip(ours, ours[1:]))
      assert max(map(len, ours)) - min(map(len, ours)) <= 1


def test_parse_split():
  assert data.parse_split("test[:1003]") == ("test", None, 1003)
  assert data.parse_split("train[10:-5]") == ("train", 10, -5)
  assert data.parse_split("train") == ("train", None, None)
  with pytest.raises(ValueError):
    data.parse_split("train[:10%]")


def test_to_global_shards_the_batch():
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = {
    "image": np.ones((16, 4, 4, 1), np.float32),
    "label": np.arange(16, dtype=np.int32),
    "mask": np.ones(16, bool),
  }
  out = data.to_global(batch, sharding)
  assert out["image"].shape == (16, 4, 4, 1) and out["image"].sharding == sharding
  np.testing.assert_array_equal(out["label"], batch["label"])


# ------------------------------------------------------------------ mocked imagenet2012


def test_mock_imagenet_gives_224_crops(tmp_path):
  cfg = data.default_config(name="imagenet2012", data_dir=str(tmp_path), scale=(256, 512))
  with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
    train = data.make_pipeline(cfg, train=True, global_batch_size=8)
    batch = next(iter(train))
    assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["mask"].all()
    assert train.num_classes == 1000 and train.steps == 3
    val = data.make_pipeline(cfg, train=False, global_batch_size=16)
    batches = list(val)
    assert [b["mask"].sum() for b in batches] == [16, 8] and val.image_shape == (256, 256, 3)
    # Mock images are 5-49 pixels a side, odd sizes included: S must still be S.
    ds = tfds.load("imagenet2012", split="train", data_dir=str(tmp_path)).repeat(20).enumerate()
    sides = ds.map(
      lambda i, ex: tf.shape(
        data_tf.rescale(ex["image"], data_tf.sample_scale(cfg.scale, seed(i)))
      )[:2]
    )
    sizes = np.stack(list(sides.as_numpy_iterator()))
  short = sizes.min(1)
  assert 256 <= short.min() and short.max() <= 512 and abs(short.mean() - 384) < 12


def test_missing_imagenet_says_what_tfds_needs(tmp_path):
  cfg = data.default_config(name="imagenet2012", data_dir=str(tmp_path), manual_dir=str(tmp_path))
  with pytest.raises(RuntimeError, match="ILSVRC2012_img_train.tar"):
    data.make_pipeline(cfg, train=True, global_batch_size=8)


# ------------------------------------------------------------------ real Fashion-MNIST


@pytest.fixture(scope="session")
def fm_cfg(tmp_path_factory):
  """Fashion-MNIST prepared once per session from the Debian IDX files (~6 s)."""
  if not HAS_FASHION_MNIST:
    pytest.skip(NO_FASHION_MNIST)
  cfg = data.default_config(
    name="fashion_mnist",
    data_dir=str(tmp_path_factory.mktemp("tfds")),
    eval_split="test",
    scale=32,
    crop=32,
    eval_scale=32,
    pad_to=32,
    cache=True,
    shuffle_buffer=1024,
  )
  data_tf.prepared_builder(cfg)
  return cfg


def tfds_split(cfg, split):
  builder = data_tf.prepared_builder(cfg)
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))


def test_a_manual_dir_tfds_would_not_read_is_refused(fm_cfg):
  """fm_cfg's data_dir holds the prepared dataset: tfds would read it, not manual_dir."""
  from vgg_jax import config as config_lib

  cfg = fm_cfg.copy_and_resolve_references()
  cfg.manual_dir = "/elsewhere"
  with pytest.raises(config_lib.ConfigError, match="data.manual_dir /elsewhere would not be read"):
    data_tf.prepared_builder(cfg)


def test_fashion_mnist_builder_is_the_idx_files(fm_cfg):
  for split, n in [("train", 60_000), ("test", 10_000)]:
    images, labels = data.load_idx_numpy("", split)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [n // 10] * 10)
    built = tfds_split(fm_cfg, split)
    np.testing.assert_array_equal(built["image"], images)
    np.testing.assert_array_equal(built["label"], labels)


def copy(cfg, **changes):
  out = data.resolve_config(cfg)
  out.update(changes)
  return out


@pytest.mark.parametrize("backend", ["tfds", "numpy"])
def test_exact_eval_counts_every_example_once(fm_cfg, backend):
  cfg = copy(fm_cfg, backend=backend)
  whole = data.make_pipeline(
    cfg, train=False, global_batch_size=64, split="test[:1003]", process_index=0, process_count=1
  )
  reference = np.concatenate([b["image"][b["mask"]] for b in whole])
  assert whole.num_examples == 1003 and whole.steps == 16 and len(reference) == 1003
  parts = [
    data.make_pipeline(
      cfg, train=False, global_batch_size=64, split="test[:1003]", process_index=i, process_count=2
    )
    for i in range(2)
  ]
  batches = [list(p) for p in parts]
  assert [p.steps for p in parts] == [16, 16] and [len(b) for b in batches] == [16, 16]
  assert all(b["image"].shape == (32, 32, 32, 1) for bs in batches for b in bs)
  assert sum(b["mask"].sum() for bs in batches for b in bs) == 1003
  seen = np.concatenate([b["image"][b["mask"]] for bs in batches for b in bs])
  np.testing.assert_array_equal(seen, reference)
  labels = np.concatenate([b["label"][b["mask"]] for bs in batches for b in bs])
  np.testing.assert_array_equal(labels, data.load_idx_numpy("", "test")[1][:1003])


@pytest.mark.parametrize("eval_scale", [32, 40])
def test_numpy_and_tfds_give_the_same_eval_images(fm_cfg, eval_scale):
  cfg = copy(fm_cfg, eval_scale=eval_scale, eval_crop=32)
  out = {}
  for backend in ("tfds", "numpy"):
    pipe = data.make_pipeline(
      copy(cfg, backend=backend), train=False, global_batch_size=100, split="test[:300]"
    )
    out[backend] = np.concatenate([b["image"] for b in pipe])
  np.testing.assert_allclose(out["numpy"], out["tfds"], atol=2e-3)


@pytest.mark.parametrize("backend", ["tfds", "numpy"])
def test_training_epoch_pairs_images_with_labels(fm_cfg, backend):
  """With the augmentation off, an epoch is a permutation of the padded, centred images."""
  cfg = copy(fm_cfg, backend=backend, flip=False, pca_std=0.0, shuffle_buffer=256)
  pipe = data.make_pipeline(cfg, train=True, global_batch_size=64, split="train[:256]", seed=1)
  assert pipe.steps == 4 and pipe.num_examples == 256
  batches = [b for _, b in zip(range(4), pipe)]
  images, labels = data.load_idx_numpy("", "train")
  expected = (
    data.pad_images(images[:256], 32).astype(np.float32) - data.load_stats("fashion_mnist").mean
  )
  got = np.concatenate([b["image"] for b in batches])
  index = [np.flatnonzero((expected == g).all((1, 2, 3)))[0] for g in got]
  assert sorted(index) == list(range(256))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels[index])


@pytest.mark.parametrize("backend", ["tfds", "numpy"])
def test_training_batches_are_seeded(fm_cfg, backend):
  cfg = copy(fm_cfg, backend=backend, scale=(32, 48), shuffle_buffer=512)

  def first(seed, n=2):
    pipe = data.make_pipeline(
      cfg, train=True, global_batch_size=64, split="train[:1024]", seed=seed
    )
    return np.stack([b["image"] for _, b in zip(range(n), pipe)])

  a, b, c = first(0), first(0), first(1)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert a.shape == (2, 64, 32, 32, 1)


@pytest.mark.parametrize("backend", ["tfds", "numpy"])
def test_resuming_gives_the_batches_of_an_uninterrupted_run(fm_cfg, backend):
  cfg = copy(fm_cfg, backend=backend, scale=(32, 48), shuffle_buffer=512)
  pipe = data.make_pipeline(cfg, train=True, global_batch_size=64, split="train[:200]")
  run = [b for _, b in zip(range(8), pipe)]  # 200 is not a multiple of 64: epochs straddle
  for start in (3, 4):
    resumed = [b for _, b in zip(range(8 - start), pipe.iter_from(start))]
    for a, b in zip(run[start:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_numpy_training_stream_is_the_same_for_any_process_count(fm_cfg):
  """Two processes yield the two halves of the one-process global batch, augmentation
  included, so multi-process runs (and resumes on another host count) are exact."""
  cfg = copy(fm_cfg, backend="numpy")
  make = functools.partial(
    data.make_pipeline, cfg, train=True, global_batch_size=64, split="train[:130]", seed=3
  )
  parts = [make(process_index=i, process_count=2) for i in range(2)]
  whole = make(process_index=0, process_count=1)
  assert [(p.num_examples, p.steps, p.local_batch_size) for p in parts] == [(130, 2, 32)] * 2
  for halves, full in zip(zip(*(p.iter_from(1) for p in parts)), whole.iter_from(1)):
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), full[key])
    break
  first = [next(iter(p))["image"].reshape(32, -1) for p in parts]
  assert not (first[0][:, None] == first[1][None]).all(-1).any()


def test_tfds_training_processes_get_disjoint_shards(fm_cfg):
  cfg = copy(fm_cfg, flip=False, pca_std=0.0)
  parts = [
    data.make_pipeline(
      cfg, train=True, global_batch_size=64, split="train[:130]", process_index=i, process_count=2
    )
    for i in range(2)
  ]
  assert [(p.num_examples, p.steps) for p in parts] == [(130, 2)] * 2
  images = [next(iter(p))["image"].reshape(32, -1) for p in parts]
  assert not (images[0][:, None] == images[1][None]).all(-1).any()


def test_missing_fashion_mnist_files_say_apt_get(tmp_path):
  for backend in ("numpy", "tfds"):
    cfg = data.default_config(
      name="fashion_mnist", backend=backend, data_dir=str(tmp_path), manual_dir=str(tmp_path)
    )
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
      data.make_pipeline(cfg, train=False, global_batch_size=8, split="test")


def run_without_tensorflow(code: str):
  """`code` in a fresh interpreter where importing TensorFlow fails, as on the GPU
  machine; it must not have been imported at the end either."""
  code = (
    "import sys\nsys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n"
    + code
    + "\nassert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root}
  subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, timeout=300)


@needs_fashion_mnist
@pytest.mark.parametrize("backend", ["numpy", "device"])
def test_numpy_and_device_backends_never_import_tensorflow(backend):
  run_without_tensorflow(
    "from vgg_jax import data\n"
    f"cfg = data.default_config(name='fashion_mnist', backend='{backend}', scale=(32, 48),"
    " crop=32, pad_to=32)\n"
    "batch = next(iter(data.make_pipeline(cfg, train=True, global_batch_size=8,"
    " split='train[:64]')))\n"
    "assert batch['image'].shape == (8, 32, 32, 1)\n"
  )


@needs_fashion_mnist
def test_training_on_the_device_backend_never_imports_tensorflow(tmp_path):
  run_without_tensorflow(
    "from vgg_jax import config, train\n"
    "c = config.experiment_config('fashion_mnist', 'quick,backend=device')\n"
    "c.model.width = 1 / 16\n"
    "c.optim.update(batch_size=32, max_steps=2)\n"
    "c.data.eval_split = 'test[:64]'\n"
    f"_, result = train.train_and_evaluate(c, {str(tmp_path)!r})\n"
    "assert result['val_count'] == 64, result\n"
  )


# --------------------------------------------------------------------- device backend


def device_cfg(**changes):
  return data.default_config(
    name="fashion_mnist",
    backend="device",
    scale=(32, 48),
    crop=32,
    eval_scale=40,
    eval_crop=32,
    pad_to=32,
    **changes,
  )


def on_devices(n):
  return sharding_lib.batch_sharding(sharding_lib.make_mesh((("data", n),)))


def host(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


@needs_fashion_mnist
def test_device_batches_are_the_numpy_backends():
  """Same (seed, step), same batch: the same indices, keys and jnp functions; 8 devices
  against the host's one (another device count only regroups per-example work)."""
  cfg = device_cfg()
  make = functools.partial(
    data.make_pipeline, train=True, global_batch_size=64, split="train[:200]", seed=5
  )  # epochs straddle batches
  device = make(cfg, sharding=on_devices(8))
  numpy = make(copy(cfg, backend="numpy"))
  assert (
    (device.steps, device.num_examples, device.image_shape)
    == (numpy.steps, numpy.num_examples, numpy.image_shape)
    == (3, 200, (32, 32, 1))
  )
  for step, (a, b) in enumerate(zip(device.iter_from(2), numpy.iter_from(2))):
    assert a["image"].sharding == on_devices(8)
    np.testing.assert_allclose(np.asarray(a["image"]), b["image"], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(a["label"]), b["label"])
    assert np.asarray(a["mask"]).all()
    if step == 2:
      break
  evals = [
    list(data.make_pipeline(c, train=False, global_batch_size=64, split="test[:203]", **kw))
    for c, kw in [(cfg, dict(sharding=on_devices(8))), (copy(cfg, backend="numpy"), {})]
  ]
  assert len(evals[0]) == len(evals[1]) == 4
  for a, b in zip(*evals):
    for key in ("image", "label", "mask"):
      np.testing.assert_allclose(np.asarray(a[key]), b[key], atol=1e-4)
  assert sum(np.asarray(b["mask"]).sum() for b in evals[0]) == 203


@needs_fashion_mnist
def test_device_batches_do_not_depend_on_the_device_count_and_resume_anywhere():
  make = functools.partial(
    data.make_pipeline, device_cfg(), train=True, global_batch_size=32, split="train[:100]", seed=2
  )
  one, eight = make(sharding=on_devices(1)), make(sharding=on_devices(8))
  run = [host(b) for _, b in zip(range(7), one)]
  for a, b in zip(run, eight):
    np.testing.assert_allclose(a["image"], np.asarray(b["image"]), atol=1e-4)
    np.testing.assert_array_equal(a["label"], np.asarray(b["label"]))
  assert not np.allclose(run[0]["image"], run[1]["image"])
  for start in (3, 4):  # 3 steps an epoch: 3 starts an epoch, 4 is inside one
    for a, b in zip(run[start:], eight.iter_from(start)):
      np.testing.assert_allclose(a["image"], np.asarray(b["image"]), atol=1e-4)
  programs = device_backend.train_program.cache_info().currsize
  other_seed = next(iter(make(sharding=on_devices(8), seed=9)))
  assert device_backend.train_program.cache_info().currsize == programs  # seeds share it
  assert not np.allclose(np.asarray(other_seed["image"]), run[0]["image"])


@needs_fashion_mnist
def test_device_backend_refuses_a_split_that_does_not_fit(monkeypatch):
  placed = []
  monkeypatch.setattr(device_backend, "place", lambda *args: placed.append(args))
  monkeypatch.setattr(device_backend, "memory_limit", lambda device: 60_000 * 32 * 32)
  with pytest.raises(MemoryError, match=r"needs 59 MiB on each chip .* 50% of its 59 MiB"):
    data.make_pipeline(device_cfg(), train=True, global_batch_size=64, sharding=on_devices(1))
  eight = data.make_pipeline(
    device_cfg(), train=True, global_batch_size=64, sharding=on_devices(8)
  )  # an eighth of the split fits
  assert eight.steps == 60_000 // 64 and not placed  # placed only when iterated
  assert device_backend.split_bytes((60_000, 32, 32, 1), 8) == 7_500 * 1024


@needs_fashion_mnist
def test_evaluation_protocols_read_and_rescale_alike_on_device():
  """`data.read_split` and `data.rescale_images`, what evaluate.py reads through."""
  cfg = device_cfg()
  shares = [
    list(data.read_split(c, "test[:7]", 1, 2, chunk=2)) for c in (cfg, copy(cfg, backend="numpy"))
  ]
  assert [[len(labels) for _, labels in share] for share in shares] == [[2, 1]] * 2
  for (a, a_labels), (b, b_labels) in zip(*shares):
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    np.testing.assert_array_equal(a_labels, b_labels)
  images = np.stack(shares[0][0][0])
  for q in (20, 45):
    out = data.rescale_images(cfg, images, q)
    assert out.shape == (2, q, q, 1)
    np.testing.assert_allclose(
      out, data.rescale_images(copy(cfg, backend="numpy"), images, q), atol=1e-3
    )


def test_to_global_passes_global_arrays_through():
  sharding = on_devices(8)
  batch = {"image": jax.device_put(np.ones((16, 2), np.float32), sharding)}
  assert data.to_global(batch, sharding)["image"] is batch["image"]
  moved = data.to_global(batch, on_devices(4))["image"]
  assert moved.sharding == on_devices(4)
  np.testing.assert_array_equal(moved, batch["image"])


@needs_fashion_mnist
def test_device_backend_trains_as_the_numpy_backend_on_8_devices_and_2_processes(tmp_path):
  """The trainer on device-resident input, 8 simulated devices in one process and two
  real processes of 2 devices (127.0.0.1), against NumPy input on one device."""
  from conftest import losses, tiny_config, train_on_two_processes
  from vgg_jax import evaluate, train

  _, reference = train.train_and_evaluate(tiny_config(steps=4), str(tmp_path / "ref"))
  eight = tiny_config(steps=4, devices=8, arg="quick,backend=device")
  _, result = train.train_and_evaluate(eight, str(tmp_path / "eight"))
  assert result["val_count"] == reference["val_count"] == 200
  assert result["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
  np.testing.assert_allclose(losses(tmp_path / "eight"), losses(tmp_path / "ref"), rtol=1e-4)
  dense = [
    evaluate.evaluate(
      [evaluate.load_trained(str(tmp_path / run))], "dense", "32,40", split="test[:20]"
    )
    for run in ("ref", "eight")
  ]
  assert dense[0]["count"] == dense[1]["count"] == 20
  assert dense[0]["top5_hits"] == dense[1]["top5_hits"]
  outputs = train_on_two_processes(
    tmp_path / "two", "quick,backend=device", "--config.optim.max_steps=4"
  )
  assert "final: top-1 error" in outputs[0]
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "ref"), rtol=1e-4)
