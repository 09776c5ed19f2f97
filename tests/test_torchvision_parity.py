"""torchvision's VGGs, weights and all, against vgg_jax: logits, features, dense heads.

torchvision is a peer nobody here wrote; its models are built with random weights
(`weights=None`, nothing downloaded), saved with torch.save and imported from the file.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vgg_jax
from vgg_jax import weights

torch = pytest.importorskip("torch", reason="torch is not installed (setup.sh installs it)")
torchvision = pytest.importorskip(
  "torchvision", reason="torchvision is not installed (setup.sh installs it)"
)


def randomised(name: str, seed: int = 0):
  """A torchvision VGG with weights that make every tensor matter: He-scaled kernels,
  non-zero biases, BN statistics away from (0, 1)."""
  torch.manual_seed(seed)
  net = getattr(torchvision.models, name)(weights=None)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        torch.nn.init.kaiming_normal_(module.weight)
        module.bias.normal_(0, 0.1)
      elif isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5), module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 1.5)
  return net.eval()


CASES = {"vgg11": dict(name="A"), "vgg16_bn": dict(name="D", batch_norm=True)}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
  net = randomised(request.param)
  path = tmp_path_factory.mktemp("pth") / f"{request.param}.pth"
  torch.save(net.state_dict(), path)
  model = nnx.eval_shape(lambda: vgg_jax.create_model(**CASES[request.param]))
  weights.load_torchvision(str(path), model)
  model.eval()
  return net, model, path


def to_torch(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_logits_and_features_match(pair):
  net, model, _ = pair
  x = weights.preprocess(np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)), "torchvision")
  x = np.asarray(x)
  stage_ends = [i - 1 for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
  with torch.no_grad():
    h, ours_at = to_torch(x), {}
    for i, module in enumerate(net.features):
      h = module(h)
      if i in stage_ends:
        ours_at[i] = h.numpy().transpose(0, 2, 3, 1)
    logits = net(to_torch(x)).numpy()
  feats = model.features(jnp.asarray(x))
  assert list(feats) == list(model.stage_outputs())
  for name, i in zip(model.stage_outputs(), stage_ends):
    ref = ours_at[i]
    assert np.abs(np.asarray(feats[name]) - ref).max() <= 1e-4 * max(1, np.abs(ref).max()), name
  got = np.asarray(model(jnp.asarray(x)))
  assert np.abs(logits).std() > 1  # the comparison is not between near-zero numbers
  assert np.abs(got - logits).max() <= 1e-4 * np.abs(logits).max()
  assert (got.argmax(-1) == logits.argmax(-1)).all()


def test_dense_head_equals_torchvision_classifier_averaged_over_windows(pair):
  """At 288x320 pool5 is 9x10: torchvision's own classifier on each 7x7 window of its
  own features, averaged over the 3x4 windows, is what dense mode must return."""
  net, model, _ = pair
  x = np.asarray(
    weights.preprocess(np.random.default_rng(1).uniform(0, 255, (1, 288, 320, 3)), "torchvision")
  )
  with torch.no_grad():
    pool5 = net.features(to_torch(x))
    windows = [
      net.classifier(pool5[:, :, i : i + 7, j : j + 7].flatten(1))
      for i in range(3)
      for j in range(4)
    ]
    expected = torch.stack(windows).mean(0).numpy()
  got = np.asarray(model(jnp.asarray(x), dense=True))
  assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_round_trip_is_bit_exact(pair):
  net, model, _ = pair
  original = net.state_dict()
  exported = weights.to_torchvision(model)
  assert exported.keys() == original.keys()
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
  net.load_state_dict(
    {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in exported.items()}
  )  # torchvision accepts it as is


def test_truncated_file_is_a_clear_error(pair, tmp_path):
  _, _, path = pair
  broken = tmp_path / "broken.pth"
  broken.write_bytes(path.read_bytes()[:1000])
  model = nnx.eval_shape(lambda: vgg_jax.create_model("A"))
  with pytest.raises(ValueError, match="broken.pth: not a torch state dict"):
    weights.load_torchvision(str(broken), model)


def test_state_dict_of_another_architecture_names_the_tensors():
  vgg13 = torchvision.models.vgg13(weights=None).state_dict()
  model = nnx.eval_shape(lambda: vgg_jax.create_model("A"))
  with pytest.raises(
    ValueError,
    match=r"conv1_1/kernel \(from torchvision features.0.weight"
    r"\): source shape \(3, 3, 3, 64\) does not match|no place in the VGG-A",
  ):
    weights.load_torchvision(vgg13, model)
  with pytest.raises(ValueError, match="no torchvision layout"):
    weights.load_torchvision(vgg13, nnx.eval_shape(lambda: vgg_jax.create_model("A-LRN")))


def test_wrong_number_of_classes_names_fc8():
  vgg11 = torchvision.models.vgg11(weights=None).state_dict()
  model = nnx.eval_shape(lambda: vgg_jax.create_model("A", num_classes=10))
  with pytest.raises(
    ValueError,
    match=r"fc8/kernel \(from torchvision classifier.6.weight\)"
    r": source shape \(4096, 1000\) does not match the model's \(4096, 10\)",
  ):
    weights.load_torchvision(vgg11, model)


def test_preprocess_matches_torchvision_transforms():
  from torchvision.transforms import v2

  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
  transform = v2.Compose(
    [
      v2.ToImage(),
      v2.ToDtype(torch.float32, scale=True),
      v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
  )
  expected = transform(image).numpy().transpose(1, 2, 0)
  np.testing.assert_allclose(weights.preprocess(image, "torchvision"), expected, atol=1e-5)
