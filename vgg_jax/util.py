"""Small things the package and the benchmarks share: Markdown tables and the chips'
figures (a leaf module, so a benchmark need not import the sweeps to use them)."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TpuChip:
  """One TPU chip's data-sheet figures (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e)."""

  hbm_bytes: int
  peak_flops: float  # dense bf16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  ici_bandwidth: float  # bytes/s a chip sends in one direction


# By the name a topology starts with (`v5p:2x2x2`). ICI: v5e 1600, v5p 4800, v6e 3584
# Gbps per chip; v4's page gives none, so its 1.1 PB/s all-reduce bandwidth per 4096-chip
# pod, per chip (as benchmarks/scaling.py).
TPU_CHIPS = {
  "v4": TpuChip(32 * 2**30, 275e12, 1200e9, 1.1e15 / 4096),
  "v5e": TpuChip(16 * 2**30, 197e12, 819e9, 200e9),
  "v5p": TpuChip(95 * 2**30, 459e12, 2765e9, 600e9),
  "v6e": TpuChip(32 * 2**30, 918e12, 1640e9, 448e9),
}

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12} | {
  f"tpu-{name}": chip.peak_flops for name, chip in TPU_CHIPS.items()
}


def markdown_table(header: list[str], rows: list[list]) -> str:
  lines = [header, ["---"] * len(header)] + [[str(c) for c in row] for row in rows]
  return "\n".join("| " + " | ".join(line) + " |" for line in lines)
