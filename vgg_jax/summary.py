"""`launch.py summary`: our counts for every configuration beside the paper's.

Parameters and multiply-adds are measured on abstract models (`nnx.eval_shape`), so
the full-size table costs no compute and no memory.
"""

from flax import nnx

from vgg_jax import architectures, paper
from vgg_jax.model import count_macs, count_params, create_model
from vgg_jax.util import markdown_table


def paper_number(table: dict[str, float], name: str) -> str:
  return f"{table[name]:.3f}" if name in table else "-"


def summary_rows(resolution: int | None = None) -> tuple[list[str], list[list]]:
  header = [
    "config",
    "weight layers",
    "params",
    "paper exact",
    "Table 2 (M)",
    "GMACs @224",
    "paper GMACs @224",
  ]
  if resolution:
    header.append(f"GMACs @{resolution} (dense)")
  rows = []
  for name in architectures.TABLE1:
    model = nnx.eval_shape(lambda: create_model(name))
    row = [
      name,
      architectures.weight_layers(name),
      f"{count_params(model):,}",
      f"{paper.EXACT_PARAMS[name]:,}",
      paper.PARAMS_MILLIONS[name],
      f"{count_macs(model, 224) / 1e9:.3f}",
      paper_number(paper.GMACS_224, name),
    ]
    if resolution:
      row.append(f"{count_macs(model, resolution, dense=True) / 1e9:.3f}")
    rows.append(row)
  return header, rows


def summary(resolution: int | None = None) -> str:
  table = markdown_table(*summary_rows(resolution))
  return (
    f"{table}\n\nMultiply-adds count padded positions (the convention of the "
    f"paper's peers); C's paper figure is computed, not printed in the paper."
  )
