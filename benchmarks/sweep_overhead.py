"""What a local sweep pays per run beyond the run's own work: in one process against one
process per run, measured in the same invocation.

  python benchmarks/sweep_overhead.py                    # CPU: about 5 minutes on 2 cores
  python benchmarks/sweep_overhead.py --ways in-process --test_images 0  # evaluation's host work

The same tiny sweep (A, and B warm-started from it, x 2 seeds: 1/16 width, batch 32,
`--steps` steps, validation on 256 held-out images, the configured evaluations on 64
test images) runs three ways, each in a fresh root:

  subprocess, no cache   each run as `launch.py train` + `launch.py eval` processes, JAX's
                         persistent compilation cache off (the sweep before issue 13);
  subprocess             the same with the cache under the root (`--subprocess`);
  in-process             the default: every run in this process, programs shared by
                         `train.build_program` / `evaluate.forward_program`, the cache on.

The runs do almost no work (a few steps of a tiny net on few images), so a run's wall
time is its overhead: process start-up and imports, reading the data set, compilation,
checkpointing. Printed: wall time per run of each way and its ratio to in-process.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as `python benchmarks/sweep_overhead.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_jax import sweep  # noqa: E402
from vgg_jax.util import markdown_table  # noqa: E402

EXPERIMENT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "fashion_mnist.py"
)


def tiny_sweep(steps: int, seeds: int, test_images: int = 64) -> list[sweep.Run]:
  extra = (
    f",backend=numpy,width=0.0625,batch=32,steps={steps},holdout=256,test_images={test_images}"
  )
  return sweep.expand(
    sweep.paper_chain((("A", "256"), ("B", "256")), range(seeds), scales={"256": "32"}, extra=extra)
  )


def without_cache(command: list[str]) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  return subprocess.run(command, capture_output=True, text=True, check=False, env=env)


def timed_sweep(runs: list[sweep.Run], root: str, **kwargs) -> float:
  start = time.perf_counter()
  outcome = sweep.run_local(runs, EXPERIMENT, root, log=lambda message: None, **kwargs)
  seconds = time.perf_counter() - start
  if set(outcome.values()) != {"done"}:
    raise RuntimeError(f"the sweep in {root} did not finish: {outcome}")
  return seconds


WAYS = {
  "subprocess, no cache": dict(execute=without_cache),
  "subprocess": dict(subprocesses=True),
  "in-process": {},
}  # last: this process then holds the programs it compiled


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10, help="training steps per run")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument(
    "--test_images",
    type=int,
    default=64,
    help="test images each run's evaluations read (0: all 10,000, the evaluations' host work)",
  )
  parser.add_argument(
    "--ways", default=",".join(WAYS), help=f"comma-separated, of: {', '.join(WAYS)}"
  )
  args = parser.parse_args()
  runs = tiny_sweep(args.steps, args.seeds, args.test_images)
  ways = {way: WAYS[way] for way in args.ways.split(",")}
  seconds = {}
  with tempfile.TemporaryDirectory() as tmp:
    for way, kwargs in ways.items():
      seconds[way] = timed_sweep(runs, os.path.join(tmp, way.replace(" ", "_")), **kwargs)
      print(f"{way}: {seconds[way]:.1f} s for {len(runs)} runs", flush=True)
  per_run = {way: s / len(runs) for way, s in seconds.items()}
  print(
    markdown_table(
      ["way", "runs", "wall (s)", "per run (s)", "per run / in-process"],
      [
        [
          way,
          len(runs),
          f"{seconds[way]:.1f}",
          f"{per_run[way]:.1f}",
          f"{per_run[way] / per_run['in-process']:.2f}" if "in-process" in per_run else "n/a",
        ]
        for way in ways
      ],
    )
  )


if __name__ == "__main__":
  main()
