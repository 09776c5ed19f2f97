"""Small things the package and the benchmarks share: Markdown tables and the chips'
peak FLOP/s (a leaf module, so a benchmark need not import the sweeps to use them)."""

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "tpu-v4": 275e12, "tpu-v5p": 459e12}


def markdown_table(header: list[str], rows: list[list]) -> str:
  lines = [header, ["---"] * len(header)] + [[str(c) for c in row] for row in rows]
  return "\n".join("| " + " | ".join(line) + " |" for line in lines)
