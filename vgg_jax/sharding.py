"""The mesh and the sharding rules: which array lives where, as data.

A rule is (regex, spec): the first regex that `re.search`es an array's path in the
train state ("params/fc6/kernel", "opt_state/0/trace/fc6/kernel", ...) gives its
PartitionSpec, written as a tuple of mesh-axis names (None: not sharded; a shorter
tuple leaves the trailing axes unsharded). The same rules therefore place a parameter
and its optimiser momentum alike. Presets cover the layouts that matter for VGG, whose
fc6 and fc7 hold ~90% of the parameters:

  replicated  every device holds everything (data parallelism, as in the paper)
  fsdp        fc6/fc7 kernels and their momenta split over the `data` axis
  tensor      fc6 column-parallel and fc7 row-parallel over the `model` axis
"""

import math
import re
from typing import Any, Sequence

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, tuple]]

PRESETS: dict[str, Rules] = {
  "replicated": ((".*", ()),),
  "fsdp": ((r"fc6/kernel$", (None, None, None, "data")), (r"fc7/kernel$", ("data",)), (".*", ())),
  "tensor": (
    (r"fc6/kernel$", (None, None, None, "model")),
    (r"fc6/bias$", ("model",)),
    (r"fc7/kernel$", ("model",)),
    (".*", ()),
  ),
}


def make_mesh(
  axes: Sequence[tuple[str, int]], devices: Sequence | None = None
) -> jax.sharding.Mesh:
  """A mesh from [(name, size)], e.g. [("data", -1), ("model", 1)]; one size may be -1
  (all the remaining devices). A single process may use fewer than all its devices
  (the first ones), which is how tests compare 1, 4 and 8 devices in one process.
  `devices` (default: this process's) may be a TPU topology's, to compile for a slice
  this machine is not (`vgg_jax.tpu_compile`)."""
  local = devices is None
  devices = jax.devices() if local else list(devices)
  names = [name for name, _ in axes]
  sizes = [size for _, size in axes]
  if -1 in sizes:
    sizes[sizes.index(-1)] = len(devices) // math.prod(s for s in sizes if s != -1)
  used = math.prod(sizes)
  if used > len(devices) or (local and jax.process_count() > 1 and used != len(devices)):
    raise ValueError(
      f"mesh {dict(zip(names, sizes))} does not fit the {len(devices)} devices"
      + (f" of {jax.process_count()} process(es)" if local else "")
    )
  return jax.make_mesh(
    sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices[:used]
  )


def resolve_rules(rules: str | Rules) -> Rules:
  if isinstance(rules, str):
    if rules not in PRESETS:
      raise ValueError(
        f"unknown sharding preset {rules!r}; choose one of "
        f"{', '.join(PRESETS)} or give [(regex, spec), ...]"
      )
    return PRESETS[rules]
  return tuple((pattern, tuple(spec)) for pattern, spec in rules)


def path_string(path) -> str:
  """ "params/fc6/kernel" for a jax key path; NNX Variables' own `value` level is dropped."""
  parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(parts[:-1] if parts[-1:] == ["value"] else parts)


def spec_for(path: str, shape: tuple[int, ...], rules: Rules, mesh: jax.sharding.Mesh) -> P:
  for pattern, spec in rules:
    if re.search(pattern, path):
      spec = spec[: len(shape)]
      for dim, axis in zip(shape, spec):
        if axis is not None and dim % mesh.shape[axis]:
          raise ValueError(
            f"cannot shard {path} {shape} over mesh axis {axis!r} of "
            f"size {mesh.shape[axis]} (rule {pattern!r})"
          )
      return P(*spec)
  raise ValueError(f"no sharding rule matches {path}; end the rules with ('.*', ())")


def state_shardings(abstract_state: Any, rules: str | Rules, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for every array of a (possibly abstract) pytree."""
  rules = resolve_rules(rules)
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(mesh, spec_for(path_string(path), tuple(x.shape), rules, mesh)),
    abstract_state,
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches are split over `data` (leading axis) and replicated over other axes."""
  return NamedSharding(mesh, P("data"))
