"""How much of the bare train step's speed the whole training loop keeps.

  python benchmarks/loop_efficiency.py \\
      --config experiments/fashion_mnist.py:backend=numpy --warmup 50 --steps 400 \\
      --checkpoint_every 200                      # CPU: real Fashion-MNIST, NumPy input
  python benchmarks/loop_efficiency.py \
      --config experiments/fashion_mnist.py:backend=device --warmup 50 --steps 400 \
      --checkpoint_every 200                      # the same, input held on the devices
  python benchmarks/loop_efficiency.py --config experiments/paper.py:model=D \\
      --input synthetic --warmup 50 --steps 500   # GPU: no data set, no TensorFlow

Runs the trainer unchanged (`vgg_jax.train.train_and_evaluate`: input pipeline, placing
batches on the mesh, metric logging every step, checkpoints) for warmup + steps + 1
steps, noting when the input pipeline hands over each training batch. The trainer pulls
at most a few batches ahead (`train.prefetch`), so over a window the pipeline keeps the
loop's pace: from the batch of step warmup + 1 to that of step warmup + steps + 1 the
loop ran `steps` whole iterations, with compilation, start-up and the final evaluation
outside the window. The same config's bare step is timed in the same process before and
after the loop (`throughput.bench_vgg_jax`: the same program on one batch already on the
devices), and the ratio is

  loop img/s / mean bare-step img/s    (1.0: the loop costs nothing beyond the step);

the two bare numbers apart show how steady the machine was.

With `backend=device` the batches are gathered and augmented on the step's devices, in
the loop's thread (no `train.prefetch`), so the ratio shows what that costs the loop.
`--input synthetic` replaces the data set by a few random batches held in host memory at
the config's crop (ImageNet's 1000 classes, 3 channels), so what is measured is the loop,
not a data set's decoding. `--no_prefetch` times the loop as it was before
`train.prefetch` (pulling each batch only when its step is due), to show what that buys.
The trainer's own smoothed `img_per_s` (metrics.jsonl, tqdm's rate, which forgets the
compilation only slowly) after the warm-up is reported beside the ratio; checkpoints and
evaluations that fell in the window are listed.
"""

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable
from unittest import mock

if __package__ in (None, ""):  # run as `python benchmarks/loop_efficiency.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_jax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()  # before jax starts a backend; VGG_JAX_XLA_CPU_DEFAULTS=0: off

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import throughput  # noqa: E402
from vgg_jax import config as config_lib  # noqa: E402
from vgg_jax import data as data_lib  # noqa: E402
from vgg_jax import metrics as metrics_lib  # noqa: E402
from vgg_jax import train  # noqa: E402


class BatchClock:
  """Wraps the training pipeline to note when it hands over each step's batch."""

  def __init__(self):
    self.times: dict[int, float] = {}  # step (1-based) -> time.perf_counter()
    self.pipeline: data_lib.Pipeline | None = None

  def wrap(self, pipeline: data_lib.Pipeline) -> data_lib.Pipeline:
    self.pipeline = pipeline

    def iter_from(start):
      for step, batch in enumerate(pipeline.iter_from(start), start + 1):
        self.times[step] = time.perf_counter()
        yield batch

    return dataclasses.replace(pipeline, iter_from=iter_from)

  def seconds_per_step(self, first: int, last: int) -> float:
    """Loop time per step between handing over batch `first` and batch `last`."""
    return (self.times[last] - self.times[first]) / (last - first)


def synthetic_pipeline(
  cfg,
  *,
  train: bool,
  global_batch_size: int,
  seed: int = 0,
  batches: int = 4,
  num_classes: int = throughput.NUM_CLASSES,
  **_,
) -> data_lib.Pipeline:
  """`batches` random batches in host memory, cycled: input that costs only the copy to
  the devices. The training epoch never ends, so the only evaluation is the final one."""
  rng = np.random.default_rng(seed)
  shape = (cfg.crop, cfg.crop, throughput.CHANNELS)
  data = [
    dict(
      image=rng.standard_normal((global_batch_size,) + shape, np.float32),
      label=rng.integers(0, num_classes, global_batch_size, np.int32),
      mask=np.ones(global_batch_size, bool),
    )
    for _ in range(batches)
  ]

  def iter_from(start):
    step = start
    while train or step < batches:
      yield data[step % batches]
      step += 1

  return data_lib.Pipeline(
    iter_from,
    batches * global_batch_size,
    steps=sys.maxsize if train else batches,
    local_batch_size=global_batch_size,
    image_shape=shape,
    num_classes=num_classes,
  )


def no_prefetch(iterator):
  """`train.prefetch` undone: the loop waits for each batch when its step is due."""
  return iterator


@contextlib.contextmanager
def timed_training_input(clock: BatchClock, make: Callable[..., data_lib.Pipeline]):
  """The trainer's `data.make_pipeline` replaced by `make` with its training pipeline
  wrapped by `clock`; the trainer itself is not touched."""

  def make_timed(cfg, *, train, **kwargs):
    pipeline = make(cfg, train=train, **kwargs)
    return clock.wrap(pipeline) if train else pipeline

  with mock.patch.object(data_lib, "make_pipeline", make_timed):
    yield


def classes_and_channels(
  config: ml_collections.ConfigDict, make: Callable[..., data_lib.Pipeline]
) -> tuple[int, int]:
  """What the trainer will build its model for, learnt as it does: from the pipeline."""
  pipeline = make(
    config.data, train=True, global_batch_size=config.optim.batch_size, seed=config.seed
  )
  return pipeline.num_classes, pipeline.image_shape[-1]


def bare_img_s(
  config: ml_collections.ConfigDict, classes: int, channels: int, *, steps: int, windows: int
) -> float:
  return throughput.bench_vgg_jax(
    config, num_classes=classes, in_channels=channels, warmup=3, steps=steps, windows=windows
  )["img_s"]


def window_events(
  config: ml_collections.ConfigDict, steps_per_epoch: int, first: int, last: int
) -> dict:
  """Checkpoint saves and evaluations the trainer made inside [first, last)."""
  window = range(first, last)
  return dict(
    checkpoints=[
      s for s in window if s % config.checkpoint.every_steps == 0 or s % steps_per_epoch == 0
    ],
    evaluations=[s for s in window if s % steps_per_epoch == 0],
  )


def measure(
  config: ml_collections.ConfigDict,
  *,
  warmup: int,
  steps: int,
  synthetic: bool = False,
  prefetch: bool = True,
  workdir: str | None = None,
  bare_steps: int = 20,
  bare_windows: int = 5,
) -> dict:
  """Loop img/s over `steps` steps after `warmup`, the bare step's img/s before and after
  (each the median of `bare_windows` windows of `bare_steps`), and their ratio."""
  first, last = warmup + 1, warmup + steps + 1
  config = copy.deepcopy(config)
  config.optim.max_steps = last
  clock = BatchClock()
  make = synthetic_pipeline if synthetic else data_lib.make_pipeline
  bare = functools.partial(
    bare_img_s, config, *classes_and_channels(config, make), steps=bare_steps, windows=bare_windows
  )
  before = bare()
  with contextlib.ExitStack() as stack:
    if workdir is None:
      workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="loop_efficiency_"))
    elif os.path.exists(workdir) and os.listdir(workdir):
      raise FileExistsError(f"{workdir} is not empty: the trainer would resume from it")
    if not prefetch:
      stack.enter_context(mock.patch.object(train, "prefetch", no_prefetch))
    with timed_training_input(clock, make):
      train.train_and_evaluate(config, workdir)
    logged = [
      r["img_per_s"]
      for r in metrics_lib.read_metrics(workdir)
      if "img_per_s" in r and first < r["step"] < last
    ]
  after = bare()
  batch = config.optim.batch_size
  loop_img_s = batch / clock.seconds_per_step(first, last)
  return dict(
    config=config.model.name,
    width=config.model.width,
    batch=batch,
    crop=config.data.crop,
    dtype=config.model.dtype,
    input="synthetic" if synthetic else f"{config.data.name} ({config.data.backend})",
    prefetch=prefetch,
    warmup=warmup,
    steps=steps,
    loop_img_s=loop_img_s,
    bare_img_s_before=before,
    bare_img_s_after=after,
    ratio=loop_img_s / statistics.mean((before, after)),
    logged_img_s=statistics.mean(logged) if logged else None,
    **window_events(config, clock.pipeline.steps, first, last),
  )


def report(result: dict) -> str:
  logged = result["logged_img_s"]
  return (
    f"{result['config']} (width {result['width']:g}, batch {result['batch']}, crop "
    f"{result['crop']}, {result['dtype']}), input {result['input']}"
    f"{'' if result['prefetch'] else ', no prefetch'}, steps "
    f"{result['warmup'] + 1}..{result['warmup'] + result['steps']}:\n"
    f"  loop {result['loop_img_s']:.1f} img/s, bare step "
    f"{result['bare_img_s_before']:.1f} (before) and {result['bare_img_s_after']:.1f} "
    f"(after) img/s, ratio {result['ratio']:.3f}\n"
    f"  the loop's own logged img_per_s (tqdm, smoothed): "
    f"{'n/a' if logged is None else f'{logged:.1f}'}\n"
    f"  in the window: checkpoints at {result['checkpoints'] or 'none'}, "
    f"evaluations at {result['evaluations'] or 'none'}"
  )


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python benchmarks/loop_efficiency.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--config",
    default="experiments/fashion_mnist.py:backend=numpy",
    help="experiments/FILE.py:ARG, as `launch.py train --config`",
  )
  parser.add_argument(
    "--input",
    choices=("data", "synthetic"),
    default="data",
    help="the config's data set, or random batches in host memory",
  )
  parser.add_argument("--warmup", type=int, default=50, help="loop steps before the window")
  parser.add_argument("--steps", type=int, default=400, help="loop steps timed")
  parser.add_argument(
    "--no_prefetch", action="store_true", help="without train.prefetch, as the loop was before it"
  )
  parser.add_argument(
    "--checkpoint_every",
    type=int,
    default=0,
    help="override config.checkpoint.every_steps (0: the config's)",
  )
  parser.add_argument("--workdir", default=None, help="an empty directory (default: temp)")
  parser.add_argument("--out", default="", help="write loop_efficiency.json here")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  name, _, arg = args.config.partition(":")
  config = config_lib.experiment_config(name, arg)
  if args.checkpoint_every:
    config.checkpoint.every_steps = args.checkpoint_every
  result = measure(
    config,
    warmup=args.warmup,
    steps=args.steps,
    synthetic=args.input == "synthetic",
    prefetch=not args.no_prefetch,
    workdir=args.workdir,
  )
  result["command"] = " ".join(sys.argv)
  print(report(result))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "loop_efficiency.json"), "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
