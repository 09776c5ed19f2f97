"""The README's layout table against the tree: every path it names exists, and every
module of the package, benchmark and experiment is named (directly, or by its
directory's row, or beside another module as `checkpoint.py`, `metrics.py` are)."""

import glob
import os
import re

from conftest import ROOT


def layout_rows() -> list[str]:
  readme = open(os.path.join(ROOT, "README.md")).read()
  table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
  return [line for line in table.splitlines() if line.startswith("| `")]


def named_paths() -> set[str]:
  """Each row's first cell: `a/b.py`, `c.py` -> a/b.py, a/c.py (the siblings share a/)."""
  paths = set()
  for row in layout_rows():
    names = re.findall(r"`([^`]+)`", row.split("|")[1])
    folder = os.path.dirname(names[0])
    paths.update(n if "/" in n else os.path.join(folder, n) for n in names)
  return paths


def test_every_path_in_the_layout_exists():
  for path in named_paths():
    assert os.path.exists(os.path.join(ROOT, path)), path


def test_every_module_is_in_the_layout():
  named = named_paths()
  for module in glob.glob(os.path.join(ROOT, "vgg_jax", "*.py")):
    path = os.path.relpath(module, ROOT)
    if os.path.basename(path) != "__init__.py":
      assert path in named, f"{path} is missing from the README's layout table"
  for folder in ("benchmarks/", "experiments/", "docs/", "tests/", "vgg_jax/data/"):
    assert folder in named, folder
