"""Each VGG convolution layer's shape timed with XLA's convolution and as one matmul, on
this machine: the measurements behind `vgg_jax.conv.cpu_prefers_matmul`.

  python benchmarks/conv_lowering.py                    # 32 px train steps, 224 px forward
  python benchmarks/conv_lowering.py --widths 1,0.125 --batches 32 --resolutions 32

For every distinct conv layer of configurations A-E (input map, in and out channels, kernel)
at each width, batch and resolution, it times what the train step runs for that layer:
the forward convolution and both gradients (the first layer's input gets none), or at
--forward_resolutions the forward convolution alone (feature extraction). Each row gives
the median of --repeats timings of both lowerings, which is faster, and what the rule
chooses; the last lines count the rule's misses and the time they cost against choosing
the faster every time. Layers and timings are in milliseconds per call.
"""

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_jax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()

import jax  # noqa: E402
from jax import lax  # noqa: E402

from vgg_jax import architectures, conv  # noqa: E402
from vgg_jax.util import markdown_table  # noqa: E402

CONFIGS = ("A", "B", "C", "D", "E")


def layer_shapes(width: float, resolution: int) -> list[tuple[int, int, int, int]]:
  """The distinct (map side, in channels, out channels, kernel) of A-E's conv layers."""
  shapes = []
  for name in CONFIGS:
    side, channels = resolution, 3
    for stage in architectures.stages(name):
      for layer in stage:
        if layer.kind == "lrn":
          continue
        out = max(1, round(layer.features * width))
        shapes.append((side, channels, out, layer.kernel))
        channels = out
      side //= 2
  return sorted(set(shapes), key=lambda s: (-s[0], s[1], s[2], s[3]))


def layer_program(lowering: str, forward_only: bool, first: bool):
  """The layer's work in a train step (or its forward pass alone), jitted."""
  fn = conv.conv_function(lowering)

  def forward(x, w):
    dims = lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
    padding = "SAME" if w.shape[0] > 1 else "VALID"
    return fn(x, w, (1, 1), padding, dimension_numbers=dims)

  if forward_only:
    return jax.jit(forward)

  def vjp(x, w, cotangent):
    y, pullback = jax.vjp(forward, x, w)
    dx, dw = pullback(cotangent)
    return (y, dw) if first else (y, dx, dw)

  return jax.jit(vjp)


def time_layer(program, args, repeats: int) -> float:
  jax.block_until_ready(program(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(program(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def measure(shape, batch: int, forward_only: bool, repeats: int) -> dict:
  side, channels, features, kernel = shape
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, side, side, channels))
  w = jax.random.normal(keys[1], (kernel, kernel, channels, features)) * 0.05
  args = (
    (x, w) if forward_only else (x, w, jax.random.normal(keys[2], (batch, side, side, features)))
  )
  first = channels == 3
  ms = {
    lowering: time_layer(layer_program(lowering, forward_only, first), args, repeats)
    for lowering in ("xla", "gemm")
  }
  rule = "gemm" if conv.cpu_prefers_matmul(x.shape, w.shape) else "xla"
  return dict(ms, best=min(ms, key=ms.get), rule=rule)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  floats = lambda s: [float(v) for v in s.split(",") if v]  # noqa: E731
  ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
  parser.add_argument("--widths", type=floats, default=[1, 0.5, 0.25, 0.125])
  parser.add_argument("--batches", type=ints, default=[32, 128])
  parser.add_argument("--resolutions", type=ints, default=[32])
  parser.add_argument("--forward_resolutions", type=ints, default=[224])
  parser.add_argument("--forward_batch", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)

  cases = [
    (w, b, r, False) for w in args.widths for b in args.batches for r in args.resolutions
  ] + [(1.0, args.forward_batch, r, True) for r in args.forward_resolutions]
  header = ["work", "width", "batch", "map", "C", "F", "k", "xla ms", "gemm ms", "best", "rule"]
  rows, best_total, rule_total, misses = [], 0.0, 0.0, 0
  for width, batch, resolution, forward_only in cases:
    for shape in layer_shapes(width, resolution):
      r = measure(shape, batch, forward_only, args.repeats)
      side, channels, features, kernel = shape
      rows.append(
        ["fwd" if forward_only else "train", f"{width:g}", batch, f"{side}x{side}"]
        + [channels, features, kernel, f"{r['xla']:.2f}", f"{r['gemm']:.2f}", r["best"]]
        + [r["rule"] + ("" if r["rule"] == r["best"] else " (miss)")]
      )
      best_total += r[r["best"]]
      rule_total += r[r["rule"]]
      misses += r["rule"] != r["best"]
      print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
  print(markdown_table(header, rows))
  print(
    f"\nrule misses: {misses} of {len(rows)} shapes; the rule's total "
    f"{rule_total:.1f} ms against {best_total:.1f} ms for the faster of each "
    f"({rule_total / best_total:.3f}x); jax {jax.__version__}, {jax.devices()[0].device_kind}"
  )


if __name__ == "__main__":
  main()
