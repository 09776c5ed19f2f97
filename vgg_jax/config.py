"""The config schema every experiment starts from, argument parsing, validation.

Experiments (`experiments/*.py`) are big_vision-style: `get_config(arg)` takes a short
string such as "model=D,S=256-512" or "quick", parses it with `parse_arg` and edits a
copy of `base_config()`. The base config is locked, so an experiment or a
`--config.x=y` override that names an unknown field fails at once.
"""

import importlib.util
import os

import jax.numpy as jnp
import ml_collections

from vgg_jax import data, model, profiling
from vgg_jax.scale import Scale


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with the paper's ImageNet recipe as defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = dict(
    name="A",
    width=1.0,
    fc_width=0,
    batch_norm=False,
    dropout=0.5,
    init="paper",
    init_std=1e-2,  # std, not variance: see VGGConfig
    lrn_alpha_over_n=False,
    dtype="float32",
    param_dtype="float32",
    # How the step computes pools, ReLU gradients and convolutions, same values either
    # way (see VGGConfig): "reduce_window" | "reshape", "input" | "output",
    # "auto" | "xla" | "gemm".
    pool="reshape",
    relu_grad="input",
    conv="auto",
  )

  # Every field is documented in vgg_jax.data.default_config. S is always (lo, hi):
  # ConfigDict fields keep their type, and (256, 256) is a fixed S.
  c.data = dict(data.DEFAULTS, scale=(256, 256))

  c.optim = dict(
    batch_size=256,
    lr=1e-2,
    momentum=0.9,
    weight_decay=5e-4,
    decay_biases=False,  # L2 on weights only, as Caffe's VGG solver
    epochs=74,
    max_steps=0,  # max_steps > 0 stops earlier (smoke runs)
    # LR / 10 when validation accuracy stops improving (Section 3.1), at most 3 times.
    # The paper gives no patience; 2 epochs is our choice. Validations before epoch
    # plateau_from_epoch are not fed to the rule (our choice, for deep nets' slow
    # start on short schedules; 0: the rule from the first epoch).
    plateau_factor=0.1,
    plateau_patience=2,
    plateau_max_drops=3,
    plateau_min_delta=1e-4,
    plateau_from_epoch=0,
    # LR / plateau_factor after each of these epochs as well (our choice, for runs too
    # short for the rule to fire: a 4-epoch run ends before a plateau shows; () is the
    # paper's rule alone). Counted in plateau_max_drops.
    lr_drop_epochs=(),
  )

  # Start from another run's weights (Section 3.1's chain): "paper" copies its first
  # four conv and three FC layers (B-E from A), "all" every layer (S=384 from 256).
  c.warm_start = dict(workdir="", layers="paper")

  c.mesh = (("data", -1), ("model", 1))
  c.sharding = "replicated"  # a preset of vgg_jax.sharding.PRESETS ...
  c.sharding_rules = ()  # ... or, when given, rules ((regex, spec), ...) instead

  # What `launch.py eval --configured` (and so a sweep) evaluates once a run has
  # trained: "PROTOCOL[@SCALES[@SPLIT]]" (see `parse_evaluation`).
  c.evaluations = ("dense",)

  c.checkpoint = dict(every_steps=1000, keep=3, keep_best=True)
  c.log_every_steps = 50
  c.eval_every_epochs = 1
  # (first, last) train steps to trace with jax.profiler into WORKDIR/profile, which
  # TensorBoard's profile tab reads; (0, 0) traces nothing (see vgg_jax.profiling).
  c.profile_steps = (0, 0)
  c.lock()
  return c


def network_config(
  config: ml_collections.ConfigDict, num_classes: int, in_channels: int
) -> model.VGGConfig:
  """The network a run's config asks for; the classes and channels come from its data,
  and for "he" init the input's standard deviation from the data's statistics (so the
  model itself knows no input pipeline)."""
  m = config.model
  input_std = (
    data.load_stats(config.data.stats or config.data.name).pixel_std
    if m.init in model.INPUT_SCALED
    else 1.0
  )
  return model.VGGConfig(
    name=m.name,
    num_classes=num_classes,
    width=m.width,
    fc_width=m.fc_width or None,
    batch_norm=m.batch_norm,
    dropout=m.dropout,
    image_size=config.data.crop,
    in_channels=in_channels,
    init=m.init,
    init_std=m.init_std,
    input_std=input_std,
    lrn=model.LRNConfig(alpha_over_n=m.lrn_alpha_over_n),
    dtype=jnp.dtype(m.dtype),
    param_dtype=jnp.dtype(m.param_dtype),
    # same values either way; runs from before these fields computed the first
    pool=m.get("pool", "reduce_window"),
    relu_grad=m.get("relu_grad", "input"),
    conv=m.get("conv", "xla"),
  )


EXPERIMENTS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"
)


def load_experiment_module(name: str):
  """experiments/NAME.py (or a path) as a module: its get_config(arg), maybe sweep(arg)."""
  path = name if name.endswith(".py") else os.path.join(EXPERIMENTS, f"{name}.py")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def experiment_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """`get_config(arg)` of experiments/NAME.py (or of a path): what `launch.py train
  --config FILE:ARG` loads, for notebooks, tests and sweeps."""
  return load_experiment_module(name).get_config(arg)


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """ "a=1,b=x,quick" -> {a: 1, b: "x", quick: True}, typed like `defaults`; a bare
  name sets a boolean. Unknown keys are errors that list the known ones."""
  parsed = ml_collections.ConfigDict(defaults)
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    key, has_value, value = token.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      parsed[key] = value.lower() in ("1", "true", "yes") if has_value else True
    else:
      parsed[key] = type(default)(value)
  return parsed


PROTOCOLS = ("single", "dense", "multicrop", "multicrop+dense")


def parse_evaluation(spec: str) -> tuple[str, str, str]:
  """ "multicrop@table4@test[:2000]" -> (protocol, scales, split); scales "" is the run's
  own Q and split "" its eval split (see `evaluate.resolve_scales`)."""
  protocol, scales, split, *rest = spec.split("@") + ["", ""]
  if protocol not in PROTOCOLS or any(rest):
    raise ValueError(
      f"evaluation {spec!r} is not PROTOCOL[@SCALES[@SPLIT]] with PROTOCOL "
      f"one of {', '.join(PROTOCOLS)}"
    )
  return protocol, scales, split


def paper_evaluations(scale, split: str = "", table5_split: str = "") -> tuple[str, ...]:
  """The evaluations behind the paper's tables for a run trained at S = `scale`: dense
  at its own Q (Table 3) and at Table 4's three scales; for a jittered S also Table 5's
  three protocols at those scales, on `table5_split` (multi-crop costs 50 views an image
  per scale, so a small data set's sweep may take a subset; "" : `split`)."""
  spec = lambda protocol, scales, on: "@".join((protocol, scales, on)).rstrip("@")  # noqa: E731
  evaluations = (spec("dense", "", split), spec("dense", "table4", split))
  if not Scale.of(scale).fixed:
    evaluations += tuple(
      spec(protocol, "table4", table5_split or split)
      for protocol in ("dense", "multicrop", "multicrop+dense")
    )
  return tuple(dict.fromkeys(evaluations))  # table5_split == split: dense@table4 once


class ConfigError(ValueError):
  """The config asks for something that cannot run; the message names the field."""


class BadArgument(ConfigError):
  """A --config FILE:ARG that names no file, or an ARG its experiment refuses: a usage
  error, as a bad flag (launch.py exits with status 2)."""


def validate(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  """Checks what would otherwise fail late, or silently, before any compute (and
  before anything is written): ConfigError naming the problem."""
  try:
    _check(config, data_parallel)
  except ValueError as e:
    raise ConfigError(f"config: {e}") from e


def _check(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  unknown = set(flat_fields(config)) - set(flat_fields(base_config()))
  if unknown:
    raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
  # The network's own checks (width, dropout, init, crop); its classes and channels
  # come from the data, read later.
  network_config(config, num_classes=1, in_channels=1)
  if not config.optim.lr > 0:
    raise ValueError(f"optim.lr {config.optim.lr} must be positive")
  if config.optim.batch_size < 1:
    raise ValueError(f"optim.batch_size {config.optim.batch_size} must be at least 1")
  if config.optim.batch_size % data_parallel:
    raise ValueError(
      f"batch_size {config.optim.batch_size} is not divisible by the "
      f"{data_parallel} devices of the mesh's data axis"
    )
  scale = Scale.of(config.data.scale)
  if config.data.crop > scale.lo:
    raise ValueError(f"training scale S={scale} must be at least the crop {config.data.crop}")
  if config.data.eval_scale < config.data.crop:
    raise ValueError(f"eval_scale Q={config.data.eval_scale} is below the crop {config.data.crop}")
  for epoch in config.optim.lr_drop_epochs:
    if not (isinstance(epoch, int) and epoch > 0 and epoch % config.eval_every_epochs == 0):
      raise ValueError(
        f"lr_drop_epochs {tuple(config.optim.lr_drop_epochs)}: the LR drops after a "
        f"validation, so each must be a whole epoch that eval_every_epochs="
        f"{config.eval_every_epochs} validates"
      )
  for spec in config.evaluations:
    parse_evaluation(spec)
  profiling.check_steps(config.profile_steps)
  _check_manual_dir(config.data)


def _check_manual_dir(cfg: ml_collections.ConfigDict) -> None:
  """A manual_dir must hold the files the backend reads from it: Fashion-MNIST's IDX
  files (the numpy and device backends read nothing else; tfds builds Fashion-MNIST
  from them). Whether tfds would read it at all (not when the dataset is already
  prepared) is checked where the builder is (`tfds_backend.prepared_builder`)."""
  if cfg.manual_dir and (cfg.backend != "tfds" or cfg.name == "fashion_mnist"):
    try:
      data.fashion_mnist_dir(cfg.manual_dir)
    except FileNotFoundError as e:
      raise ValueError(f"data.manual_dir: {e}") from e


def flat_fields(tree, prefix: str = "") -> dict[str, object]:
  """{"optim.max_steps": 40, ...}: the leaves of a ConfigDict, or of a config as JSON,
  by dotted path."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(flat_fields(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat
