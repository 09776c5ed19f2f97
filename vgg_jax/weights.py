"""Pretrained weights into vgg_jax models.

Every importer works in two steps:
  1. a source-specific function turns the source's tensors into a flat mapping from
     vgg_jax paths ("conv3_3/kernel", "fc6/kernel", "bn1_1/mean") to numpy arrays already
     in vgg_jax's layouts, each tagged with the name it had in the source;
  2. `load_tensors` checks that mapping against the model as a whole (no missing,
     extra or mis-shaped tensor) and only then writes it, so a failed load leaves the
     model as it was.
Only step 1 knows about a source; new formats (torchvision, orbax) add a step 1.

vgg_jax layouts (see `vgg_jax.model`): conv kernels (kh, kw, in, out); fc7/fc8 kernels
(in, out); fc6 as a (K, K, C, F) conv kernel, K = image_size // 32, whose reshape to
(K*K*C, F) multiplies the final feature map flattened in HWC order.
"""

import math
import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The variable kinds a checkpoint fills: weights and BN running statistics.
LOADED = (nnx.Param, nnx.BatchStat)
_SHOWN = 8  # how many names an error message lists before "and N more"


class Tensor(NamedTuple):
  """One source tensor, already in vgg_jax layout; `source` names it in the source."""
  value: np.ndarray
  source: str


# ---------------------------------------------------------------- generic loading


def model_tensors(model: nnx.Module) -> dict[str, nnx.Variable]:
  """The model's loadable variables by path ("fc6/kernel"); works on abstract models."""
  return {"/".join(map(str, path)): node for path, node in nnx.iter_graph(model)
          if isinstance(node, LOADED)}


def _checked(path: str, variable: nnx.Variable, tensor: Tensor) -> np.ndarray:
  """The one shape check every write goes through."""
  value = np.asarray(tensor.value)
  if value.shape != tuple(variable.shape):
    raise ValueError(f"{path} (from {tensor.source}): source shape {value.shape} does not "
                     f"match the model's {tuple(variable.shape)}")
  return value


def _write(variable: nnx.Variable, value: np.ndarray):
  """Stores `value` in the variable's dtype, and on its sharding when it has one."""
  old = variable.get_value()
  new = jnp.asarray(value, dtype=variable.dtype)
  if isinstance(old, jax.Array):
    new = jax.device_put(new, old.sharding)
  variable.set_value(new)


def _listing(names) -> str:
  names = sorted(names)
  more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
  return ", ".join(names[:_SHOWN]) + more


def _as_tensor(value: Any, source: str) -> Tensor:
  return value if isinstance(value, Tensor) else Tensor(value, source)


def assign(model: nnx.Module, path: str, value: Any, *, source: str = "the given array"):
  """Writes one tensor into `model` at `path` ("conv1_1/kernel"), checking its shape."""
  variables = model_tensors(model)
  if path not in variables:
    raise ValueError(f"{path} (from {source}) has no place in the model; its tensors are "
                     f"{_listing(variables)}")
  _write(variables[path], _checked(path, variables[path], _as_tensor(value, source)))


def load_tensors(model: nnx.Module, tensors: Mapping[str, Any], *,
                 source: str = "the checkpoint"):
  """Fills every loadable variable of `model` from `tensors` (path -> `Tensor` or
  array), in place. All checks run before the first write."""
  tensors = {path: _as_tensor(value, f"{source} {path}") for path, value in tensors.items()}
  variables = model_tensors(model)
  missing = variables.keys() - tensors.keys()
  extra = tensors.keys() - variables.keys()
  if missing or extra:
    name = getattr(getattr(model, "cfg", None), "name", None)
    target = f"the VGG-{name} model" if name else "the model"
    problems = []
    if missing:
      problems.append(f"{len(missing)} tensors of {target} are missing from {source}: "
                      f"{_listing(missing)}")
    if extra:
      problems.append(f"{len(extra)} tensors of {source} have no place in {target}: "
                      + _listing(f"{p} (from {tensors[p].source})" for p in extra))
    raise ValueError("; ".join(problems))
  checked = {path: _checked(path, variables[path], tensor) for path, tensor in tensors.items()}
  for path, value in checked.items():
    _write(variables[path], value)


# ---------------------------------------------------------------- Keras 3


_KERAS_CONV = re.compile(r"block(\d+)_conv(\d+)")
KERAS_HEAD = {"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}


def keras_layer_name(name: str) -> str | None:
  """vgg_jax's name for a layer of keras.applications.VGG16/VGG19, or None."""
  match = _KERAS_CONV.fullmatch(name)
  if match:
    return f"conv{match[1]}_{match[2]}"
  return KERAS_HEAD.get(name)


def _unflatten_fc1(kernel: np.ndarray, channels: int | None, source: str) -> np.ndarray:
  """Keras's fc1 kernel is (K*K*C, F) and its Flatten always emits HWC order (even
  under channels_first, where it transposes to channels-last first), which is exactly
  the row order of fc6's (K, K, C, F) kernel: a plain reshape, no transpose."""
  rows = kernel.shape[0] if kernel.ndim == 2 else 0
  k = math.isqrt(rows // channels) if channels and rows % channels == 0 else 0
  if not channels or kernel.ndim != 2 or k * k * channels != rows:
    raise ValueError(f"fc6/kernel (from {source}): cannot unflatten source shape "
                     f"{kernel.shape} into (K, K, {channels}, F) after a conv layer with "
                     f"{channels} channels")
  return kernel.reshape(k, k, channels, kernel.shape[1])


def keras_tensors(keras_model) -> dict[str, Tensor]:
  """The weights of a built Keras VGG16/VGG19 (include_top=True) as vgg_jax tensors.

  Keras already stores conv kernels (kh, kw, in, out) and Dense kernels (in, out), as
  vgg_jax does; only fc1 -> fc6 needs a reshape. Needs no keras import: it reads
  `layer.weights` for names and `layer.get_weights()` for numpy values."""
  tensors, channels = {}, None
  for layer in keras_model.layers:
    layer_weights = layer.weights
    if not layer_weights:
      continue
    target = keras_layer_name(layer.name)
    # Named layer/variable: Keras's variable.path also carries the enclosing model's
    # name when a layer was built inside one (e.g. "sequential/fc1/kernel").
    names = [f"{layer.name}/{variable.name}" for variable in layer_weights]
    if target is None:
      raise ValueError(f"Keras layer {layer.name!r} has weights ({', '.join(names)}) but "
                       "no vgg_jax counterpart")
    for variable, name, value in zip(layer_weights, names, layer.get_weights()):
      source = f"Keras {name}"
      if target == "fc6" and variable.name == "kernel":
        source = f"{source} {value.shape} unflattened"
        value = _unflatten_fc1(value, channels, f"Keras {name}")
      tensors[f"{target}/{variable.name}"] = Tensor(value, source)
    if target.startswith("conv"):
      channels = tensors[f"{target}/kernel"].value.shape[-1]
  return tensors


def keras_to_vgg(keras_model, model: nnx.Module) -> nnx.Module:
  """Copies a built keras.applications.VGG16/VGG19 (include_top=True) into a vgg_jax
  "D"/"E" model in place and returns it. Keras's preprocessing ("caffe": BGR, mean
  subtracted) is not part of either model; feed both the same preprocessed input."""
  load_tensors(model, keras_tensors(keras_model), source=f"Keras model {keras_model.name!r}")
  return model


def load_keras(path: str, model: nnx.Module) -> nnx.Module:
  """Loads a whole saved Keras model (.keras or .h5) and copies it into `model`.
  Imports keras only here, on the JAX backend unless KERAS_BACKEND says otherwise
  (which only takes effect if keras was not imported yet)."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # pylint: disable=import-outside-toplevel
  return keras_to_vgg(keras.saving.load_model(path, compile=False), model)
