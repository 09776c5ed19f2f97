"""Golden parity with Keras 3's keras.applications.VGG16 / VGG19 (configs D / E).

The Keras models are built offline (weights=None) and refilled with seeded He-normal
kernels and non-zero biases: Keras's own Glorot init with zero biases gives near-zero
logits (a loose absolute bound would then prove nothing) and would not exercise the
bias mapping.
"""

import os

os.environ["KERAS_BACKEND"] = "jax"  # before any keras import, here and in keras itself

import re
import subprocess
import sys

import jax
import keras
import numpy as np
import pytest
from flax import nnx

import vgg_jax
from vgg_jax import weights

SEED = 0
ATOL = 1e-4  # the requirement: logits agree to 1e-4 ...
RTOL = 1e-5  # ... and to 1e-5 of the largest logit, so the bound scales with the logits
MIN_LOGIT_STD = 1.0  # makes ATOL a bound of at most 1e-4 of the logits' spread
BATCH = 2


def randomize(keras_model, seed: int):
  """He-normal kernels (std sqrt(2 / fan_in), which keeps ReLU activations O(1) through
  16-19 layers) and N(0, 0.1^2) biases, from a seeded numpy generator."""
  rng = np.random.default_rng(seed)
  for layer in keras_model.layers:
    if layer.weights:
      kernel, bias = layer.get_weights()
      std = np.sqrt(2.0 / np.prod(kernel.shape[:-1]))
      layer.set_weights(
        [
          (rng.standard_normal(kernel.shape, dtype=np.float32) * std).astype(np.float32),
          (rng.standard_normal(bias.shape, dtype=np.float32) * 0.1).astype(np.float32),
        ]
      )
  return keras_model


def keras_outputs(keras_model, images):
  """(softmax probabilities, pre-softmax logits) of a Keras VGG: the applications end
  in a softmax Dense, so the logits come from the same model with that activation
  switched to linear for one call."""
  head = keras_model.get_layer("predictions")
  probs = np.asarray(keras_model(images, training=False))
  activation, head.activation = head.activation, keras.activations.linear
  try:
    logits = np.asarray(keras_model(images, training=False))
  finally:
    head.activation = activation
  return probs, logits


def build_keras(builder, seed: int, data_format: str = "channels_last", **kwargs):
  keras.utils.set_random_seed(seed)
  previous = keras.config.image_data_format()
  keras.config.set_image_data_format(data_format)
  try:
    return randomize(builder(weights=None, **kwargs), seed)
  finally:
    keras.config.set_image_data_format(previous)


def abstract(name: str, **options):
  """A vgg_jax model with shapes only: the loader checks everything before writing, so
  error cases need no 138M-parameter init."""
  return nnx.eval_shape(lambda: vgg_jax.create_model(name, **options))


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def keras_vgg16():
  return build_keras(keras.applications.VGG16, SEED)


@pytest.fixture(scope="module")
def keras_vgg19():
  return build_keras(keras.applications.VGG19, SEED + 1)


@pytest.fixture(scope="module")
def keras_small():
  """VGG16 at 64x64 with 10 classes: fc6 is 2x2, so the flatten order still matters."""
  return build_keras(keras.applications.VGG16, SEED + 2, input_shape=(64, 64, 3), classes=10)


@pytest.mark.parametrize("config, keras_fixture", [("D", "keras_vgg16"), ("E", "keras_vgg19")])
def test_logits_match_keras(config, keras_fixture, request):
  keras_model = request.getfixturevalue(keras_fixture)
  images = np.random.default_rng(SEED).standard_normal((BATCH, 224, 224, 3), np.float32)
  probs, expected = keras_outputs(keras_model, images)
  # The logits are what the softmax was applied to, and large enough to test.
  assert max_diff(jax.nn.softmax(expected), probs) < 1e-6
  assert expected.shape == (BATCH, 1000)
  assert expected.std() > MIN_LOGIT_STD, expected.std()

  model = vgg_jax.create_model(config, rngs=nnx.Rngs(SEED))
  model.eval()
  assert max_diff(model(images), expected) > 100 * ATOL  # its own init disagrees
  assert weights.keras_to_vgg(keras_model, model) is model
  logits = np.asarray(model(images))
  diff = max_diff(logits, expected)
  assert diff <= ATOL, diff
  assert diff <= RTOL * np.abs(expected).max(), (diff, np.abs(expected).max())
  assert max_diff(jax.nn.softmax(logits), probs) < 1e-6
  np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))

  # Negative control: fc6 unflattened in CHW order (PyTorch's) must break parity, so
  # the test above would catch a flatten-order mistake.
  kernel = np.asarray(model.fc6.kernel[...])
  chw = kernel.reshape(512, 7, 7, -1).transpose(1, 2, 0, 3)
  weights.assign(model, "fc6/kernel", chw)
  assert max_diff(model(images), expected) > 100 * ATOL


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_small_input_and_channels_first(data_format):
  """Keras's Flatten emits HWC order under channels_first too, so the same reshape
  holds; also checks loading into an abstract (eval_shape) model makes it concrete."""
  keras_model = build_keras(
    keras.applications.VGG16,
    SEED + 3,
    data_format,
    input_shape=(3, 64, 64) if data_format == "channels_first" else (64, 64, 3),
    classes=10,
  )
  images = np.random.default_rng(SEED).standard_normal((BATCH, 64, 64, 3), np.float32)
  keras_images = images.transpose(0, 3, 1, 2) if data_format == "channels_first" else images
  _, expected = keras_outputs(keras_model, keras_images)
  assert expected.std() > MIN_LOGIT_STD, expected.std()
  model = weights.keras_to_vgg(keras_model, abstract("D", image_size=64, num_classes=10))
  model.eval()
  assert isinstance(model.conv1_1.kernel.get_value(), jax.Array)
  diff = max_diff(model(images), expected)
  assert diff <= ATOL and diff <= RTOL * np.abs(expected).max(), diff


@pytest.mark.parametrize(
  "keras_fixture, config, options, message",
  [
    # VGG16 lacks E's fourth conv in stages 3-5.
    pytest.param(
      "keras_vgg16", "E", {}, r"missing from .*conv3_4/bias, conv3_4/kernel", id="vgg16-into-E"
    ),
    # VGG19's extra convs have nowhere to go in D; name both sides.
    pytest.param(
      "keras_vgg19",
      "D",
      {},
      r"no place in the VGG-D model: conv3_4/bias "
      r"\(from Keras block3_conv4/bias\)",
      id="vgg19-into-D",
    ),
    pytest.param(
      "keras_vgg16",
      "D",
      {"num_classes": 10},
      r"fc8/kernel \(from Keras predictions/kernel\): source shape \(4096, 1000\) "
      r"does not match the model's \(4096, 10\)",
      id="10-classes",
    ),
    pytest.param(
      "keras_vgg16",
      "D",
      {"image_size": 32},
      r"fc6/kernel \(from Keras fc1/kernel \(25088, 4096\) unflattened\): source "
      r"shape \(7, 7, 512, 4096\) does not match the model's \(1, 1, 512, 4096\)",
      id="image-size-32",
    ),
    pytest.param(
      "keras_vgg16",
      "D",
      {"width": 0.5},
      r"conv1_1/kernel .*\(3, 3, 3, 64\) does not match the model's \(3, 3, 3, 32\)",
      id="half-width",
    ),
    pytest.param(
      "keras_vgg16",
      "D",
      {"batch_norm": True},
      r"missing from .*bn1_1/mean, bn1_1/scale",
      id="batch-norm",
    ),
  ],
)
def test_wrong_config_raises(keras_fixture, config, options, message, request):
  keras_model = request.getfixturevalue(keras_fixture)
  with pytest.raises(ValueError, match=message):
    weights.keras_to_vgg(keras_model, abstract(config, **options))


def test_failed_load_leaves_model_untouched(keras_small):
  model = vgg_jax.create_model("D", image_size=64, num_classes=1000, rngs=nnx.Rngs(SEED))
  before = {path: np.asarray(v.get_value()) for path, v in weights.model_tensors(model).items()}
  # fc8 is checked last in source order, after every conv would already have been
  # written by a loader that checked as it went.
  with pytest.raises(ValueError, match=r"fc8/kernel .*\(4096, 10\) .*\(4096, 1000\)"):
    weights.keras_to_vgg(keras_small, model)
  for path, variable in weights.model_tensors(model).items():
    np.testing.assert_array_equal(np.asarray(variable.get_value()), before[path], err_msg=path)


def test_headless_and_foreign_keras_models_raise():
  headless = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
  with pytest.raises(ValueError, match=r"missing from .*fc6/bias, fc6/kernel"):
    weights.keras_to_vgg(headless, abstract("D", image_size=32))
  foreign = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="logits")])
  with pytest.raises(ValueError, match=r"Keras layer 'logits' has weights \(logits/kernel"):
    weights.keras_to_vgg(foreign, abstract("D"))


def test_assign_checks_path_and_shape():
  model = vgg_jax.create_model("A", width=0.125, image_size=32)
  weights.assign(model, "fc8/bias", np.arange(1000, dtype=np.float64))
  assert model.fc8.bias.dtype == np.float32
  np.testing.assert_array_equal(model.fc8.bias[...], np.arange(1000))
  with pytest.raises(
    ValueError,
    match=re.escape(
      "fc8/bias (from the given array): source shape (10,) does not match the model's (1000,)"
    ),
  ):
    weights.assign(model, "fc8/bias", np.zeros(10))
  with pytest.raises(ValueError, match=r"conv9_9/kernel .*has no place in the model"):
    weights.assign(model, "conv9_9/kernel", np.zeros(3))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_load_keras_file(keras_small, tmp_path, suffix):
  path = tmp_path / f"vgg16_small{suffix}"
  keras_small.save(path)
  loaded = weights.load_keras(str(path), abstract("D", image_size=64, num_classes=10))
  direct = weights.keras_to_vgg(keras_small, abstract("D", image_size=64, num_classes=10))
  expected = weights.model_tensors(direct)
  for name, variable in weights.model_tensors(loaded).items():
    np.testing.assert_array_equal(variable.get_value(), expected[name].get_value(), err_msg=name)


def test_import_file_reads_the_architecture_from_the_file(keras_small, tmp_path):
  path = tmp_path / "vgg16_small.keras"
  keras_small.save(path)
  imported = weights.import_file("keras", str(path))
  assert (imported.cfg.name, imported.cfg.num_classes, imported.cfg.image_size) == ("D", 10, 64)
  expected = weights.model_tensors(
    weights.keras_to_vgg(keras_small, abstract("D", image_size=64, num_classes=10))
  )
  for name, variable in weights.model_tensors(imported).items():
    np.testing.assert_array_equal(variable.get_value(), expected[name].get_value(), err_msg=name)


def test_truncated_keras_file_is_a_clear_error(keras_small, tmp_path):
  path = tmp_path / "vgg16_small.h5"
  keras_small.save(path)
  path.write_bytes(path.read_bytes()[:4096])
  with pytest.raises(ValueError, match=r"vgg16_small.h5: not a Keras model"):
    weights.load_keras(str(path), abstract("D", image_size=64, num_classes=10))


def test_import_vgg_jax_does_not_import_keras_or_tensorflow():
  code = (
    "import sys, vgg_jax, vgg_jax.weights; "
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')); "
    "assert not bad, bad"
  )
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
      [
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        os.environ.get("PYTHONPATH", ""),
      ]
    ),
  }
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert result.returncode == 0, result.stderr[-2000:]


def test_preprocess_matches_keras_caffe_convention():
  image = np.random.default_rng(3).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
  expected = keras.applications.vgg16.preprocess_input(image.copy())
  for source in ("keras", "caffe"):
    np.testing.assert_allclose(weights.preprocess(image, source), expected, atol=1e-4)
  assert not np.allclose(weights.preprocess(image, "torchvision"), expected, atol=1)
  with pytest.raises(ValueError, match="unknown source 'tf'"):
    weights.preprocess(image, "tf")
