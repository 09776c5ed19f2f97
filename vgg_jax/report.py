"""Tables 3-6, whether the paper's claims reproduced, and figures from a sweep's
evaluations, beside the paper's ImageNet numbers.

`collect` reads every run's eval/*.json under a sweep root (single networks and
ensembles) with the run's seed, arm and dataset from its config.json; `tables` averages
them over seeds per (arm, config, S, Q, protocol) as the paper's Tables 3, 4, 5 and 6;
`claims` compares paired seeds for each of the paper's claims and says whether it
reproduced; `convergence` lists each run's validation error by epoch; `report` writes
ROOT/report/: tables.md (Tables 3-6, the claims and the convergence table),
table3.csv ... table6.csv, claims.csv, depth_vs_error.png and curves/NAME.png (each
run's training curves).

  python launch.py report ROOT
"""

import csv
import io
import json

import numpy as np

from vgg_jax import architectures, paper, paths
from vgg_jax import metrics as metrics_lib
from vgg_jax.scale import Scale
from vgg_jax.util import markdown_table

REGIME_ORDER = tuple(s.name for s in paper.REGIMES)  # "256", "384", "256-512"
PROTOCOL_ORDER = paper.PROTOCOLS
TITLES = {
  3: "Table 3: single test scale (dense)",
  4: "Table 4: multiple test scales (dense)",
  5: "Table 5: jittered S, multiple test scales, by protocol",
  6: "Table 6: ensembles of two nets, by protocol",
}
HEADER = [
  "arm",
  "config",
  "S",
  "paper S",
  "Q",
  "protocol",
  "split",
  "n",
  "top-1 %",
  "top-5 %",
  "paper top-1",
  "paper top-5",
]
CSV_HEADER = [
  "arm",
  "config",
  "S",
  "paper_S",
  "Q",
  "protocol",
  "split",
  "n",
  "top1_mean",
  "top1_std",
  "top5_mean",
  "top5_std",
  "paper_top1",
  "paper_top5",
]


def regime(dataset: str, scale: str) -> str:
  """A run's S ("32", "[32,48]") -> the paper's regime it stands for ("256-512")."""
  return paper.regime(dataset, Scale.parse(scale)).name


def arm(config: dict) -> str:
  """The recipe a run belongs to: its init and crop ("glorot 32px": Fashion-MNIST's
  paper chain; "he 32px", "he 64px": from scratch). Only runs of one arm are compared."""
  return f"{config['model']['init']} {config['data']['crop']}px"


def collect(root: str) -> list[dict]:
  """One record per evaluation under ROOT/*/eval/: of a single network, or of an
  ensemble (Table 6: `config` "D+E"), with the run's seed, arm and dataset."""
  records = []
  for config_path in sorted(paths.Path(root).glob("*/config.json")):
    workdir = config_path.parent
    config = json.loads(config_path.read_text())
    for path in sorted(workdir.glob("eval/*.json")):
      result = json.loads(path.read_text())
      models = result["models"]
      records.append(
        dict(
          run=workdir.name,
          seed=config["seed"],
          arm=arm(config),
          config="+".join(m["config"] for m in models),
          S="+".join(m["S"] for m in models),
          regime="+".join(regime(config["data"]["name"], m["S"]) for m in models),
          Q=",".join(map(str, models[0]["Q"])),
          protocol=result["protocol"],
          split=result["split"],
          count=result["count"],
          top1_err=result["top1_err"],
          top5_err=result["top5_err"],
          ensemble=len(models) > 1,
        )
      )
  return records


def table_of(record: dict) -> set[int]:
  """The paper's tables a record belongs to: an ensemble to Table 6; of single nets, a
  dense single-scale result to Table 3, a dense multi-scale one to Table 4, a
  multi-scale one of a jittered S to Table 5."""
  if record.get("ensemble"):
    return {6}
  multi, jittered = "," in record["Q"], not Scale.parse(record["S"]).fixed
  tables = set()
  if record["protocol"] == "dense":
    tables.add(4 if multi else 3)
  if multi and jittered and record["protocol"] in PROTOCOL_ORDER:
    tables.add(5)
  return tables


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value), in %."""
  values = 100 * np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def paper_numbers(table: int, config: str, paper_s: str, protocol: str):
  """The paper's (top-1, top-5) for a row of Table `table`, or None."""
  if table == 6:
    members = (
      "+".join(c for c, _ in paper.TABLE6_MEMBERS),
      "+".join(s.name for _, s in paper.TABLE6_MEMBERS),
    )
    return paper.TABLE6.get(protocol) if (config, paper_s) == members else None
  if table == 5:
    return paper.TABLE5.get((config, protocol)) if Scale.parse(paper_s) == paper.S256_512 else None
  return (paper.TABLE3 if table == 3 else paper.TABLE4).get((config, Scale.parse(paper_s)))


def aggregate(records: list[dict], table: int) -> list[dict]:
  """Table `table`'s rows: records grouped over seeds, in the paper's order."""
  groups = {}
  for r in records:
    if table in table_of(r):
      key = (r["arm"], r["config"], r["S"], r["regime"], r["Q"], r["protocol"], r["split"])
      groups.setdefault(key, []).append(r)
  rows = []
  for (arm_name, config, s, paper_s, q, protocol, split), members in groups.items():
    top1, top5 = (mean_std([m[k] for m in members]) for k in ("top1_err", "top5_err"))
    theirs = paper_numbers(table, config, paper_s, protocol) or (None, None)
    rows.append(
      dict(
        arm=arm_name,
        config=config,
        S=s,
        paper_S=paper_s,
        Q=q,
        protocol=protocol,
        split=split,
        n=len(members),
        top1_mean=top1[0],
        top1_std=top1[1],
        top5_mean=top5[0],
        top5_std=top5[1],
        paper_top1=theirs[0],
        paper_top5=theirs[1],
      )
    )
  return sorted(rows, key=_order)


def _order(row: dict):
  return (
    row["arm"],
    _index(tuple(architectures.TABLE1), row["config"]),
    row["config"],
    _index(REGIME_ORDER, row["paper_S"]),
    row["S"],
    row["Q"],
    row["split"],
    _index(PROTOCOL_ORDER, row["protocol"]),
  )


def _index(order: tuple, item) -> int:
  return order.index(item) if item in order else len(order)


def _number(value) -> str:
  return "-" if value is None else f"{value:.1f}"


def _mean_std(mean: float, std: float, n: int) -> str:
  """Mean ± std, "12.00 ± 2.83"; one seed has no spread to show."""
  return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def markdown(rows: list[dict]) -> str:
  return markdown_table(
    HEADER,
    [
      [
        r["arm"],
        r["config"],
        r["S"],
        r["paper_S"],
        r["Q"],
        r["protocol"],
        r["split"],
        r["n"],
        _mean_std(r["top1_mean"], r["top1_std"], r["n"]),
        _mean_std(r["top5_mean"], r["top5_std"], r["n"]),
        _number(r["paper_top1"]),
        _number(r["paper_top5"]),
      ]
      for r in rows
    ],
  )


def to_csv(rows: list[dict], header: list[str] = CSV_HEADER) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, header, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def largest_splits(records: list[dict]) -> list[dict]:
  """Per run, Q and protocol, the record on the most images: a run evaluated on the test
  set and again on a subset for Table 5 (multi-crop's cost) is in Tables 3 and 4 once,
  with the test set."""
  largest = {}
  for r in records:
    key = (r["run"], r["config"], r["Q"], r["protocol"])
    if key not in largest or r["count"] > largest[key]["count"]:
      largest[key] = r
  return list(largest.values())


def tables(records: list[dict]) -> dict[int, list[dict]]:
  """Each table's rows, by table number (Tables 5 and 6 keep every split: their
  protocols are compared on the same images)."""
  return {
    table: aggregate(records if table in (5, 6) else largest_splits(records), table)
    for table in TITLES
  }


def tables_markdown(rows: dict[int, list[dict]]) -> str:
  """Our top-1/top-5 error (%) as mean ± std over n seeds; the paper's is ILSVRC-2012."""
  body = {
    t: markdown(rows[t]) if rows[t] else "No run of this sweep gives this table." for t in TITLES
  }
  return "\n\n".join(f"## {TITLES[t]}\n\n{body[t]}" for t in TITLES) + "\n"


# ----------------------------------------------------------------------------- claims


def paper_top1(side: paper.Side) -> float | None:
  table = 3 if not side.multi_q else 4 if side.protocol == "dense" else 5
  numbers = paper_numbers(table, side.config, side.scale.name, side.protocol)
  return numbers[0] if numbers else None


def side_errors(records: list[dict], arm_name: str, side: paper.Side) -> dict[int, dict]:
  """{seed: {split: (top-1 error %, images)}} of one side's single-net records."""
  key = (arm_name, side.config, side.scale.name, side.protocol)
  errors = {}
  for r in records:
    if (
      not r.get("ensemble")
      and (r["arm"], r["config"], r["regime"], r["protocol"]) == key
      and ("," in r["Q"]) == side.multi_q
    ):
      errors.setdefault(r["seed"], {})[r["split"]] = (100 * r["top1_err"], r["count"])
  return errors


def paired_differences(base: dict[int, dict], other: dict[int, dict]) -> list[float]:
  """other - base per seed that has both, on the largest split both were scored on (a
  protocol evaluated only on Table 5's subset is compared on that subset)."""
  diffs = []
  for seed in sorted(set(base) & set(other)):
    common = set(base[seed]) & set(other[seed])
    if common:
      split = max(common, key=lambda name: base[seed][name][1])
      diffs.append(other[seed][split][0] - base[seed][split][0])
  return diffs


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
  """Mean and Student-t confidence interval of the mean (nan bounds for n < 2)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel

  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, float("nan"), float("nan")
  half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
  return mean, mean - half, mean + half


def verdict(paper_difference: float, low: float, high: float) -> str:
  """Reproduced when the interval excludes 0 on the paper's side, not reproduced when
  it excludes 0 on the other side, otherwise inconclusive."""
  if np.isnan(low):
    return "inconclusive (n < 2)"
  if low > 0 or high < 0:
    return "reproduced" if (low > 0) == (paper_difference > 0) else "not reproduced"
  return "inconclusive"


def claims(records: list[dict], level: float = 0.95) -> list[dict]:
  """Per arm and paper claim with paired seeds: our top-1 error difference (other -
  base, points) with its t-interval, the paper's, and the verdict."""
  rows = []
  for arm_name in sorted({r["arm"] for r in records}):
    for claim, base, other in paper.claims():
      theirs = (paper_top1(base), paper_top1(other))
      diffs = paired_differences(
        side_errors(records, arm_name, base), side_errors(records, arm_name, other)
      )
      if not diffs or None in theirs:
        continue
      mean, low, high = t_interval(diffs, level)
      rows.append(
        dict(
          arm=arm_name,
          claim=claim,
          n=len(diffs),
          paper_base=theirs[0],
          paper_other=theirs[1],
          paper_diff=round(theirs[1] - theirs[0], 2),
          diff=mean,
          low=low,
          high=high,
          verdict=verdict(theirs[1] - theirs[0], low, high),
        )
      )
  return rows


def _interval(row: dict) -> str:
  bounds = "" if np.isnan(row["low"]) else f" [{row['low']:+.2f}, {row['high']:+.2f}]"
  return f"{row['diff']:+.2f}{bounds}"


CLAIMS_HEADER = ["arm", "claim", "paper top-1 %", "paper diff", "our diff [95% CI]", "n", "verdict"]


def claims_markdown(rows: list[dict]) -> str:
  return (
    "## What reproduced: the paper's claims, paired by seed\n\n"
    "Top-1 error of the second minus the first, in points (negative: the second is "
    "better), mean over seeds with a 95% Student-t interval (n seeds, n - 1 degrees "
    "of freedom). Reproduced: the interval excludes 0 on the paper's side; not "
    "reproduced: on the other side; otherwise inconclusive. The paper's A-LRN claim "
    "is that LRN does not help, which an inconclusive verdict is consistent with.\n\n"
    + markdown_table(
      CLAIMS_HEADER,
      [
        [
          r["arm"],
          r["claim"],
          f"{r['paper_base']:.1f} → {r['paper_other']:.1f}",
          f"{r['paper_diff']:+.1f}",
          _interval(r),
          r["n"],
          r["verdict"],
        ]
        for r in rows
      ],
    )
    + "\n"
  )


# ---------------------------------------------------------------------------- figures


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  return plt


def depth_positions(spread: float = 0.5) -> dict[str, float]:
  """Each config's x in the depth figure: its weight layers, configs of equal depth (A
  and A-LRN at 11, C and D at 16) spread `spread` apart so none hides another."""
  by_depth = {}
  for config in architectures.TABLE1:
    by_depth.setdefault(architectures.weight_layers(config), []).append(config)
  return {
    config: depth + spread * (i - (len(group) - 1) / 2)
    for depth, group in by_depth.items()
    for i, config in enumerate(group)
  }


def depth_figure(rows: list[dict], path: str) -> str:
  """Table 3's top-1 and top-5 error against depth, a line per S regime (colour) and
  arm (line style) with error bars over seeds; the paper's points (dashed, hollow) on
  the right-hand axis."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  x = depth_positions()
  colours = dict(zip(REGIME_ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for ax, metric, which in ((axes[0], "top1", 0), (axes[1], "top5", 1)):
    paper_ax = ax.twinx()
    for paper_s in REGIME_ORDER:
      for arm_name, style in zip(sorted({r["arm"] for r in rows}), ("-", ":", "-.", "--")):
        ours = sorted(
          (r for r in rows if (r["paper_S"], r["arm"]) == (paper_s, arm_name)),
          key=lambda r: x[r["config"]],
        )
        if ours:
          ax.errorbar(
            [x[r["config"]] for r in ours],
            [r[f"{metric}_mean"] for r in ours],
            yerr=[r[f"{metric}_std"] for r in ours],
            marker="o",
            capsize=3,
            linestyle=style,
            color=colours[paper_s],
            label=f"ours, {arm_name}, S ~ {paper_s}",
          )
      theirs = sorted((x[c], v[which]) for (c, s), v in paper.TABLE3.items() if s.name == paper_s)
      paper_ax.plot(
        *zip(*theirs),
        "--o",
        mfc="none",
        color=colours[paper_s],
        alpha=0.6,
        label=f"paper, S = {paper_s}",
      )
    ax.set_xticks(
      list(x.values()), [f"{c}\n{architectures.weight_layers(c)}" for c in x], fontsize=8
    )
    ax.set(
      xlabel="configuration, weight layers",
      ylabel=f"our {metric} error (%)",
      title=f"{metric} error vs depth (Table 3)",
    )
    paper_ax.set_ylabel(f"paper {metric} error (%), ILSVRC-2012")
    ax.legend(loc="upper left", fontsize=8)
    paper_ax.legend(loc="upper right", fontsize=8)
  return _save(plt, fig, path)


def run_metrics(root: str) -> dict[str, list[dict]]:
  """Each run's metrics.jsonl records, by run name, read once for the convergence
  table and the curves."""
  return {
    path.parent.name: metrics_lib.read_metrics(str(path.parent))
    for path in sorted(paths.Path(root).glob("*/metrics.jsonl"))
  }


def curve_figure(name: str, records: list[dict], path: str) -> str:
  """A run's training loss and validation top-1 error against step."""
  plt = _pyplot()
  train = [(r["step"], r["loss"]) for r in records if "loss" in r]
  val = [(r["step"], 100 * r["val_top1_err"]) for r in records if "val_top1_err" in r]
  fig, ax = plt.subplots(figsize=(6, 4))
  if train:
    ax.plot(*zip(*train), ".-", color="C0", label="train loss")
  ax.set(xlabel="step", ylabel="train loss", title=name)
  val_ax = ax.twinx()
  if val:
    val_ax.plot(*zip(*val), "o-", color="C1", label="val top-1 error")
  val_ax.set_ylabel("val top-1 error (%)")
  fig.legend(loc="upper right", fontsize=8)
  return _save(plt, fig, path)


# ------------------------------------------------------------------------- convergence


CONVERGENCE_HEADER = [
  "run",
  "epochs",
  "val top-1 % by epoch",
  "last epoch's change",
  "LR drops",
  "train loss, last epoch: 1st → 2nd half",
]


def convergence(metrics: dict[str, list[dict]]) -> list[dict]:
  """Each run's validation top-1 error at every validation, and its mean training loss
  over each half of its last epoch: a run whose error still falls over its last epoch
  by more than the seeds differ, or whose loss still falls within it, has not
  converged, and its table rows compare nets stopped early, not trained ones.
  `metrics`: `run_metrics`."""
  rows = []
  for name, records in metrics.items():
    val = [r for r in records if "val_top1_err" in r]
    if val:
      errors = [100 * r["val_top1_err"] for r in val]
      epochs = val[-1].get("epoch", len(val))
      rows.append(
        dict(
          run=name,
          epochs=epochs,
          val_top1=errors,
          last_change=errors[-1] - errors[-2] if len(errors) > 1 else None,
          lr_drops=val[-1].get("lr_drops", 0),
          last_epoch_loss=last_epoch_loss_halves(records, epochs),
        )
      )
  return rows


def last_epoch_loss_halves(records: list[dict], epochs: float) -> tuple[float, float] | None:
  """Mean logged training loss over (E - 1, E - 1/2] and (E - 1/2, E]."""
  halves = [
    [r["loss"] for r in records if "loss" in r and lo < r.get("epoch", -1) <= lo + 0.5]
    for lo in (epochs - 1, epochs - 0.5)
  ]
  return tuple(float(np.mean(h)) for h in halves) if all(halves) else None


def convergence_markdown(rows: list[dict]) -> str:
  return (
    "## Convergence: validation error by epoch\n\n"
    "Top-1 error (%) on the validation split after each epoch; the last epoch's change "
    "in points (negative: still falling); the mean logged training loss (with dropout) "
    "over each half of the last epoch (falling: not flat yet).\n\n"
    + markdown_table(
      CONVERGENCE_HEADER,
      [
        [
          r["run"],
          f"{r['epochs']:g}",
          ", ".join(f"{e:.2f}" for e in r["val_top1"]),
          "-" if r["last_change"] is None else f"{r['last_change']:+.2f}",
          r["lr_drops"],
          "-" if r["last_epoch_loss"] is None else "{:.3f} → {:.3f}".format(*r["last_epoch_loss"]),
        ]
        for r in rows
      ],
    )
    + "\n"
  )


# ----------------------------------------------------------------------------- report


class NoEvaluations(FileNotFoundError):
  """The root holds no evaluation to report; nothing was written."""


def report(root: str) -> tuple[str, list[str]]:
  """Writes ROOT/report/; returns the Markdown and the paths written. NoEvaluations,
  writing nothing, when ROOT holds none (a missing or empty root, a typo)."""
  records = collect(root)
  if not records:
    raise NoEvaluations(
      f"no evaluations in {root} (none of ROOT/*/eval/*.json): nothing to report; "
      "sweep (or `launch.py eval`) into it first"
    )
  out = paths.Path(root) / "report"
  (out / "curves").mkdir(parents=True, exist_ok=True)
  metrics = run_metrics(root)
  rows, verdicts = tables(records), claims(records)
  text = (
    tables_markdown(rows)
    + "\n"
    + claims_markdown(verdicts)
    + "\n"
    + convergence_markdown(convergence(metrics))
  )
  written = [_write(out / "tables.md", text)]
  written += [_write(out / f"table{t}.csv", to_csv(rows[t])) for t in rows]
  written.append(
    _write(
      out / "claims.csv",
      to_csv(verdicts, list(verdicts[0]) if verdicts else ["arm", "claim"]),
    )
  )
  written.append(depth_figure(rows[3], paths.join(out, "depth_vs_error.png")))
  for name, run in metrics.items():
    written.append(curve_figure(name, run, paths.join(out, "curves", name + ".png")))
  return text, written


def _write(path: paths.Path, text: str) -> str:
  path.write_text(text)
  return str(path)


def _save(plt, fig, path: str) -> str:
  """The figure as a PNG at `path`, through `vgg_jax.paths` (a bucket included)."""
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  paths.Path(path).write_bytes(buffer.getvalue())
  return path
