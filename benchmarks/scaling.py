"""Data-parallel communication of the trainer's step: on paper, and in its compiled HLO.

  python benchmarks/scaling.py                    # the tables of docs/scaling.md

On paper, for each config at full width on ImageNet (224 crops, 1000 classes): the
parameters (`count_params`), the gradient bytes a data-parallel step all-reduces (float32,
the parameters' dtype, in which the trainer's gradients are), and the ring all-reduce's
floor, 2 (n - 1) / n x bytes / bandwidth, on each interconnect of `INTERCONNECTS`, beside
the compute time of a step (6 x multiply-adds x batch per chip / (bf16 peak x MFU)).

From the compiler: the trainer's real step for one config, compiled (not run) for
simulated CPU devices under each sharding preset of `vgg_jax.sharding`, with what its
collectives move per chip and step, its FLOPs and memory per chip.
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as `python benchmarks/scaling.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_jax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()  # before jax starts a backend; VGG_JAX_XLA_CPU_DEFAULTS=0: off

DEVICES = 8  # simulated CPU devices for the compiled tables; set before jax is imported
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
).strip()

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import throughput  # noqa: E402
from vgg_jax import architectures, train, xla_cost  # noqa: E402
from vgg_jax import sharding as sharding_lib  # noqa: E402
from vgg_jax.model import count_params, create_model, training_flops_per_image  # noqa: E402
from vgg_jax.util import PEAK_FLOPS, markdown_table  # noqa: E402

# name -> (chips in the all-reduce, all-reduce bandwidth per chip in bytes/s, peak key).
# TPU v4: the "all-reduce bandwidth per Pod" of 1.1 PB/s over its 4096 chips
# (cloud.google.com/tpu/docs/v4). TPU v5p: half the 1200 GB/s bidirectional ICI per chip
# (cloud.google.com/tpu/docs/v5p), as v5e's 51.2 TB/s per 256-chip pod is half its 400 GB/s.
# H100: NVLink 4 gives 900 GB/s bidirectional per GPU, 450 GB/s each way; we assume an
# 8-GPU NVSwitch node's all-reduce reaches that bus bandwidth (NCCL's busbw), none better.
INTERCONNECTS = {
  "TPU v4, 64-chip cube": (64, 1.1e15 / 4096, "tpu-v4"),
  "TPU v5p, 64-chip cube": (64, 600e9, "tpu-v5p"),
  "8x H100 NVLink node": (8, 450e9, "h100"),
}
GRADIENT_BYTES = 4  # float32


def ring_all_reduce_seconds(nbytes: float, chips: int, bandwidth: float) -> float:
  """Each chip sends (and receives) 2 (n - 1) / n of the buffer: reduce-scatter, then
  all-gather, around a ring."""
  return 2 * (chips - 1) / chips * nbytes / bandwidth


def paper_rows(batch_per_chip: int, mfu: float) -> tuple[list[list], list[list]]:
  """(per config: parameters, FC share, gradient MB, GFLOP/img; per interconnect and
  config: all-reduce floor, compute time, their ratio)."""
  configs, floors = [], []
  for name in (n for n in architectures.TABLE1 if n != "A-LRN"):  # A-LRN: A's parameters
    model = nnx.eval_shape(lambda: create_model(name))
    params = count_params(model)
    fc67 = sum(getattr(model, layer).kernel.size for layer in ("fc6", "fc7"))
    flops = training_flops_per_image(model, 224)
    grad = params * GRADIENT_BYTES
    configs.append(
      [
        name,
        f"{params / 1e6:.1f}",
        f"{fc67 / params:.0%}",
        f"{grad / 1e6:.0f}",
        f"{flops / 1e9:.1f}",
      ]
    )
    for link, (chips, bandwidth, chip) in INTERCONNECTS.items():
      floor = ring_all_reduce_seconds(grad, chips, bandwidth)
      compute = batch_per_chip * flops / (PEAK_FLOPS[chip] * mfu)
      floors.append(
        [link, name, f"{floor * 1e3:.2f}", f"{compute * 1e3:.1f}", f"{floor / compute:.1%}"]
      )
  return configs, floors


def compiled_row(name: str, preset: str, model_axis: int, batch_per_chip: int) -> list:
  """The real step for 224 crops compiled for DEVICES devices (abstract arrays: nothing is
  allocated or run): its collectives, FLOPs and memory per chip."""
  config = throughput.bench_config(
    name,
    batch=batch_per_chip * DEVICES,
    resolution=224,
    chips=DEVICES,
    sharding=preset,
    model_axis=model_axis,
  )
  mesh = sharding_lib.make_mesh(config.mesh)
  program = train.build_program(config, mesh, throughput.NUM_CLASSES, throughput.CHANNELS)
  batch = jax.eval_shape(
    lambda: throughput.random_batch(program.batch_sharding, config.optim.batch_size, 224)
  )  # placed by the step's jit
  step = program.step.lower(program.abstract_state, batch).compile()
  row = dict(framework="vgg_jax", collective_bytes=xla_cost.collective_bytes(step))
  return [
    preset,
    f"data {DEVICES // model_axis} x model {model_axis}",
    throughput.collectives(row),
    f"{xla_cost.xla_flops(step) / 1e12:.2f}",
    throughput.mib(xla_cost.xla_bytes(step)),
  ]


def main(argv=None):
  parser = argparse.ArgumentParser(
    prog="python benchmarks/scaling.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--batch_per_chip", type=int, default=128)
  parser.add_argument("--mfu", type=float, default=0.5, help="for the compute time")
  parser.add_argument("--config", default="D", help="the config compiled per preset")
  args = parser.parse_args(argv)
  configs, floors = paper_rows(args.batch_per_chip, args.mfu)
  print(
    markdown_table(
      ["config", "params (M)", "fc6+fc7", "gradients (MB, fp32)", "GFLOP/img (6 x MACs)"], configs
    )
  )
  print(
    f"\nRing all-reduce floor of the fp32 gradients vs compute at {args.batch_per_chip} "
    f"images per chip and {args.mfu:.0%} MFU:\n"
  )
  print(
    markdown_table(
      ["interconnect", "config", "all-reduce floor (ms)", "compute (ms)", "floor / compute"], floors
    )
  )
  print(
    f"\n{args.config} at 224, {args.batch_per_chip} images per chip, compiled for "
    f"{DEVICES} simulated CPU devices; per chip and step:\n"
  )
  print(
    markdown_table(
      ["sharding", "mesh", "collectives (MiB)", "TFLOP", "XLA memory (MiB)"],
      [
        compiled_row(args.config, preset, model_axis, args.batch_per_chip)
        for preset, model_axis in (("replicated", 1), ("fsdp", 1), ("tensor", 2), ("tensor", 8))
      ],
    )
  )


if __name__ == "__main__":
  main()
