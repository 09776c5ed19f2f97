"""Which XLA CPU flags make the trainer's step fastest, each beside XLA's default.

  python benchmarks/cpu_flags.py --configs A --width 0.25 --batch 128 \\
      --variants default,ynn,ynn+conv,xnn,xnn_greedy,onednn
  python benchmarks/cpu_flags.py --configs A --batch 32 --variants default,ynn,ynn+conv \\
      --baseline torch                            # full width: torchvision eager too

The trainer's step (`train.build_program`, as in `throughput.py`) is lowered once and
compiled once per variant with the variant's flags as per-compilation options (what the
same flags in XLA_FLAGS give: the same compiled program), so all variants run in one
process on one state and one on-device batch. They take turns, a window of --steps steps
each (A, B, A, B, ...; with --baseline torch, torchvision's eager step of the same net
too), for --rounds rounds after one untimed round: load from other work on shared cores
falls on every variant alike. Each window's time is divided by the first variant's in the
same round; the table gives the median of those ratios (below 1: faster) and their range,
the same for the process's CPU time per step (threads added up: what the step costs when
the cores are busy with other work; not for torch), and our img/s over torchvision
eager's.
The project's own defaults (`vgg_jax.xla_flags`) are switched off in this process, so
`default` is XLA's default; flags in XLA_FLAGS apply to every variant.
"""

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/cpu_flags.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_jax import xla_flags  # noqa: E402

os.environ[xla_flags.SWITCH] = "0"  # before throughput.py applies them

import jax  # noqa: E402

from benchmarks import throughput  # noqa: E402
from vgg_jax import sharding as sharding_lib  # noqa: E402
from vgg_jax import train  # noqa: E402
from vgg_jax.util import markdown_table  # noqa: E402

YNN = "xla_cpu_experimental_ynn_fusion_type"
VARIANTS = {  # name -> XLA flags, as XLA_FLAGS spells them (without the leading --)
  "default": {},
  "ynn": {YNN: "dot,eltwise,reduce"},
  "ynn+conv": {YNN: "dot,eltwise,reduce,individual_convolution"},
  "ynn_conv": {YNN: "individual_convolution"},
  "xnn": {"xla_cpu_experimental_xnn_fusion_type": "dot,eltwise,reduce"},
  "xnn_greedy": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
  "onednn": {
    "xla_cpu_use_onednn": "true",
    "xla_cpu_experimental_onednn_fusion_type": "dot,eltwise,reduce",
  },
  "no_xnnpack": {"xla_cpu_use_xnnpack": "false"},
  "eigen_1_thread": {"xla_cpu_multi_thread_eigen": "false"},
}
# Flags whose XLA_FLAGS value is a list of fusion types: as a compile option each is named
# by its enum value (dot -> LIBRARY_FUSION_TYPE_DOT).
FUSION_TYPE_LISTS = {
  YNN,
  "xla_cpu_experimental_xnn_fusion_type",
  "xla_cpu_experimental_onednn_fusion_type",
}


def compiler_options(flags: dict[str, str]) -> dict:
  """A variant's flags as `Lowered.compile(compiler_options=...)` takes them."""

  def option(name, value):
    if name in FUSION_TYPE_LISTS:
      return ",".join(f"LIBRARY_FUSION_TYPE_{t.upper()}" for t in value.split(","))
    return {"true": True, "false": False}.get(value, value)

  return {name: option(name, value) for name, value in flags.items()}


def flags_text(flags: dict[str, str]) -> str:
  return " ".join(f"--{name}={value}" for name, value in flags.items()) or "(none)"


def compare(
  config, variants: list[str], *, steps: int, rounds: int, torch_baseline: bool
) -> dict[str, list[tuple[float, float]]]:
  """{variant (or "torch eager"): [(wall s, CPU s) per step, per round]}, round 0 untimed."""
  mesh = sharding_lib.make_mesh(config.mesh)
  program = train.build_program(config, mesh, throughput.NUM_CLASSES, throughput.CHANNELS)
  state = program.init()
  batch = throughput.random_batch(program.batch_sharding, config.optim.batch_size, config.data.crop)
  lowered = program.step.lower(state, batch)
  compiled = {
    name: lowered.compile(compiler_options=compiler_options(VARIANTS[name])) for name in variants
  }
  times = {name: [] for name in [*variants, *["torch eager"] * torch_baseline]}

  def window(step):
    nonlocal state
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      state, _ = step(state, batch)
    jax.block_until_ready(state)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps

  for round_ in range(rounds + 1):
    for name, step in compiled.items():
      times[name].append(window(step))
    if torch_baseline:  # its CPU time is not measured (it also builds its net each time)
      row = throughput.bench_torch(config, "torch eager", warmup=0, steps=steps, windows=1)
      times["torch eager"].append((row["step_s"], None))
    print(
      f"round {round_}: "
      + ", ".join(f"{name} {t[-1][0] * 1e3:.0f} ms" for name, t in times.items()),
      file=sys.stderr,
      flush=True,
    )
  return {name: t[1:] for name, t in times.items()}


def ratio_text(values: list, bases: list) -> str:
  if None in values:
    return "n/a"
  ratios = [v / b for v, b in zip(values, bases)]
  return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def table(times: dict[str, list[tuple[float, float]]]) -> str:
  base = next(iter(times))
  walls = {name: [w for w, _ in t] for name, t in times.items()}
  cpus = {name: [c for _, c in t] for name, t in times.items()}
  torch = walls.get("torch eager")
  body = [
    [
      name,
      flags_text(VARIANTS.get(name, {})) if name in VARIANTS else "n/a",
      f"{statistics.median(walls[name]) * 1e3:.1f}",
      ratio_text(walls[name], walls[base]),
      "n/a" if None in cpus[name] else f"{statistics.median(cpus[name]) * 1e3:.0f}",
      ratio_text(cpus[name], cpus[base]),
      ratio_text(torch, walls[name]) if torch and name in VARIANTS else "n/a",
    ]
    for name in times
  ]
  return markdown_table(
    [
      "variant",
      "XLA flags",
      "step (ms)",
      f"step / {base}'s (range)",
      "CPU ms / step",
      f"CPU / {base}'s (range)",
      "ours / torch eager (range)",
    ],
    body,
  )


def main(argv=None):
  parser = argparse.ArgumentParser(
    prog="python benchmarks/cpu_flags.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--configs", default="A", help="Table 1 configs, comma-separated")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument(
    "--variants",
    default="default,ynn",
    help=f"comma-separated, the first is the reference: {', '.join(VARIANTS)}",
  )
  parser.add_argument("--steps", type=int, default=3, help="steps per window")
  parser.add_argument("--rounds", type=int, default=5, help="timed turns of each variant")
  parser.add_argument(
    "--baseline",
    choices=("none", "torch"),
    default="none",
    help="also time torchvision's eager step in each round",
  )
  args = parser.parse_args(argv)
  variants = args.variants.split(",")
  if unknown := set(variants) - set(VARIANTS):
    parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
  print(
    f"`{' '.join(sys.argv)}`: {os.cpu_count()} CPUs, load average "
    f"{os.getloadavg()[0]:.1f} at the start; jax {jax.__version__}"
  )
  for name in args.configs.split(","):
    config = throughput.bench_config(
      name, batch=args.batch, resolution=args.resolution, dtype=args.dtype, width=args.width
    )
    print(
      f"\n{name}, width {args.width:g}, batch {args.batch}, {args.resolution}x"
      f"{args.resolution}, {args.dtype}, {args.rounds} rounds of {args.steps} steps:\n"
    )
    print(
      table(
        compare(
          config,
          variants,
          steps=args.steps,
          rounds=args.rounds,
          torch_baseline=args.baseline == "torch",
        )
      ),
      flush=True,
    )
  print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  main()
