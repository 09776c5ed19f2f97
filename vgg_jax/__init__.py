"""vgg_jax: the networks of Simonyan & Zisserman (arXiv:1409.1556) in JAX / Flax NNX."""

from vgg_jax.architectures import CONFIG_NAMES, TABLE1, canonical_name, weight_layers
from vgg_jax.model import (
  VGG,
  LRNConfig,
  VGGConfig,
  count_macs,
  count_params,
  create_model,
  local_response_norm,
)

__all__ = [
  "CONFIG_NAMES",
  "TABLE1",
  "canonical_name",
  "weight_layers",
  "LRNConfig",
  "VGG",
  "VGGConfig",
  "count_macs",
  "count_params",
  "create_model",
  "local_response_norm",
]
