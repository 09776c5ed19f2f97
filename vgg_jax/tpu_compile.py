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


class OutOfHbm(Exception):
  """XLA's TPU compiler refused a step that needs more HBM than a chip has; the message
  is the compiler's figures."""


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
  this machine); libtpu skips a TPU VM's metadata server, takes this host as its only
  worker (else it logs an error about the hostnames it found none of), and may load
  beside a TPU backend. A JAX_PLATFORMS the user set wins."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
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
  try:
    compiled = fn.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    if not str(e).startswith("RESOURCE_EXHAUSTED"):
      raise
    raise OutOfHbm(str(e).splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")) from e
  seconds = time.perf_counter() - start
  hlo = compiled.as_text()  # a deep net's is megabytes: printed and parsed once
  collectives, counts = xla_cost.collectives(hlo)
  return StepCost(
    memory=xla_cost.memory(compiled),
    flops=xla_cost.xla_flops(compiled) or 0.0,
    bytes_accessed=xla_cost.bytes_accessed(compiled) or 0.0,
    collectives=collectives,
    collective_counts=counts,
    compile_s=seconds,
    hlo=hlo,
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
  """A run's steps compiled for one TPU slice: each step's cost, or the compiler's
  refusal where it ran out of HBM."""

  topology: str
  chip: str
  chips: int
  hosts: int
  mesh: dict[str, int]
  config: ml_collections.ConfigDict
  steps: dict[str, StepCost]  # "train", "eval": those that compiled
  out_of_hbm: dict[str, str]  # those the compiler refused: its message
  largest: Tensor
  rule: str | None  # the rule of a preset that would move `largest`

  @property
  def hbm(self) -> int:
    return TPU_CHIPS[self.chip].hbm_bytes

  @property
  def need(self) -> int:
    return max((step.memory.total for step in self.steps.values()), default=0)

  @property
  def fits(self) -> bool:
    return not self.out_of_hbm and self.need <= self.hbm


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
  steps, out_of_hbm = {}, {}
  for name, fn in (("train", program.step), ("eval", program.eval)):
    try:
      steps[name] = step_cost(fn, state, batch)
    except OutOfHbm as e:
      out_of_hbm[name] = str(e)
  largest = state_tensors(state)[0]
  return SliceReport(
    topology=topology,
    chip=chip_name(topology),
    chips=len(devices),
    hosts=len({d.process_index for d in devices}),
    mesh=dict(program.mesh.shape),
    config=config,
    steps=steps,
    out_of_hbm=out_of_hbm,
    largest=largest,
    rule=rule_that_moves(largest, program.mesh),
  )


def train_step_costs(configs: dict[str, ml_collections.ConfigDict], topology: str) -> dict:
  """Each named config's train step compiled for `topology`, once per distinct program
  (a config's seeds and fine-tunings share one), or None where it does not fit: for a
  sweep's forecast."""
  devices = topology_devices(topology)
  compiled, costs = {}, {}
  for name, config in configs.items():
    program, batch = slice_program(config, devices)
    key = (train.program_key(config, program.mesh, program.model), config.optim.batch_size)
    if key not in compiled:
      try:
        compiled[key] = step_cost(program.step, program.abstract_state, batch)
      except OutOfHbm:
        compiled[key] = None
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
  over = "; ".join(
    [f"the {name} step: {message}" for name, message in report.out_of_hbm.items()]
    or [f"{gib(report.need)} a chip, {gib(report.need - report.hbm)} over {chip}"]
  )
  return (
    f"does not fit: {over}; the largest tensor is {t.path} {t.shape} {t.dtype} "
    f"({gib(t.chip_bytes)} a chip): {move}"
  )


def step_rows(steps: dict[str, StepCost], chip: TpuChip) -> list[list[str]]:
  """The report's table: a row per figure, a column per compiled step."""

  def row(label, figure):
    return [label] + [figure(step) for step in steps.values()]

  return [
    row("arguments", lambda s: gib(s.memory.arguments)),
    row("outputs", lambda s: gib(s.memory.outputs)),
    row("temporaries", lambda s: gib(s.memory.temporaries)),
    row("donated (aliased)", lambda s: gib(s.memory.donated)),
    row("total", lambda s: gib(s.memory.total)),
    row("TFLOP", lambda s: f"{s.flops / 1e12:.3f}"),
    row("bytes accessed", lambda s: f"{s.bytes_accessed / 1e9:.1f} GB"),
    row("collectives", collectives_text),
    row("roofline bound", lambda s: roofline_text(s, chip)),
    row("compile", lambda s: f"{s.compile_s:.1f} s"),
  ]


def format_report(report: SliceReport) -> str:
  """What `launch.py compile` prints."""
  c, chip = report.config, TPU_CHIPS[report.chip]
  batch = c.optim.batch_size
  mesh = " x ".join(f"{name} {size}" for name, size in report.mesh.items())
  lines = [
    f"VGG-{c.model.name} (width {c.model.width:g}, {c.model.dtype}) on {report.topology}: "
    f"{report.chips} chips, {report.hosts} host(s); mesh {mesh}, sharding "
    f"{c.sharding_rules or c.sharding}; batch {batch} ({batch // report.mesh['data']} a "
    f"chip), {c.data.crop} px, {c.data.name}",
    "",
  ]
  if report.steps:
    header = ["per chip and step"] + [f"{name} step" for name in report.steps]
    lines += [markdown_table(header, step_rows(report.steps, chip)), ""]
  lines.append(
    f"{report.chip}: {chip.hbm_bytes / GIB:.0f} GiB HBM, {chip.peak_flops / 1e12:.0f} TFLOP/s "
    f"bf16, HBM {chip.hbm_bandwidth / 1e9:.0f} GB/s, ICI {chip.ici_bandwidth / 1e9:.0f} GB/s "
    "(util.TPU_CHIPS)"
  )
  if "train" in report.steps:
    bound = report.steps["train"].bound_s(chip)
    lines.append(f"the train step's roofline bound: {batch / bound:,.0f} images/s at most")
  lines.append(verdict(report))
  return "\n".join(lines)
