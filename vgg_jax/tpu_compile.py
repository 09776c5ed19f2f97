"""A run's train and eval steps compiled for a TPU slice on any machine, before the pod
is booked (`launch.py compile --config CONFIG --topology v5p:2x2x2`).

libtpu compiles for a named topology without a TPU (deviceless ahead-of-time
compilation). The steps are the trainer's own (`train.build_program`: its mesh, sharding
rules, state shardings and donation), lowered on the topology's devices with an abstract
state and batch, so nothing is allocated and no data set is read (no TensorFlow). Every
figure comes from the compiled programs (`vgg_jax.xla_cost`); the chip's HBM, peak and
bandwidths from `util.TPU_CHIPS`.
"""

import dataclasses
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections

from vgg_jax import config as config_lib
from vgg_jax import data as data_lib
from vgg_jax import sharding as sharding_lib
from vgg_jax import train, xla_cost
from vgg_jax.util import TPU_CHIPS, TpuChip, markdown_table

# Chips of two TensorCores: JAX's mesh needs one device per chip (megacore mode).
MEGACORE = ("v4", "v5p")
GIB = 2**30


class UnknownTopology(ValueError):
  """libtpu knows no such slice, or the chip is not in `util.TPU_CHIPS`."""


class DoesNotFit(ValueError):
  """The run's step needs more HBM per chip than the chip has; the message names a rule."""


def chip_name(topology: str) -> str:
  """The chip of a topology name: "v5p" for "v5p:2x2x2"."""
  chip, _, shape = topology.partition(":")
  if chip not in TPU_CHIPS or not shape:
    raise UnknownTopology(
      f"unknown TPU topology {topology!r}: give CHIP:AxB[xC], CHIP one of "
      f"{', '.join(TPU_CHIPS)} (e.g. v5p:2x2x2)"
    )
  return chip


def compile_on_this_host():
  """Nothing runs here, so JAX's own backend is the CPU (else libtpu looks for a TPU on
  this machine); libtpu skips a TPU VM's metadata server, and may load beside a TPU
  backend. A JAX_PLATFORMS the user set wins."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")


def topology_devices(topology: str) -> list:
  """The devices of a TPU slice, one per chip, from libtpu's description of it."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  options = {"chip_config_name": "megacore"} if chip_name(topology) in MEGACORE else {}
  compile_on_this_host()
  try:
    return topologies.get_topology_desc(topology_name=topology, platform="tpu", **options).devices
  except Exception as e:  # libtpu's refusal is a bare RuntimeError over many lines
    cause = " ".join(str(e).split())[:200]
    raise UnknownTopology(f"libtpu does not know TPU topology {topology!r}: {cause}") from e


@dataclasses.dataclass(frozen=True)
class StepCost:
  """One compiled step on one chip: XLA's figures and the compile's wall time."""

  memory: xla_cost.Memory
  flops: float
  bytes_accessed: float
  collectives: dict[str, int]  # kind -> bytes a step
  collective_counts: dict[str, int]
  compile_s: float
  hlo: str = dataclasses.field(repr=False)

  def roofline(self, chip: TpuChip) -> dict[str, float]:
    """Seconds a step takes at least, by what bounds it: FLOPs at the bf16 peak, bytes at
    HBM bandwidth, collective bytes at ICI bandwidth (none overlaps perfectly with
    another, so the largest is a lower bound, not a forecast)."""
    return dict(
      compute=self.flops / chip.peak_flops,
      hbm=self.bytes_accessed / chip.hbm_bandwidth,
      ici=sum(self.collectives.values()) / chip.ici_bandwidth,
    )

  def bound_s(self, chip: TpuChip) -> float:
    return max(self.roofline(chip).values())


def step_cost(fn, *args) -> StepCost:
  """Lowers and compiles a jitted step for the mesh its arguments' shardings name."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - start
  return StepCost(
    memory=xla_cost.memory(compiled),
    flops=xla_cost.xla_flops(compiled) or 0.0,
    bytes_accessed=xla_cost.bytes_accessed(compiled) or 0.0,
    collectives=xla_cost.collective_bytes(compiled),
    collective_counts=xla_cost.collective_counts(compiled),
    compile_s=seconds,
    hlo=compiled.as_text(),
  )


def abstract_batch(batch_size: int, crop: int, channels: int, sharding) -> dict:
  """A batch as the input pipeline makes it (`vgg_jax.data`), shapes only."""

  def leaf(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  return dict(
    image=leaf((batch_size, crop, crop, channels), jnp.float32),
    label=leaf((batch_size,), jnp.int32),
    mask=leaf((batch_size,), jnp.bool_),
  )


@dataclasses.dataclass(frozen=True)
class Tensor:
  """An array of the train state and the bytes of its share on one chip."""

  path: str
  shape: tuple
  dtype: str
  chip_bytes: int


def state_tensors(abstract_state) -> list[Tensor]:
  """The train state's arrays, largest share per chip first."""
  found = []
  for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    share = math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    found.append(Tensor(sharding_lib.path_string(path), tuple(x.shape), str(x.dtype), share))
  return sorted(found, key=lambda t: -t.chip_bytes)


def rule_that_moves(tensor: Tensor, mesh: jax.sharding.Mesh) -> str | None:
  """The preset rule that leaves the least of `tensor` on a chip of `mesh`, if one
  leaves less than now."""
  best, least = None, tensor.chip_bytes
  for preset, rules in sharding_lib.PRESETS.items():
    pattern = next(p for p, _ in rules if re.search(p, tensor.path))
    try:
      spec = sharding_lib.spec_for(tensor.path, tensor.shape, rules, mesh)
    except ValueError:  # the rule's axis does not divide the tensor on this mesh
      continue
    split = math.prod(mesh.shape[axis] for axis in spec if axis is not None)
    share = math.prod(tensor.shape) * jnp.dtype(tensor.dtype).itemsize // split
    if share < least:
      best, least = f"{pattern!r} -> {tuple(spec)} (--config.sharding={preset})", share
  return best


@dataclasses.dataclass(frozen=True)
class SliceReport:
  """A run's steps compiled for one TPU slice."""

  topology: str
  chip: str
  chips: int
  hosts: int
  mesh: dict[str, int]
  config: ml_collections.ConfigDict
  train: StepCost
  eval: StepCost
  largest: Tensor
  rule: str | None  # the preset that would move `largest`

  @property
  def hbm(self) -> int:
    return TPU_CHIPS[self.chip].hbm_bytes

  @property
  def need(self) -> int:
    return max(self.train.memory.total, self.eval.memory.total)

  @property
  def fits(self) -> bool:
    return self.need <= self.hbm


def slice_program(config: ml_collections.ConfigDict, devices: list) -> tuple[train.Program, dict]:
  """The run's Program, as training builds it, on a mesh of `devices`, and its abstract
  batch."""
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  config_lib.validate(config, mesh.shape["data"])
  _, classes, channels = data_lib.DATASET_SIZES[config.data.name]
  program = train.build_program(config, mesh, classes, channels)
  batch = abstract_batch(
    config.optim.batch_size, config.data.crop, channels, program.batch_sharding
  )
  return program, batch


def compile_run(config: ml_collections.ConfigDict, topology: str) -> SliceReport:
  """The run's train and eval steps, as training builds them, compiled for `topology`."""
  devices = topology_devices(topology)
  program, batch = slice_program(config, devices)
  state = program.abstract_state
  largest = state_tensors(state)[0]
  return SliceReport(
    topology=topology,
    chip=chip_name(topology),
    chips=len(devices),
    hosts=len({d.process_index for d in devices}),
    mesh=dict(program.mesh.shape),
    config=config,
    train=step_cost(program.step, state, batch),
    eval=step_cost(program.eval, state, batch),
    largest=largest,
    rule=rule_that_moves(largest, program.mesh),
  )


def train_step_costs(configs: dict[str, ml_collections.ConfigDict], topology: str) -> dict:
  """Each named config's train step compiled for `topology`, once per distinct program
  (a config's seeds and fine-tunings share one): for a sweep's forecast."""
  devices = topology_devices(topology)
  compiled, costs = {}, {}
  for name, config in configs.items():
    program, batch = slice_program(config, devices)
    key = (train.program_key(config, program.mesh, program.model), config.optim.batch_size)
    if key not in compiled:
      compiled[key] = step_cost(program.step, program.abstract_state, batch)
    costs[name] = compiled[key]
  return costs


# ------------------------------------------------------------------------ the report


def gib(n: float) -> str:
  """Bytes in GiB, or in MiB below one GiB."""
  return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def collectives_text(step: StepCost) -> str:
  return (
    ", ".join(
      f"{xla_cost.COLLECTIVE_SHORT[kind]} {step.collective_counts[kind]} x, "
      f"{step.collectives[kind] / 2**20:.1f} MiB"
      for kind in sorted(step.collectives)
    )
    or "none"
  )


def roofline_text(step: StepCost, chip: TpuChip) -> str:
  parts = step.roofline(chip)
  return (
    f"{step.bound_s(chip) * 1e3:.2f} ms (compute {parts['compute'] * 1e3:.2f}, "
    f"HBM {parts['hbm'] * 1e3:.2f}, ICI {parts['ici'] * 1e3:.2f})"
  )


def verdict(report: SliceReport) -> str:
  """One line: fits, or by how much not and which rule would move the largest tensor."""
  chip = f"{report.chip}'s {report.hbm / GIB:.0f} GiB of HBM"
  if report.fits:
    return f"fits: {gib(report.need)} a chip of {chip} ({gib(report.hbm - report.need)} free)"
  t = report.largest
  move = (
    f"sharding rule {report.rule} would move it"
    if report.rule
    else "no preset splits it further on this mesh (more chips on its axis, or a smaller batch)"
  )
  return (
    f"does not fit: {gib(report.need)} a chip, {gib(report.need - report.hbm)} over {chip}; "
    f"the largest tensor is {t.path} {t.shape} {t.dtype} ({gib(t.chip_bytes)} a chip): {move}"
  )


def format_report(report: SliceReport) -> str:
  """What `launch.py compile` prints."""
  c, chip = report.config, TPU_CHIPS[report.chip]
  batch = c.optim.batch_size
  mesh = " x ".join(f"{name} {size}" for name, size in report.mesh.items())
  rows = []
  for label, field in (
    ("arguments", "arguments"),
    ("outputs", "outputs"),
    ("temporaries", "temporaries"),
    ("donated (aliased)", "donated"),
  ):
    rows.append(
      [label, gib(getattr(report.train.memory, field)), gib(getattr(report.eval.memory, field))]
    )
  rows += [
    ["total", gib(report.train.memory.total), gib(report.eval.memory.total)],
    ["TFLOP", f"{report.train.flops / 1e12:.3f}", f"{report.eval.flops / 1e12:.3f}"],
    [
      "bytes accessed",
      f"{report.train.bytes_accessed / 1e9:.1f} GB",
      f"{report.eval.bytes_accessed / 1e9:.1f} GB",
    ],
    ["collectives", collectives_text(report.train), collectives_text(report.eval)],
    ["roofline bound", roofline_text(report.train, chip), roofline_text(report.eval, chip)],
    ["compile", f"{report.train.compile_s:.1f} s", f"{report.eval.compile_s:.1f} s"],
  ]
  bound = report.train.bound_s(chip)
  return "\n".join(
    [
      f"VGG-{c.model.name} (width {c.model.width:g}, {c.model.dtype}) on {report.topology}: "
      f"{report.chips} chips, {report.hosts} host(s); mesh {mesh}, sharding "
      f"{c.sharding_rules or c.sharding}; batch {batch} ({batch // report.mesh['data']} a "
      f"chip), {c.data.crop} px, {c.data.name}",
      "",
      markdown_table(["per chip and step", "train step", "eval step"], rows),
      "",
      f"{report.chip}: {chip.hbm_bytes / GIB:.0f} GiB HBM, {chip.peak_flops / 1e12:.0f} TFLOP/s "
      f"bf16, HBM {chip.hbm_bandwidth / 1e9:.0f} GB/s, ICI {chip.ici_bandwidth / 1e9:.0f} GB/s "
      f"(util.TPU_CHIPS); the train step's bound is {batch / bound:,.0f} images/s at most",
      verdict(report),
    ]
  )
