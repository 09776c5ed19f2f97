"""What XLA says one chip's share of a compiled SPMD program costs: memory, FLOPs, bytes
accessed and collectives, read from the compiled object itself (its memory and cost
analyses and its optimised HLO). The benchmarks that run a step and `tpu_compile`, which
compiles one for a TPU slice it cannot run, report the same figures through these."""

import dataclasses
import math
import re

# The collectives of an SPMD program, as its HLO names them (async ones by their -done op).
COLLECTIVE = re.compile(
  r"= (.+?) (all-reduce|reduce-scatter|all-gather|all-to-all|"
  r"collective-permute)(?:-done)?\("
)
COLLECTIVE_SHORT = {
  "all-reduce": "AR",
  "reduce-scatter": "RS",
  "all-gather": "AG",
  "all-to-all": "A2A",
  "collective-permute": "CP",
}


@dataclasses.dataclass(frozen=True)
class Memory:
  """A compiled program's buffers on one chip, in bytes (XLA's memory analysis); donated
  arguments are aliased to outputs, so they count once."""

  arguments: int
  outputs: int
  temporaries: int
  donated: int

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.donated + self.temporaries


def memory(compiled) -> Memory | None:
  """None where the backend gives no memory analysis."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return Memory(
    arguments=m.argument_size_in_bytes,
    outputs=m.output_size_in_bytes,
    temporaries=m.temp_size_in_bytes,
    donated=m.alias_size_in_bytes,
  )


def xla_bytes(compiled) -> int | None:
  """What a compiled step needs on a chip: arguments + outputs - donated + temporaries."""
  m = memory(compiled)
  return None if m is None else m.total


def cost(compiled, key: str) -> float | None:
  """One figure of XLA's cost analysis ("flops", "bytes accessed"); None if it is absent
  or not positive (a GPU's cuDNN calls are not counted)."""
  value = (compiled.cost_analysis() or {}).get(key, 0.0)
  return value if value > 0 else None


def xla_flops(compiled) -> float | None:
  """FLOPs of one chip's share of a compiled SPMD step."""
  return cost(compiled, "flops")


def bytes_accessed(compiled) -> float | None:
  """Bytes one chip's share of the step reads and writes in its memory (HBM on a TPU)."""
  return cost(compiled, "bytes accessed")


def collectives(hlo: str) -> tuple[dict[str, int], dict[str, int]]:
  """Per kind of collective in a compiled (partitioned) program's HLO text: the bytes of
  the arrays it produces on a chip per step, and how many it issues per step."""
  totals, counts = {}, {}
  for shape, kind in COLLECTIVE.findall(hlo):
    counts[kind] = counts.get(kind, 0) + 1
    for dtype, dims in re.findall(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]", shape):
      bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
      count = math.prod(int(d) for d in dims.split(",") if d)
      totals[kind] = totals.get(kind, 0) + count * bits // 8
  return totals, counts


def collective_bytes(compiled) -> dict[str, int]:
  """Bytes of the arrays each kind of collective produces on a chip per step."""
  return collectives(compiled.as_text())[0]
