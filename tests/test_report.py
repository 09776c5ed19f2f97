"""The report: Tables 3-5 over seeds beside the paper's numbers, CSV, figures."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FASHION, ROOT, needs_fashion_mnist, result, write_run
from conftest import SWEEP_TINY as TINY
from vgg_jax import report, sweep

PNG = b"\x89PNG\r\n\x1a\n"


def test_rows_average_over_seeds_and_sit_beside_the_paper(tmp_path):
  for seed, (top1, top5) in enumerate([(0.10, 0.02), (0.14, 0.03)]):
    write_run(
      tmp_path,
      f"A_S32_seed{seed}",
      seed,
      [
        result("A", "32", [32], "dense", top1, top5),
        result("A", "32", [32, 37], "dense", top1 - 0.01, top5),
        result("A", "32", [32], "dense", 0.5, 0.5, models=2),
      ],
    )  # an ensemble: Table 6
  write_run(
    tmp_path,
    "D_S32-48_seed0",
    0,
    [
      result("D", "[32,48]", [40], "dense", 0.08, 0.01),
      result("D", "[32,48]", [32, 40, 48], "dense", 0.07, 0.01),
      result("D", "[32,48]", [32, 40, 48], "multicrop", 0.06, 0.01),
      result("D", "[32,48]", [32, 40, 48], "dense", 0.075, 0.01, split="test[:20]", count=20),
      result("D", "[32,48]", [32, 40, 48], "multicrop", 0.065, 0.01, split="test[:20]", count=20),
    ],
  )
  rows = report.tables(report.collect(str(tmp_path)))
  a3, d3 = rows[3]
  assert (a3["config"], a3["S"], a3["paper_S"], a3["Q"], a3["n"]) == ("A", "32", "256", "32", 2)
  assert a3["top1_mean"] == pytest.approx(12.0)
  assert a3["top1_std"] == pytest.approx(np.std([10.0, 14.0], ddof=1))
  assert (a3["top5_mean"], a3["paper_top1"], a3["paper_top5"]) == (pytest.approx(2.5), 29.6, 10.4)
  assert (d3["paper_S"], d3["Q"], d3["n"], d3["top1_std"]) == ("256-512", "40", 1, 0.0)
  assert (d3["paper_top1"], d3["paper_top5"]) == (25.6, 8.1)
  assert [(r["config"], r["Q"], r["paper_top1"]) for r in rows[4]] == [
    ("A", "32,37", None),
    ("D", "32,40,48", 24.8),
  ]
  assert [(r["protocol"], r["split"], r["paper_top1"]) for r in rows[5]] == [
    ("dense", "test", 24.8),
    ("multicrop", "test", 24.6),
    ("dense", "test[:20]", 24.8),
    ("multicrop", "test[:20]", 24.6),
  ]  # Table 4 above has the test set's alone
  text = report.tables_markdown(rows)
  assert (
    "| glorot 32px | A | 32 | 256 | 32 | dense | test | 2 | 12.00 ± 2.83 | 2.50 ± 0.71 |"
    " 29.6 | 10.4 |" in text
  )
  assert [(r["config"], r["n"], r["top1_mean"]) for r in rows[6]] == [("A+A", 2, 50.0)]


def test_report_writes_tables_and_a_figure_with_configs_of_equal_depth(tmp_path):
  for config, top1 in (("A", 0.2), ("A-LRN", 0.21), ("C", 0.15), ("D", 0.14)):
    write_run(tmp_path, f"{config}_S32_seed0", 0, [result(config, "32", [32], "dense", top1, 0.05)])
  text, written = report.report(str(tmp_path))
  assert "## Table 5: jittered S, multiple test scales, by protocol\n\nNo run of this sweep" in text
  out = tmp_path / "report"
  assert written == [
    str(out / name)
    for name in (
      "tables.md",
      "table3.csv",
      "table4.csv",
      "table5.csv",
      "table6.csv",
      "claims.csv",
      "depth_vs_error.png",
    )
  ]
  assert (out / "tables.md").read_text() == text
  assert [r["config"] for r in read_csv(out / "table3.csv")] == ["A", "A-LRN", "C", "D"]
  read_png(out / "depth_vs_error.png")


def test_configs_of_equal_depth_get_distinct_positions_around_their_depth():
  x = report.depth_positions(spread=0.5)
  assert len(set(x.values())) == 6 and x["E"] == 19 and x["B"] == 13
  assert (x["A"], x["A-LRN"], x["C"], x["D"]) == (10.75, 11.25, 15.75, 16.25)


def read_csv(path) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def read_png(path: str) -> bytes:
  with open(path, "rb") as f:
    data = f.read()
  assert data.startswith(PNG) and len(data) > len(PNG), path
  return data


@needs_fashion_mnist
def test_a_real_sweep_is_evaluated_and_reported(tmp_path):
  """A and B (warm-started from A), two seeds, for real; then `launch.py report`."""
  specs = sweep.paper_chain(
    (("A", "256"), ("B", "256")), range(2), scales={"256": "32"}, extra=",quick,backend=numpy"
  )
  runs = sweep.expand([dict(spec, overrides=TINY) for spec in specs])
  outcome = sweep.run_local(runs, FASHION, str(tmp_path), log=print)
  assert set(outcome.values()) == {"done"}, outcome
  printed = subprocess.run(
    [sys.executable, os.path.join(ROOT, "launch.py"), "report", str(tmp_path)],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
  ).stdout
  out = tmp_path / "report"
  assert printed.startswith((out / "tables.md").read_text())
  table3 = read_csv(out / "table3.csv")
  assert [(r["config"], r["S"], r["Q"], r["n"]) for r in table3] == [
    ("A", "32", "32", "2"),
    ("B", "32", "32", "2"),
  ]
  assert [(r["paper_top1"], r["paper_top5"]) for r in table3] == [("29.6", "10.4"), ("28.7", "9.9")]
  for row in table3:
    seeds = [
      json.loads(
        (tmp_path / f"{row['config']}_S32_seed{s}" / "eval" / "test_64_dense_Q32.json").read_text()
      )
      for s in range(2)
    ]
    for metric in ("top1", "top5"):
      errors = [100 * r[f"{metric}_err"] for r in seeds]
      assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(errors))
      assert float(row[f"{metric}_std"]) == pytest.approx(np.std(errors, ddof=1))
  assert [r["Q"] for r in read_csv(out / "table4.csv")] == ["32,37", "32,37"]
  read_png(out / "depth_vs_error.png")
  for run in runs:
    read_png(out / "curves" / f"{run.name}.png")
    assert str(out / "curves" / f"{run.name}.png") in printed


def test_claims_pair_seeds_and_say_what_reproduced(tmp_path):
  """Three seeds: B clearly better than A (reproduced), A-LRN clearly better than A (the
  paper has it slightly worse: not reproduced), D within noise of A (inconclusive);
  multi-crop only on 20 images is paired with dense on those same 20; jittered S against
  fixed S is compared at a single Q on the test set; another arm with
  one seed has no interval."""
  from scipy import stats

  a = [10.0, 11.0, 12.0]
  errors = {
    "A": a,
    "B": [x - 1 + d for x, d in zip(a, (0.1, -0.1, 0.0))],
    "A-LRN": [x - 2 + d for x, d in zip(a, (0.3, 0.0, -0.2))],
    "D": [x + d for x, d in zip(a, (1.0, -1.0, 0.2))],
  }
  for config, per_seed in errors.items():
    for seed, top1 in enumerate(per_seed):
      write_run(
        tmp_path,
        f"{config}_S32_seed{seed}",
        seed,
        [result(config, "32", [32], "dense", top1 / 100, 0.01)],
      )
  for seed in range(3):
    write_run(
      tmp_path,
      f"D_S32-48_seed{seed}",
      seed,
      [
        result("D", "[32,48]", [40], "dense", 0.09, 0.01),
        result("D", "[32,48]", [32, 40, 48], "dense", 0.09, 0.01),
        result(
          "D",
          "[32,48]",
          [32, 40, 48],
          "dense",
          0.10 + seed / 100,
          0.01,
          split="test[:20]",
          count=20,
        ),
        result(
          "D",
          "[32,48]",
          [32, 40, 48],
          "multicrop",
          0.08 + seed / 100,
          0.01,
          split="test[:20]",
          count=20,
        ),
      ],
    )
  write_run(tmp_path, "he_A_S32_seed0", 0, [result("A", "32", [32], "dense", 0.2, 0.01)], init="he")
  write_run(tmp_path, "he_B_S32_seed0", 0, [result("B", "32", [32], "dense", 0.1, 0.01)], init="he")
  rows = {(r["arm"], r["claim"]): r for r in report.claims(report.collect(str(tmp_path)))}

  def expected(base, other):
    diffs = np.subtract(other, base)
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    return pytest.approx([diffs.mean(), diffs.mean() - half, diffs.mean() + half])

  for config, verdict in (("B", "reproduced"), ("D", "inconclusive")):
    row = rows["glorot 32px", f"depth: A vs {config}"]
    assert [row["diff"], row["low"], row["high"]] == expected(a, errors[config])
    assert (row["n"], row["verdict"], row["paper_diff"]) == (
      3,
      verdict,
      round({"B": 28.7, "D": 27.0}[config] - 29.6, 2),
    )
  lrn = rows["glorot 32px", "LRN: A vs A-LRN"]
  assert (lrn["verdict"], lrn["paper_diff"]) == ("not reproduced", 0.1)
  crop = rows["glorot 32px", "multi-crop vs dense: D"]
  assert crop["diff"] == pytest.approx(-2.0) and crop["verdict"] == "reproduced"
  jitter = rows["glorot 32px", "jittered S: D, S 256 vs [256,512]"]
  assert jitter["diff"] == pytest.approx(9 - np.mean(errors["D"]))
  he = rows["he 32px", "depth: A vs B"]
  assert (he["n"], he["diff"], he["verdict"]) == (1, pytest.approx(-10.0), "inconclusive (n < 2)")
  assert ("glorot 32px", "depth: A vs E") not in rows  # no E: no claim
  text, _ = report.report(str(tmp_path))
  assert "| glorot 32px | depth: A vs B | 29.6 → 28.7 | -0.9 |" in text
  assert "| 3 | reproduced |" in text


def test_convergence_lists_each_runs_validation_error_by_epoch(tmp_path):
  """Validation records give the row; the last epoch's change is the difference of the
  last two; the training loss is averaged over each half of the last epoch."""
  for name, errors in (("A_S32_seed0", [0.15, 0.13, 0.125]), ("B_S32_seed0", [0.2])):
    write_run(tmp_path, name, 0, [result(name[0], "32", [32], "dense", errors[-1], 0.01)])
    lines = [dict(step=1, loss=2.0)] + [
      dict(step=10 * (i + 1), val_top1_err=e, epoch=i + 1, lr_drops=int(i == 2))
      for i, e in enumerate(errors)
    ]
    if name.startswith("A"):  # epoch 2 (not counted), then the last: 0.5 and 0.3 a half
      lines += [dict(step=18, loss=9.0, epoch=1.75)]
      lines += [
        dict(step=int(10 * e), loss=x, epoch=e)
        for x, e in ((0.6, 2.25), (0.4, 2.5), (0.3, 2.75), (0.3, 3))
      ]
    (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  a, b = report.convergence(report.run_metrics(str(tmp_path)))
  assert (a["run"], a["epochs"], a["lr_drops"]) == ("A_S32_seed0", 3, 1)
  assert a["val_top1"] == pytest.approx([15.0, 13.0, 12.5])
  assert a["last_change"] == pytest.approx(-0.5) and b["last_change"] is None
  assert a["last_epoch_loss"] == pytest.approx((0.5, 0.3)) and b["last_epoch_loss"] is None
  text, _ = report.report(str(tmp_path))
  assert "| A_S32_seed0 | 3 | 15.00, 13.00, 12.50 | -0.50 | 1 | 0.500 → 0.300 |" in text
  assert "| B_S32_seed0 | 1 | 20.00 | - | 0 | - |" in text
  assert "| dense | test | 1 | 12.50 | 1.00 | 29.6 | 10.4 |" in text  # n = 1: no "± 0.00"
