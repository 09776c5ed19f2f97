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

from vgg_jax import paths

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
  return {
    "/".join(map(str, path)): node
    for path, node in nnx.iter_graph(model)
    if isinstance(node, LOADED)
  }


def _checked(path: str, variable: nnx.Variable, tensor: Tensor) -> np.ndarray:
  """The one shape check every write goes through."""
  value = np.asarray(tensor.value)
  if value.shape != tuple(variable.shape):
    raise ValueError(
      f"{path} (from {tensor.source}): source shape {value.shape} does not "
      f"match the model's {tuple(variable.shape)}"
    )
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
    raise ValueError(
      f"{path} (from {source}) has no place in the model; its tensors are {_listing(variables)}"
    )
  _write(variables[path], _checked(path, variables[path], _as_tensor(value, source)))


def checked_tensors(
  model: nnx.Module, tensors: Mapping[str, Any], *, source: str = "the checkpoint"
) -> dict[str, np.ndarray]:
  """`tensors` (path -> `Tensor` or array) as arrays, after checking that they fill
  every loadable variable of `model` exactly: none missing, none extra, all shapes."""
  tensors = {path: _as_tensor(value, f"{source} {path}") for path, value in tensors.items()}
  variables = model_tensors(model)
  missing = variables.keys() - tensors.keys()
  extra = tensors.keys() - variables.keys()
  if missing or extra:
    name = getattr(getattr(model, "cfg", None), "name", None)
    target = f"the VGG-{name} model" if name else "the model"
    problems = []
    if missing:
      problems.append(
        f"{len(missing)} tensors of {target} are missing from {source}: {_listing(missing)}"
      )
    if extra:
      problems.append(
        f"{len(extra)} tensors of {source} have no place in {target}: "
        + _listing(f"{p} (from {tensors[p].source})" for p in extra)
      )
    raise ValueError("; ".join(problems))
  return {path: _checked(path, variables[path], tensor) for path, tensor in tensors.items()}


def load_tensors(model: nnx.Module, tensors: Mapping[str, Any], *, source: str = "the checkpoint"):
  """Fills every loadable variable of `model` from `tensors` (path -> `Tensor` or
  array), in place. All checks run before the first write."""
  variables = model_tensors(model)
  for path, value in checked_tensors(model, tensors, source=source).items():
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
    raise ValueError(
      f"fc6/kernel (from {source}): cannot unflatten source shape "
      f"{kernel.shape} into (K, K, {channels}, F) after a conv layer with "
      f"{channels} channels"
    )
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
      raise ValueError(
        f"Keras layer {layer.name!r} has weights ({', '.join(names)}) but no vgg_jax counterpart"
      )
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
  return keras_to_vgg(read_keras(path), model)


def read_keras(path: str):
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras  # pylint: disable=import-outside-toplevel

  try:
    return keras.saving.load_model(path, compile=False)
  except Exception as e:  # h5py, zipfile and Keras each raise their own
    raise paths.BadFile(path, f"not a Keras model: {e}") from e


# ---------------------------------------------------------------- torchvision


TORCHVISION_HEAD = {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"}
_TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_BN_TO_TORCH = {v: k for k, v in _TORCH_BN.items()}
# A counter torchvision keeps beside BN statistics; it does not change any output.
_IGNORED_TORCH_SUFFIX = ".num_batches_tracked"


def torchvision_names(model: nnx.Module) -> dict[str, str]:
  """torchvision module name for each vgg_jax layer with weights. torchvision's
  `features` is a Sequential of conv, [BN,] ReLU and pool modules in exactly the order
  of vgg_jax's plan, so a layer's index there is its position in the plan."""
  names = {}
  for index, layer in enumerate(model.plan[: model.plan.index("fc6")]):
    if layer.startswith(("conv", "bn")):
      names[layer] = f"features.{index}"
    elif layer.startswith("lrn"):
      raise ValueError("torchvision has no LRN: A-LRN has no torchvision layout")
  return names | {v: k for k, v in TORCHVISION_HEAD.items()}


def _fc6_from_torch(weight: np.ndarray, k: int, source: str) -> np.ndarray:
  """torchvision's classifier.0 is (F, C*K*K) over the NCHW-flattened map (row index
  c*K*K + h*K + w); fc6 is (K, K, C, F) over HWC order."""
  out, rows = weight.shape
  if rows % (k * k):
    raise ValueError(
      f"fc6/kernel (from {source}): source shape {weight.shape} is not (F, C*{k}*{k})"
    )
  return weight.T.reshape(rows // (k * k), k, k, out).transpose(1, 2, 0, 3)


def _fc6_to_torch(kernel: np.ndarray) -> np.ndarray:
  k, _, channels, out = kernel.shape
  return kernel.transpose(2, 0, 1, 3).reshape(channels * k * k, out).T


def torchvision_tensors(state_dict: Mapping[str, Any], model: nnx.Module) -> dict[str, Tensor]:
  """A torchvision VGG state dict (numpy or torch values) as vgg_jax tensors for
  `model`'s layout: OIHW conv weights -> HWIO kernels, (out, in) Linear weights ->
  (in, out), classifier.0 un-flattened from NCHW order, BN weight/bias/statistics."""
  by_torch = {v: k for k, v in torchvision_names(model).items()}
  k = model.cfg.head_kernel
  tensors = {}
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_TORCH_SUFFIX):
      continue
    module, _, kind = key.rpartition(".")
    layer, source = by_torch.get(module), f"torchvision {key}"
    value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if layer is None:
      tensors[key] = Tensor(value, source)  # load_tensors reports it as extra
    elif layer.startswith("bn"):
      tensors[f"{layer}/{_TORCH_BN.get(kind, kind)}"] = Tensor(value, source)
    elif kind == "bias":
      tensors[f"{layer}/bias"] = Tensor(value, source)
    elif layer == "fc6":
      tensors["fc6/kernel"] = Tensor(_fc6_from_torch(value, k, source), source)
    elif layer.startswith("fc"):
      tensors[f"{layer}/kernel"] = Tensor(value.T, source)
    else:
      tensors[f"{layer}/kernel"] = Tensor(value.transpose(2, 3, 1, 0), source)
  return tensors


def load_torchvision(state_dict_or_path: Any, model: nnx.Module) -> nnx.Module:
  """Fills `model` (built with the matching config, e.g. create_model("vgg16",
  batch_norm=True) for vgg16_bn) from a torchvision state dict or a `.pth` file."""
  state_dict, source = state_dict_or_path, "the state dict"
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    source = os.fspath(state_dict_or_path)
    state_dict = read_pth(source)
  load_tensors(model, torchvision_tensors(state_dict, model), source=f"torchvision {source}")
  return model


def torchvision_model_args(state_dict: Mapping[str, Any]) -> dict:
  """`create_model` arguments for the network a torchvision VGG state dict holds."""
  kernels = [
    v
    for k, v in state_dict.items()
    if k.startswith("features.") and k.endswith(".weight") and len(v.shape) == 4
  ]
  depth = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}.get(len(kernels))
  if depth is None or "classifier.0.weight" not in state_dict:
    raise ValueError(
      f"not a torchvision VGG state dict: {len(kernels)} conv layers, keys {_listing(state_dict)}"
    )
  fc1, fc3 = state_dict["classifier.0.weight"], state_dict["classifier.6.weight"]
  channels = kernels[-1].shape[0]
  width = kernels[0].shape[0] / 64
  return dict(
    name=depth,
    batch_norm=any(k.endswith(".running_mean") for k in state_dict),
    num_classes=fc3.shape[0],
    width=width,
    fc_width=fc1.shape[0] if fc1.shape[0] != round(4096 * width) else None,
    image_size=32 * math.isqrt(fc1.shape[1] // channels),
  )


def read_pth(path: str) -> Mapping[str, Any]:
  import torch  # pylint: disable=import-outside-toplevel

  try:
    with paths.Path(path).open("rb") as f:
      state_dict = torch.load(f, map_location="cpu", weights_only=True)
  except Exception as e:
    raise paths.BadFile(path, f"not a torch state dict: {e}") from e
  if not isinstance(state_dict, Mapping):
    raise paths.BadFile(path, f"holds a {type(state_dict).__name__}, not a state dict")
  return state_dict


def to_torchvision(model: nnx.Module) -> dict[str, np.ndarray]:
  """The inverse of `torchvision_tensors`: a torchvision VGG state dict as numpy arrays
  (wrap with torch.from_numpy to load it). BN's num_batches_tracked, which vgg_jax does
  not keep, is exported as 0."""
  names, out = torchvision_names(model), {}
  for path, variable in model_tensors(model).items():
    layer, kind = path.split("/")
    value = np.asarray(variable.get_value())
    module = names[layer]
    if layer.startswith("bn"):
      out[f"{module}.{_BN_TO_TORCH[kind]}"] = value
      out[f"{module}{_IGNORED_TORCH_SUFFIX}"] = np.zeros((), np.int64)
    elif kind == "bias":
      out[f"{module}.bias"] = value
    elif layer == "fc6":
      out[f"{module}.weight"] = _fc6_to_torch(value)
    elif layer.startswith("fc"):
      out[f"{module}.weight"] = value.T
    else:
      out[f"{module}.weight"] = value.transpose(3, 2, 0, 1)
  return out


# ---------------------------------------------------------------- files, vgg_jax's own


def import_file(source: str, path: str) -> nnx.Module:
  """A VGG holding the weights of a torchvision `.pth` or a Keras `.keras`/`.h5` file,
  its configuration read from the file itself."""
  from vgg_jax.model import create_model  # pylint: disable=import-outside-toplevel

  if source == "torchvision":
    state_dict = read_pth(path)
    args = torchvision_model_args(state_dict)
    return load_torchvision(state_dict, nnx.eval_shape(lambda: create_model(**args)))
  if source == "keras":
    keras_model = read_keras(path)
    convs = sum(
      keras_layer_name(layer.name) is not None and layer.name.startswith("block")
      for layer in keras_model.layers
    )
    name = {13: "vgg16", 16: "vgg19"}.get(convs)
    if name is None:
      raise ValueError(f"{path} is not a Keras VGG16/VGG19: {convs} conv layers")
    args = dict(
      name=name,
      num_classes=keras_model.get_layer("predictions").units,
      image_size=keras_model.input_shape[1],
    )
    return keras_to_vgg(keras_model, nnx.eval_shape(lambda: create_model(**args)))
  raise ValueError(f"unknown source {source!r}; choose torchvision or keras")


def weights_state(model: nnx.Module) -> dict:
  """The model's arrays laid out as in a training state: {"params", "batch_stats"}."""
  return {"params": nnx.state(model, nnx.Param), "batch_stats": nnx.state(model, nnx.BatchStat)}


def save_orbax(model: nnx.Module, directory: str) -> str:
  """Writes the weights as step 0 of an orbax checkpoint under DIRECTORY/checkpoints,
  with the model's signature: what `launch.py convert` writes, `load_orbax` reads."""
  from vgg_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  checkpoints = ckpt_lib.Checkpointer(directory, keep=1, keep_best=False)
  try:
    checkpoints.save(0, weights_state(model), {"model": model.cfg.signature()})
    checkpoints.wait()
  finally:
    checkpoints.close()
  return checkpoints.directory


def load_orbax(directory: str, model: nnx.Module, step: int | None = None) -> nnx.Module:
  """Fills `model` from a vgg_jax checkpoint: one written by `save_orbax` (or
  `launch.py convert`), or a training workdir (its newest checkpoint unless `step`;
  only the weights are read, not the optimiser). The saved model signature must match
  `model.cfg`'s, or the error names both."""
  from vgg_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  with ckpt_lib.reader(directory) as checkpoints:
    step = checkpoints.latest_step() if step is None else step
    restored = checkpoints.restore_weights(
      jax.tree.map(_abstract_on_device, weights_state(model)), step, model.cfg.signature()
    )
  nnx.update(model, restored["params"], restored["batch_stats"])
  return model


def _abstract_on_device(x) -> jax.ShapeDtypeStruct:
  sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(
    jax.local_devices()[0]
  )
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


# ---------------------------------------------------------------- input conventions


IMAGENET_RGB_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_RGB_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)


def preprocess(images: Any, source: str) -> jax.Array:
  """RGB images [..., H, W, 3] with values in 0-255 -> what weights from `source` expect.

  "torchvision": RGB scaled to [0, 1], then normalised by ImageNet's mean and std
    (torchvision's ToTensor + Normalize).
  "caffe" / "keras": channels flipped to BGR, then the mean pixel subtracted, no
    scaling (the released Caffe models; keras.applications.vgg16.preprocess_input).
  Mixing them up costs tens of points of accuracy without any error, hence one name
  per source."""
  x = jnp.asarray(images, jnp.float32)
  if source == "torchvision":
    return (x / 255.0 - IMAGENET_RGB_MEAN) / IMAGENET_RGB_STD
  if source in ("caffe", "keras"):
    return x[..., ::-1] - CAFFE_BGR_MEAN
  raise ValueError(f"unknown source {source!r}; choose torchvision, caffe or keras")


# ---------------------------------------------------------------- warm start


def warm_start_tensors(
  parent: nnx.Module, child: nnx.Module, layers: str = "paper"
) -> dict[str, np.ndarray]:
  """The parent's tensors that initialise `child` (Section 3.1's training chain).

  "paper": the parent's first four conv layers and its three FC layers, each into the
    child layer at the same position within its stage (same name: A's conv3_2 is the
    second conv of stage 3 in every config) when the shapes agree. This is how B-E
    start from the trained A; the paper leaves the pairing open and this is our reading.
  "all": every tensor, which must all agree (S=384 from S=256, [256,512] from 384).
  BN statistics travel with their layers."""
  ours, theirs = model_tensors(child), model_tensors(parent)
  if layers == "all":
    return checked_tensors(
      child,
      {p: np.asarray(v.get_value()) for p, v in theirs.items()},
      source=f"the parent VGG-{parent.cfg.name}",
    )
  if layers != "paper":
    raise ValueError(f"unknown warm start {layers!r}; choose paper or all")
  convs = [n for n in parent.plan if n.startswith("conv")][:4]
  chosen = set(convs) | {"fc6", "fc7", "fc8"}
  chosen |= {n.replace("conv", "bn", 1) for n in convs}
  copied = {
    path: np.asarray(v.get_value())
    for path, v in theirs.items()
    if path.split("/")[0] in chosen and path in ours and tuple(ours[path].shape) == tuple(v.shape)
  }
  if not copied:
    raise ValueError(f"no layer of the parent VGG-{parent.cfg.name} fits VGG-{child.cfg.name}")
  return copied
