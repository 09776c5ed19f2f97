"""The paper's configurations compiled for TPU slices on this machine (libtpu, no TPU):
per chip the memory the train step needs, its collective bytes a step, its roofline
bound and the compile time, with the FC layers replicated and sharded (`fsdp`: fc6/fc7
over `data`). The table in docs/tpu.md.

  python benchmarks/tpu_compile_table.py --configs A,B,C,D,E --slices v5p:2x2x1 \\
      --out docs/tpu_2026-12-06/table.jsonl

A big config's compile takes minutes on a small CPU, so each row is appended to --out as
it is done and a rerun skips the rows already there; the Markdown table of every row in
--out is printed at the end (`--configs=` prints it alone).
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import sys

if __package__ in (None, ""):  # run as `python benchmarks/tpu_compile_table.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # nothing runs here; before JAX is imported

import jax  # noqa: E402

from benchmarks.device_run import cpu_model  # noqa: E402
from vgg_jax import config as config_lib  # noqa: E402
from vgg_jax import tpu_compile  # noqa: E402
from vgg_jax.util import TPU_CHIPS, markdown_table  # noqa: E402

# Cloud TPU's names count TensorCores for v4 and v5p (two a chip), chips for v5e and v6e.
SLICE_NAMES = {"v5p:2x2x1": "v5p-8", "v5e:4x4": "v5e-16", "v4:2x2x1": "v4-8", "v6e:2x4": "v6e-8"}
SHARDINGS = ("replicated", "fsdp")


def paper_config(name: str, sharding: str):
  """The paper's recipe (batch 256, 224 crops, float32) for configuration `name`."""
  config = config_lib.experiment_config("paper", f"model={name}")
  config.sharding = sharding
  return config


def row(name: str, topology: str, sharding: str) -> dict:
  """One configuration's train step on one slice: what `launch.py compile` measures."""
  cost = tpu_compile.train_step_costs({name: paper_config(name, sharding)}, topology)[name]
  chip = TPU_CHIPS[tpu_compile.chip_name(topology)]
  measured = (
    dict(fits=False)
    if cost is None
    else dict(
      fits=cost.memory.total <= chip.hbm_bytes,
      memory=cost.memory.total,
      arguments=cost.memory.arguments,
      temporaries=cost.memory.temporaries,
      collective_bytes=sum(cost.collectives.values()),
      collectives=dict(cost.collectives),
      roofline_s=cost.roofline(chip),
      bound_s=cost.bound_s(chip),
      compile_s=cost.compile_s,
    )
  )
  return dict(
    config=name,
    topology=topology,
    slice=SLICE_NAMES.get(topology, topology),
    chips=len(tpu_compile.topology_devices(topology)),
    sharding=sharding,
    date=str(datetime.date.today()),
    jax=jax.__version__,
    libtpu=importlib.metadata.version("libtpu"),
    cpu=f"{cpu_model()} ({os.cpu_count()} cores)",
    **measured,
  )


def markdown(rows: list[dict]) -> str:
  def cells(r):
    if "memory" not in r:
      return ["does not fit (compiler)", "", "", "", ""]
    bound = max(r["roofline_s"], key=r["roofline_s"].get)
    return [
      f"{r['memory'] / 2**30:.2f}" + ("" if r["fits"] else " (over HBM)"),
      f"{r['temporaries'] / 2**30:.2f}",
      f"{r['collective_bytes'] / 2**20:.0f}",
      f"{r['bound_s'] * 1e3:.1f} ({bound})",
      f"{r['compile_s']:.0f}",
    ]

  return markdown_table(
    [
      "config",
      "slice",
      "chips",
      "FC layers",
      "memory a chip (GiB)",
      "of which temporaries",
      "collectives a step (MiB)",
      "roofline bound (ms, by)",
      "compile (s)",
    ],
    [
      [r["config"], f"{r['slice']} (`{r['topology']}`)", r["chips"], r["sharding"], *cells(r)]
      for r in rows
    ],
  )


def main(argv=None):
  parser = argparse.ArgumentParser(
    prog="python benchmarks/tpu_compile_table.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--configs", default="A,B,C,D,E")
  parser.add_argument("--slices", default=",".join(SLICE_NAMES))
  parser.add_argument("--shardings", default=",".join(SHARDINGS))
  parser.add_argument("--out", required=True, help="JSON lines, appended to")
  args = parser.parse_args(argv)
  done = set()
  if os.path.exists(args.out):
    with open(args.out) as f:
      done = {(r["config"], r["topology"], r["sharding"]) for r in map(json.loads, f)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  for topology in args.slices.split(","):
    for name in filter(None, args.configs.split(",")):
      for sharding in args.shardings.split(","):
        if (name, topology, sharding) not in done:
          try:
            result = row(name, topology, sharding)
          except tpu_compile.UnknownTopology as e:
            print(e, flush=True)
            break
          with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
          print(f"{name} {topology} {sharding}: done", flush=True)
  with open(args.out) as f:
    rows = [json.loads(line) for line in f]
  order = list(SLICE_NAMES) + sorted({r["topology"] for r in rows} - set(SLICE_NAMES))
  rows.sort(key=lambda r: (order.index(r["topology"]), r["config"], r["sharding"] != "replicated"))
  print(markdown(rows))


if __name__ == "__main__":
  main()
