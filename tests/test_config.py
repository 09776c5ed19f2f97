"""Experiment configs: parsing, the recipes they encode, and errors before any compute."""

import importlib.util
import os

import pytest

from vgg_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_paper_recipe():
  c = load_experiment("paper").get_config("model=D,S=256-512")
  assert c.model.name == "D" and c.model.dropout == 0.5
  assert (c.optim.batch_size, c.optim.lr, c.optim.momentum, c.optim.weight_decay,
          c.optim.epochs, c.optim.plateau_factor, c.optim.plateau_max_drops) == (
              256, 1e-2, 0.9, 5e-4, 74, 0.1, 3)
  assert c.data.scale == (256, 512) and c.data.crop == 224 and c.data.eval_scale == 384
  assert c.data.flip and c.data.pca_std == 0.1
  assert load_experiment("paper").get_config("S=384").optim.lr == 1e-3
  assert load_experiment("paper").get_config("S=256").data.eval_scale == 256


def test_fashion_mnist_scales_map_onto_the_papers():
  fm = load_experiment("fashion_mnist")
  assert [fm.get_config(f"S={s}").data.scale for s in ("32", "40", "32-48")] == [
      (32, 32), (40, 40), (32, 48)]
  assert fm.get_config("S=32-48").data.eval_scale == 40
  quick = fm.get_config("quick")
  assert quick.optim.max_steps > 0 and quick.data.crop == 32 and quick.data.pad_to == 32


def test_every_experiment_validates():
  for name, arg in [("paper", ""), ("paper", "model=A-LRN,S=384"), ("fashion_mnist", ""),
                    ("fashion_mnist", "quick,model=E,S=32-48")]:
    config_lib.validate(load_experiment(name).get_config(arg), data_parallel=8)


def test_unknown_argument_lists_the_known_ones():
  with pytest.raises(ValueError, match="unknown config argument 'modle'.*model"):
    load_experiment("fashion_mnist").get_config("modle=D")


def test_unknown_field_is_an_error():
  c = config_lib.base_config()
  with pytest.raises(AttributeError):
    c.optim.learning_rate = 0.1  # locked: a typo cannot become a new field
  loose = config_lib.base_config().to_dict()
  loose["optim"]["learnig_rate"] = 0.1
  import ml_collections
  with pytest.raises(ValueError, match="unknown config fields: optim.learnig_rate"):
    config_lib.validate(ml_collections.ConfigDict(loose), data_parallel=1)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.model.update(name="F"), "unknown VGG configuration 'F'"),
    (lambda c: c.optim.update(batch_size=100), "batch_size 100 is not divisible by the 8"),
    (lambda c: c.data.update(scale=(200, 200)), "S=200 must be at least the crop 224"),
    (lambda c: c.data.update(eval_scale=128), "Q=128 is below the crop"),
])
def test_bad_values_are_clear_errors(edit, message):
  c = load_experiment("paper").get_config("")
  edit(c)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c, data_parallel=8)
