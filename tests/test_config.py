"""Experiment configs: parsing, the recipes they encode, and errors before any compute."""

import ml_collections
import pytest

from vgg_jax import config as config_lib
from vgg_jax.config import experiment_config


def test_paper_recipe():
  c = experiment_config("paper", "model=D,S=256-512")
  assert c.model.name == "D" and c.model.dropout == 0.5
  assert (
    c.optim.batch_size,
    c.optim.lr,
    c.optim.momentum,
    c.optim.weight_decay,
    c.optim.epochs,
    c.optim.plateau_factor,
    c.optim.plateau_max_drops,
  ) == (256, 1e-2, 0.9, 5e-4, 74, 0.1, 3)
  assert c.data.scale == (256, 512) and c.data.crop == 224 and c.data.eval_scale == 384
  assert c.data.flip and c.data.pca_std == 0.1
  assert experiment_config("paper", "S=384").optim.lr == 1e-3
  assert experiment_config("paper", "S=256").data.eval_scale == 256


def test_fashion_mnist_scales_map_onto_the_papers():
  scales = [experiment_config("fashion_mnist", f"S={s}").data.scale for s in ("32", "40", "32-48")]
  assert scales == [(32, 32), (40, 40), (32, 48)]
  assert experiment_config("fashion_mnist", "S=32-48").data.eval_scale == 40
  quick = experiment_config("fashion_mnist", "quick")
  assert quick.optim.max_steps > 0 and quick.data.crop == 32 and quick.data.pad_to == 32


def test_paper_evaluations_are_the_tables_protocols():
  fixed = config_lib.paper_evaluations((32, 32), split="test")
  assert [config_lib.parse_evaluation(e) for e in fixed] == [
    ("dense", "", "test"),
    ("dense", "table4", "test"),
  ]  # Tables 3 and 4
  jittered = config_lib.paper_evaluations((32, 48), split="test", table5_split="test[:9]")
  assert [config_lib.parse_evaluation(e) for e in jittered][2:] == [
    ("dense", "table4", "test[:9]"),
    ("multicrop", "table4", "test[:9]"),
    ("multicrop+dense", "table4", "test[:9]"),
  ]  # Table 5's three, on one subset
  assert experiment_config("paper", "S=256-512").evaluations == (
    "dense",
    "dense@table4",
    "multicrop@table4",
    "multicrop+dense@table4",
  )
  held_out = experiment_config("fashion_mnist", "holdout=5000")
  assert (held_out.data.train_split, held_out.data.eval_split) == ("train[:55000]", "train[55000:]")
  assert held_out.evaluations == ("dense@@test", "dense@table4@test")  # never the holdout


def test_every_experiment_validates():
  for name, arg in [
    ("paper", ""),
    ("paper", "model=A-LRN,S=384"),
    ("fashion_mnist", ""),
    ("fashion_mnist", "quick,model=E,S=32-48"),
  ]:
    config_lib.validate(experiment_config(name, arg), data_parallel=8)


def test_unknown_argument_lists_the_known_ones():
  with pytest.raises(ValueError, match="unknown config argument 'modle'.*model"):
    experiment_config("fashion_mnist", "modle=D")


def test_unknown_field_is_an_error():
  c = config_lib.base_config()
  with pytest.raises(AttributeError):
    c.optim.learning_rate = 0.1  # locked: a typo cannot become a new field
  loose = config_lib.base_config().to_dict()
  loose["optim"]["learnig_rate"] = 0.1
  with pytest.raises(ValueError, match="unknown config fields: optim.learnig_rate"):
    config_lib.validate(ml_collections.ConfigDict(loose), data_parallel=1)


@pytest.mark.parametrize(
  "edit,message",
  [
    (lambda c: c.model.update(name="F"), "unknown VGG configuration 'F'"),
    (lambda c: c.optim.update(batch_size=100), "batch_size 100 is not divisible by the 8"),
    (lambda c: c.data.update(scale=(200, 200)), "S=200 must be at least the crop 224"),
    (lambda c: c.data.update(eval_scale=128), "Q=128 is below the crop"),
    (lambda c: setattr(c, "evaluations", ("tencrop@table4",)), "'tencrop@table4' is not PROTOCOL"),
    (lambda c: setattr(c, "evaluations", ("dense@table4@test@x",)), "is not PROTOCOL"),
  ],
)
def test_bad_values_are_clear_errors(edit, message):
  c = experiment_config("paper", "")
  edit(c)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c, data_parallel=8)
