"""`launch.py summary`: our counts beside the paper's, from the command line."""

import os
import subprocess
import sys

from vgg_jax import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summary_rows_measure_the_models():
  header, rows = summary.summary_rows(resolution=256)
  table = {row[0]: dict(zip(header, row)) for row in rows}
  assert list(table) == ["A", "A-LRN", "B", "C", "D", "E"]
  assert table["D"]["params"] == "138,357,544" == table["D"]["paper exact"]
  assert table["C"]["GMACs @224"] == "11.771" and table["E"]["weight layers"] == 19
  # 256 is dense: an 8x8 final map gives a 2x2 class-score map, so more than (256/224)^2.
  assert float(table["D"]["GMACs @256 (dense)"]) > 15.470 * (256 / 224) ** 2


def test_launch_summary_prints_the_table():
  out = subprocess.run(
    [sys.executable, "launch.py", "summary", "--resolution=384"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| E | 19 | 143,667,240 | 143,667,240 | 144 | 19.632 | 19.632 |" in out.stdout
  assert "GMACs @384 (dense)" in out.stdout


def test_launch_rejects_an_unknown_command():
  out = subprocess.run(
    [sys.executable, "launch.py", "bogus"], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert out.returncode != 0 and "usage: launch.py" in out.stderr
