"""vgg_jax's own weight files: orbax checkpoints from `save_orbax`, `launch.py convert`
and training workdirs, read back with `load_orbax`."""

import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import vgg_jax
from vgg_jax import checkpoint as ckpt_lib
from vgg_jax import lock, weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_classes=10, width=1 / 16, image_size=32, batch_norm=True)


def arrays(model) -> dict[str, np.ndarray]:
  return {k: np.asarray(v.get_value()) for k, v in weights.model_tensors(model).items()}


def assert_same_weights(a, b):
  a, b = arrays(a), arrays(b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_save_and_load_orbax_round_trip(tmp_path):
  model = vgg_jax.create_model("B", rngs=nnx.Rngs(1), **SMALL)
  model.bn1_1.mean.set_value(model.bn1_1.mean.get_value() + 0.5)  # statistics travel too
  weights.save_orbax(model, str(tmp_path))
  loaded = weights.load_orbax(
    str(tmp_path), nnx.eval_shape(lambda: vgg_jax.create_model("B", **SMALL))
  )
  assert_same_weights(loaded, model)


def test_another_model_is_refused_by_name(tmp_path):
  weights.save_orbax(vgg_jax.create_model("B", **SMALL), str(tmp_path))
  with pytest.raises(
    ckpt_lib.CheckpointMismatch,
    match=r"holds model \{'name': 'B'.*but "
    r"the model is \{'name': 'D'",
  ):
    weights.load_orbax(str(tmp_path), nnx.eval_shape(lambda: vgg_jax.create_model("D", **SMALL)))
  with pytest.raises(FileNotFoundError, match="no vgg_jax checkpoint"):
    weights.load_orbax(str(tmp_path / "empty"), vgg_jax.create_model("B", **SMALL))


def test_weights_of_a_training_workdir_without_its_optimiser(tmp_path):
  from vgg_jax import config as config_lib
  from vgg_jax import train
  from vgg_jax.model import VGG

  config = config_lib.experiment_config("fashion_mnist", "quick,backend=numpy")
  config.model.width = 1 / 16
  config.optim.update(batch_size=32, max_steps=2)
  config.data.eval_split = "test[:64]"
  config.mesh = (("data", 1), ("model", 1))
  state, _ = train.train_and_evaluate(config, str(tmp_path))
  model = nnx.eval_shape(lambda: VGG(config_lib.network_config(config, 10, 1), rngs=nnx.Rngs(0)))
  weights.load_orbax(str(tmp_path), model)
  for path, variable in weights.model_tensors(model).items():
    layer, kind = path.split("/")
    np.testing.assert_array_equal(variable.get_value(), state["params"][layer][kind][...])


def test_launch_convert_from_torchvision(tmp_path):
  """Refused, in one line and writing nothing, while another process holds the output
  directory's lock (a trainer's workdir); written once it is free."""
  torch = pytest.importorskip("torch", reason="torch is not installed (setup.sh --test)")
  torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
  torch.manual_seed(0)
  net = torchvision.models.vgg11_bn(weights=None, num_classes=7)
  torch.save(net.state_dict(), tmp_path / "vgg11_bn.pth")
  convert = lambda: subprocess.run(  # noqa: E731
    [
      sys.executable,
      "launch.py",
      "convert",
      "--from=torchvision",
      str(tmp_path / "vgg11_bn.pth"),
      f"--to={tmp_path / 'converted'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  with lock.workdir_lock(str(tmp_path / "converted"), "train"):
    refused = convert()
  assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
  assert f"in use by train (pid {os.getpid()} on " in refused.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "converted").exists()  # the holder's lock made it; nothing was written
  out = convert()
  assert out.returncode == 0, out.stderr[-3000:]
  assert "VGG-A (" in out.stdout
  expected = weights.load_torchvision(
    str(tmp_path / "vgg11_bn.pth"),
    nnx.eval_shape(lambda: vgg_jax.create_model("A", batch_norm=True, num_classes=7)),
  )
  loaded = weights.load_orbax(
    str(tmp_path / "converted"),
    nnx.eval_shape(lambda: vgg_jax.create_model("A", batch_norm=True, num_classes=7)),
  )
  assert_same_weights(loaded, expected)


def test_torchvision_model_args_read_the_architecture():
  torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
  for name, config in [("vgg13", "B"), ("vgg19_bn", "E")]:
    state_dict = getattr(torchvision.models, name)(weights=None, num_classes=5).state_dict()
    args = weights.torchvision_model_args(state_dict)
    assert vgg_jax.canonical_name(args["name"]) == config
    assert args["batch_norm"] == name.endswith("_bn") and args["num_classes"] == 5
    assert args["image_size"] == 224 and args["width"] == 1 and args["fc_width"] is None
  with pytest.raises(ValueError, match="not a torchvision VGG state dict"):
    weights.torchvision_model_args(torchvision.models.resnet18(weights=None).state_dict())
