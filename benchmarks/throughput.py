"""Training throughput of the trainer's own step, beside torchvision's in the same run.

  python benchmarks/throughput.py --configs A,B,C,D,E --batch 128 --resolution 224 \\
      --baseline torch --out DIR                  # one GPU, bf16: the table the issue asks for
  python benchmarks/throughput.py --configs A,D --batch 8 --resolution 32 \\
      --baseline torch                            # any CPU, in about a minute
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/throughput.py \\
      --devices 1,8 ...                           # the same global batch on 1 and 8 devices
  python benchmarks/throughput.py --configs A,D --width 1,0.5,0.25,0.125 --batch 32 \\
      --resolution 32 --dtype float32 --conv xla,gemm,auto --baseline torch \\
      --no_torch_compile                          # the CPU's convolution lowerings

The step is the trainer's, not a copy: `vgg_jax.train.build_program` jits `train_step` with
the state's shardings and donation; it is lowered and compiled once, then run on one
random batch that already lives on the devices, so input costs nothing here
(`loop_efficiency.py` measures what the real loop adds). Each row reports

  step (ms)     the median over --windows windows of --steps steps each, waiting on the
                device once at the end of a window (after --warmup steps);
  img/s/chip    global batch / step time / chips in the mesh;
  MFU           the model's training FLOPs (6 x its multiply-adds per image, 92.8 GFLOP
                for D at 224; `model.training_flops_per_image`) x img/s per chip / the
                chip's dense bf16 peak (`PEAK_FLOPS` by device kind, or --peak_flops; none
                on a CPU); torch rows count the same FLOPs per image as ours;
  GFLOP/img     XLA's own count of the compiled step's FLOPs per training image (fwd +
                bwd + update). On a CPU it is within 3% of 6 x MACs; on a GPU it leaves out
                the convolutions that run as cuDNN calls (0.4 for D on an H200), which is
                why MFU does not use it;
  XLA memory    what the compiled step needs on a chip: arguments + outputs - donated +
                temporaries (torch: n/a);
  collectives   MiB per step each chip's collectives of the compiled step produce, by kind
                (all-reduce: AR, reduce-scatter: RS, all-gather: AG), from its HLO: with
                data parallelism, AR is the gradients (parameters x 4 bytes);
  peak memory   the device's peak bytes in use in this process so far, where it reports it
                (GPU, TPU; torch: its allocator's peak for its own run);
  compile (s)   lowering and compiling our step; torch: its first step (torch.compile's
                compilation, or eager's warm-up).

--baseline torch times torchvision's network of the same config (vgg11/13/16/19 for
A/B/D/E; C's 1x1 convolutions have none, and narrow nets are not torchvision's) with the
same SGD (momentum, weight decay on weights only), channels_last and bf16 autocast, eagerly
and under torch.compile, and gives our img/s per chip over theirs. Away from 224 its
classifier takes the K x K x 512 feature map (K = resolution / 32) as ours does, instead
of pooling it to 7 x 7. TensorFlow is never imported: the GPU machines have none.

--conv times our step with each of the model's convolution lowerings (VGGConfig.conv:
XLA's convolution, one matmul, or per layer by shape); with more than one, a table gives
each config, width and batch's img/s under each and auto's over the better of the other two.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable

if __package__ in (None, ""):  # run as `python benchmarks/throughput.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vgg_jax import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()  # before jax starts a backend; VGG_JAX_XLA_CPU_DEFAULTS=0: off

# torch shares the GPU with JAX in this process, so JAX allocates as it goes instead of
# taking 75% of the memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402

from vgg_jax import architectures, train  # noqa: E402
from vgg_jax import config as config_lib  # noqa: E402
from vgg_jax import sharding as sharding_lib  # noqa: E402
from vgg_jax.model import VGG, training_flops_per_image  # noqa: E402
from vgg_jax.util import PEAK_FLOPS, markdown_table  # noqa: E402
from vgg_jax.xla_cost import COLLECTIVE_SHORT, collective_bytes, xla_bytes, xla_flops  # noqa: E402

NUM_CLASSES = 1000  # ImageNet's head, for us and for torchvision
CHANNELS = 3
# jax's device_kind -> the chip's key in PEAK_FLOPS; a v5p calls itself "TPU v5".
DEVICE_KINDS = (
  (r"h200", "h200"),
  (r"h100", "h100"),
  (r"a100", "a100"),
  (r"tpu v4", "tpu-v4"),
  (r"tpu v5p?$", "tpu-v5p"),
)
TORCH_MODES = {"torch eager": False, "torch.compile": True}  # framework name -> compile?
RATIO_KEYS = {"torch eager": "vs_torch_eager", "torch.compile": "vs_torch_compile"}


# ---------------------------------------------------------------------------- common


def bench_config(
  name: str,
  *,
  batch: int,
  resolution: int,
  dtype: str = "bfloat16",
  width: float = 1.0,
  conv: str = "auto",
  chips: int = 1,
  sharding: str = "replicated",
  model_axis: int = 1,
) -> ml_collections.ConfigDict:
  """The trainer's config with the paper's recipe (`base_config`) at this size, on the
  first `chips` devices; compute in `dtype`, parameters in float32."""
  c = config_lib.base_config()
  c.model.update(name=name, width=width, dtype=dtype, conv=conv)
  c.data.update(crop=resolution, scale=(resolution, resolution), eval_scale=resolution)
  c.optim.batch_size = batch
  c.mesh = (("data", chips // model_axis), ("model", model_axis))
  c.sharding = sharding
  config_lib.validate(c, chips // model_axis)
  return c


def seconds_per_step(run: Callable[[int], None], *, warmup: int, steps: int, windows: int) -> float:
  """`run(n)` takes n steps and waits for the last; the median window, per step. Waiting
  once per window keeps the device's queue full, as in training."""
  run(warmup)
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    run(steps)
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def peak_flops(device_kind: str) -> float | None:
  """The chip's dense bf16 FLOP/s, or None for a device we have no data sheet for."""
  for pattern, key in DEVICE_KINDS:
    if re.search(pattern, device_kind.lower()):
      return PEAK_FLOPS[key]
  return None


def with_rates(row: dict, peak: float | None) -> dict:
  """Adds img/s (global and per chip) and MFU to a row holding step_s and FLOPs/image."""
  if row["step_s"] is None:
    return dict(row, img_s=None, img_s_per_chip=None, mfu=None)
  img_s = row["batch"] / row["step_s"]
  per_chip = img_s / row["chips"]
  flops = row["model_flops_per_image"]
  mfu = per_chip * flops / peak if peak and flops else None
  return dict(row, img_s=img_s, img_s_per_chip=per_chip, mfu=mfu)


def row_for(framework: str, config: ml_collections.ConfigDict, **measured) -> dict:
  """A table row: what was run, then what was measured (None where not measured)."""
  return (
    dict(
      framework=framework,
      config=config.model.name,
      chips=1,
      batch=config.optim.batch_size,
      resolution=config.data.crop,
      dtype=config.model.dtype,
      width=config.model.width,
      conv=config.model.conv,
      step_s=None,
      compile_s=None,
      flops_per_image=None,
      model_flops_per_image=None,
      xla_bytes=None,
      collective_bytes={},
      peak_bytes=None,
      note="",
    )
    | measured
  )


# ---------------------------------------------------------------------- our step


def random_batch(
  sharding, batch: int, resolution: int, num_classes: int = NUM_CLASSES, channels: int = CHANNELS
) -> dict:
  """A batch in the input pipeline's format (`vgg_jax.data`), made on its devices."""

  def make(key):
    images, labels = jax.random.split(key)
    return dict(
      image=jax.random.normal(images, (batch, resolution, resolution, channels)),
      label=jax.random.randint(labels, (batch,), 0, num_classes),
      mask=jnp.ones((batch,), bool),
    )

  return jax.jit(make, out_shardings=sharding)(jax.random.key(0))


def peak_bytes_in_use(devices) -> int | None:
  stats = [d.memory_stats() or {} for d in devices]
  peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
  return max(peaks) if peaks else None


def bench_vgg_jax(
  config: ml_collections.ConfigDict,
  *,
  num_classes: int = NUM_CLASSES,
  in_channels: int = CHANNELS,
  warmup: int = 3,
  steps: int = 10,
  windows: int = 3,
  peak: float | None = None,
) -> dict:
  """Times the trainer's compiled train step for `config` on a random on-device batch."""
  mesh = sharding_lib.make_mesh(config.mesh)
  program = train.build_program(config, mesh, num_classes, in_channels)
  state = program.init()
  batch_size, resolution = config.optim.batch_size, config.data.crop
  batch = random_batch(program.batch_sharding, batch_size, resolution, num_classes, in_channels)
  start = time.perf_counter()
  step = program.step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start

  def run(n):
    nonlocal state
    for _ in range(n):
      state, _ = step(state, batch)
    jax.block_until_ready(state)

  step_s = seconds_per_step(run, warmup=warmup, steps=steps, windows=windows)
  chips, flops = mesh.devices.size, xla_flops(step)
  model = nnx.eval_shape(lambda: VGG(program.model, rngs=nnx.Rngs(0)))
  return with_rates(
    row_for(
      "vgg_jax",
      config,
      chips=chips,
      step_s=step_s,
      compile_s=compile_s,
      flops_per_image=flops * chips / batch_size if flops else None,
      model_flops_per_image=training_flops_per_image(model, resolution),
      xla_bytes=xla_bytes(step),
      collective_bytes=collective_bytes(step),
      peak_bytes=peak_bytes_in_use(mesh.devices.flat),
    ),
    peak,
  )


# -------------------------------------------------------------------- torchvision


def torch_baselines(baseline: str, compile_too: bool) -> tuple[list[str], str]:
  """The torch frameworks to time, and why none are when torch is asked for but absent
  (looked up, not imported: importing torch takes seconds, and toy widths never use it)."""
  if baseline != "torch":
    return [], ""
  missing = [name for name in ("torch", "torchvision") if importlib.util.find_spec(name) is None]
  if missing:
    return [], f"torch baseline skipped: {' and '.join(missing)} not installed"
  return [name for name, compiles in TORCH_MODES.items() if compile_too or not compiles], ""


# torchvision.models' VGGs by Table 1 name: our aliases but vgg11_lrn (tests/test_benchmarks.py
# checks them against torchvision), so a row without one needs no torch import.
TORCHVISION_VGGS = {
  config: alias for alias, config in architectures.ALIASES.items() if re.fullmatch(r"vgg\d+", alias)
}


def torchvision_alias(name: str) -> str | None:
  """torchvision's name for a Table 1 config (vgg16 for D), None where it has none."""
  return TORCHVISION_VGGS.get(architectures.canonical_name(name))


def torchvision_vgg(alias: str, resolution: int, num_classes: int):
  """torchvision's network; away from 224 its first FC layer takes the K x K x 512 map,
  as our fc6 does, instead of an adaptive pool to 7 x 7."""
  import torch
  import torchvision

  net = getattr(torchvision.models, alias)(num_classes=num_classes)
  if resolution != 224:
    k = resolution // 32
    net.avgpool = torch.nn.Identity()
    net.classifier[0] = torch.nn.Linear(512 * k * k, net.classifier[0].out_features)
  return net


def torch_sgd(net, optim: ml_collections.ConfigDict):
  """Our optimiser in torch: momentum, and weight decay on weights, not biases."""
  import torch

  params = list(net.parameters())
  return torch.optim.SGD(
    [
      dict(params=[p for p in params if p.ndim > 1]),
      dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0),
    ],
    lr=optim.lr,
    momentum=optim.momentum,
    weight_decay=optim.weight_decay,
  )


def bench_torch(
  config: ml_collections.ConfigDict,
  framework: str,
  *,
  warmup: int = 3,
  steps: int = 10,
  windows: int = 3,
  peak: float | None = None,
  flops_per_image: float | None = None,
  model_flops_per_image: float | None = None,
) -> dict:
  """Times torchvision's train step of the same network, or says why it cannot; a
  torch.compile failure is reported in the row, not raised."""
  row = row_for(
    framework, config, flops_per_image=flops_per_image, model_flops_per_image=model_flops_per_image
  )
  alias = torchvision_alias(config.model.name)
  if alias is None:
    return with_rates(dict(row, note=f"no torchvision model for {config.model.name}"), peak)
  if config.model.width != 1.0:
    return with_rates(dict(row, note="torchvision has full-width nets only"), peak)
  import torch

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  batch, resolution = config.optim.batch_size, config.data.crop
  net = (
    torchvision_vgg(alias, resolution, NUM_CLASSES)
    .to(device, memory_format=torch.channels_last)
    .train()
  )
  forward = torch.compile(net) if TORCH_MODES[framework] else net
  sgd = torch_sgd(net, config.optim)
  images = torch.randn(batch, CHANNELS, resolution, resolution, device=device).contiguous(
    memory_format=torch.channels_last
  )
  labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
  bf16 = config.model.dtype == "bfloat16"

  def run(n):
    for _ in range(n):
      with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(forward(images), labels)
      loss.backward()
      sgd.step()
      sgd.zero_grad(set_to_none=True)
    if device.type == "cuda":
      torch.cuda.synchronize()

  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  try:
    start = time.perf_counter()
    run(1)
    first_s = time.perf_counter() - start
    step_s = seconds_per_step(run, warmup=warmup, steps=steps, windows=windows)
  except Exception as e:  # torch.compile needs a working compiler toolchain
    return with_rates(dict(row, note=f"failed: {type(e).__name__}: {str(e)[:200]}"), peak)
  peak_bytes = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
  return with_rates(
    dict(row, step_s=step_s, compile_s=first_s, peak_bytes=peak_bytes, note=alias), peak
  )


# ------------------------------------------------------------------------ results


def add_ratios(rows: list[dict]) -> None:
  """Our img/s per chip over torch's, on every vgg_jax row with a torch row alike."""
  for ours in (r for r in rows if r["framework"] == "vgg_jax"):
    for theirs in (r for r in rows if r["framework"] in RATIO_KEYS and r["img_s"]):
      if all(ours[k] == theirs[k] for k in ("config", "width", "batch", "resolution", "dtype")):
        ours[RATIO_KEYS[theirs["framework"]]] = ours["img_s_per_chip"] / theirs["img_s"]


def lowerings(rows: list[dict]) -> list[dict]:
  """Our img/s per chip under each convolution lowering, per config, width, batch and
  chips; where all three were timed, auto's over the better of xla and gemm."""
  groups = {}
  for r in rows:
    if r["framework"] == "vgg_jax" and r["img_s_per_chip"]:
      key = (r["config"], r["width"], r["batch"], r["chips"])
      groups.setdefault(key, {})[r["conv"]] = r["img_s_per_chip"]
  table = []
  for (config, width, batch, chips), img_s in groups.items():
    if len(img_s) > 1:
      timed_all = all(c in img_s for c in ("xla", "gemm", "auto"))
      ratio = img_s["auto"] / max(img_s["xla"], img_s["gemm"]) if timed_all else None
      table.append(
        dict(config=config, width=width, batch=batch, chips=chips, img_s=img_s, auto_vs_best=ratio)
      )
  return table


def lowerings_table(table: list[dict]) -> str:
  convs = [c for c in ("xla", "gemm", "auto") if any(c in t["img_s"] for t in table)]
  return markdown_table(
    ["config", "width", "batch", "chips", *convs, "auto / best of xla, gemm"],
    [
      [t["config"], f"{t['width']:g}", t["batch"], t["chips"]]
      + [fmt(t["img_s"].get(c), ".1f") for c in convs]
      + [fmt(t["auto_vs_best"], ".2f")]
      for t in table
    ],
  )


def scaling(rows: list[dict]) -> list[dict]:
  """Global img/s on N chips over that on the fewest chips measured, same config and
  batch: the data-parallel efficiency at a fixed global batch."""
  ours = [r for r in rows if r["framework"] == "vgg_jax"]
  table = []
  for row in ours:
    same = lambda r: all(r[k] == row[k] for k in ("config", "width", "conv", "batch"))  # noqa: E731
    base = min(filter(same, ours), key=lambda r: r["chips"])
    if base is not row:
      table.append(
        dict(
          config=row["config"],
          batch=row["batch"],
          chips=row["chips"],
          base_chips=base["chips"],
          img_s=row["img_s"],
          efficiency=row["img_s"] / base["img_s"],
        )
      )
  return table


def fmt(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def mib(value, spec: str = ".0f") -> str:
  return fmt(None if value is None else value / 2**20, spec)


def collectives(row: dict) -> str:
  if row["framework"] != "vgg_jax":
    return "n/a"
  return (
    ", ".join(
      f"{COLLECTIVE_SHORT[kind]} {mib(size, '.2f')}"
      for kind, size in sorted(row["collective_bytes"].items())
    )
    or "none"
  )


def markdown(result: dict) -> str:
  env = result["environment"]
  lines = [
    f"{env['date']}, {env['device']} ({env['platform']}, {env['device_count']} "
    f"devices, {env['cpus']} CPUs, load average {env['load_average']:.1f} at the "
    f"end), jax {env['jax']}, torch {env['torch']}",
    f"`{env['command']}`",
    "",
  ]
  header = [
    "framework",
    "config",
    "width",
    "conv",
    "chips",
    "batch",
    "res",
    "dtype",
    "step (ms)",
    "img/s/chip",
    "MFU",
    "GFLOP/img (XLA)",
    "XLA memory (MiB)",
    "peak memory (MiB)",
    "collectives (MiB)",
    "compile (s)",
    "ours / torch eager",
    "ours / torch.compile",
    "note",
  ]
  body = [
    [
      r["framework"],
      r["config"],
      f"{r['width']:g}",
      r["conv"] if r["framework"] == "vgg_jax" else "n/a",
      r["chips"],
      r["batch"],
      r["resolution"],
      r["dtype"],
      fmt(r["step_s"] and r["step_s"] * 1e3, ".1f"),
      fmt(r["img_s_per_chip"], ".1f"),
      fmt(r["mfu"], ".1%"),
      fmt(r["flops_per_image"] and r["flops_per_image"] / 1e9, ".3f"),
      mib(r["xla_bytes"]) if r["framework"] == "vgg_jax" else "n/a",
      mib(r["peak_bytes"]),
      collectives(r),
      fmt(r["compile_s"], ".1f"),
      fmt(r.get("vs_torch_eager"), ".2f"),
      fmt(r.get("vs_torch_compile"), ".2f"),
      r["note"],
    ]
    for r in result["rows"]
  ]
  lines.append(markdown_table(header, body))
  if result["scaling"]:
    lines += [
      "",
      "Data-parallel efficiency at a fixed global batch (global img/s on N "
      "chips / on the fewest; on simulated CPU devices a check of the "
      "communication pattern, not a speed claim):",
      "",
      markdown_table(
        ["config", "batch", "chips", "vs chips", "global img/s", "efficiency"],
        [
          [
            s["config"],
            s["batch"],
            s["chips"],
            s["base_chips"],
            f"{s['img_s']:.1f}",
            f"{s['efficiency']:.2f}",
          ]
          for s in result["scaling"]
        ],
      ),
    ]
  if result.get("lowerings"):
    lines += [
      "",
      "img/s/chip by convolution lowering, and auto's over the better of xla and gemm:",
      "",
      lowerings_table(result["lowerings"]),
    ]
  lines += [""] + [f"- {note}" for note in result["notes"]]
  return "\n".join(lines).rstrip() + "\n"


def environment() -> dict:
  device = jax.devices()[0]
  torch = sys.modules.get("torch")
  return dict(
    date=str(datetime.date.today()),
    device=device.device_kind,
    platform=device.platform,
    device_count=jax.device_count(),
    cpus=os.cpu_count(),
    load_average=os.getloadavg()[0],
    host=platform.machine(),
    jax=jax.__version__,
    torch=torch.__version__ if torch else "n/a",
    command=" ".join(sys.argv),
  )


# --------------------------------------------------------------------------- main


def benchmark(
  args: argparse.Namespace, progress: Callable[[dict], None] = lambda result: None
) -> dict:
  """Every row the flags ask for, ratios and scaling added: what --out writes as JSON.
  `progress` gets the result so far after each config, in the order of --configs."""
  device_kind = jax.devices()[0].device_kind
  peak = args.peak_flops or peak_flops(device_kind)
  frameworks, skipped = torch_baselines(args.baseline, not args.no_torch_compile)
  timing = dict(warmup=args.warmup, steps=args.steps, windows=args.windows, peak=peak)
  size = dict(resolution=args.resolution, dtype=args.dtype)
  notes = [skipped] if skipped else []
  if peak is None:
    notes.append(f"MFU n/a: no peak FLOP/s known for {device_kind!r} (give --peak_flops)")
  rows = []

  def result():
    return dict(
      environment=environment(),
      rows=rows,
      scaling=scaling(rows),
      lowerings=lowerings(rows),
      notes=notes,
    )

  for name in args.configs:
    for width in args.width:
      for batch in args.batch:
        ours = [
          bench_vgg_jax(
            bench_config(
              name,
              batch=batch,
              chips=chips,
              sharding=args.sharding,
              model_axis=args.model_axis,
              width=width,
              conv=conv,
              **size,
            ),
            **timing,
          )
          for conv in args.conv
          for chips in args.devices
        ]
        rows += ours
        progress(result())  # before torch, which could take the process down
        theirs = [
          bench_torch(
            bench_config(name, batch=batch, width=width, **size),
            framework,
            flops_per_image=ours[0]["flops_per_image"],
            model_flops_per_image=ours[0]["model_flops_per_image"],
            **timing,
          )
          for framework in frameworks
        ]
        for row in ours + theirs:
          print(
            f"{row['framework']} {name} width {width:g} batch {batch} chips {row['chips']}"
            f"{' conv ' + row['conv'] if row in ours else ''}: "
            f"{fmt(row['img_s_per_chip'], '.1f')} img/s/chip {row['note']}",
            file=sys.stderr,
            flush=True,
          )
        rows += theirs
        add_ratios(rows)
        progress(result())
  return result()


def comma_list(cast):
  return lambda text: [cast(item) for item in text.split(",") if item]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python benchmarks/throughput.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--configs",
    type=comma_list(str),
    default="A,B,C,D,E",
    help="Table 1 configs (or aliases), comma-separated",
  )
  parser.add_argument(
    "--batch", type=comma_list(int), default="128", help="global batch sizes, comma-separated"
  )
  parser.add_argument("--resolution", type=int, default=224, help="training crop side")
  parser.add_argument(
    "--dtype",
    choices=("bfloat16", "float32"),
    default="bfloat16",
    help="compute dtype (parameters stay float32)",
  )
  parser.add_argument(
    "--width",
    type=comma_list(float),
    default="1",
    help="width multipliers, comma-separated; torchvision's nets are 1.0 only",
  )
  parser.add_argument(
    "--conv",
    type=comma_list(str),
    default="auto",
    help="convolution lowerings (VGGConfig.conv: auto, xla, gemm), comma-separated",
  )
  parser.add_argument(
    "--devices",
    type=comma_list(int),
    default="1",
    help="mesh sizes to run each config on, comma-separated (the first "
    "N devices; simulate CPU devices with XLA_FLAGS="
    "--xla_force_host_platform_device_count=N)",
  )
  parser.add_argument(
    "--sharding",
    choices=tuple(sharding_lib.PRESETS),
    default="replicated",
    help="a preset of vgg_jax.sharding",
  )
  parser.add_argument(
    "--model_axis",
    type=int,
    default=1,
    help="devices on the mesh's model axis (for --sharding tensor)",
  )
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
  parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=3, help="timed windows (median)")
  parser.add_argument(
    "--peak_flops",
    type=float,
    default=None,
    help="peak FLOP/s per chip for MFU (default: by device kind)",
  )
  parser.add_argument(
    "--baseline",
    choices=("none", "torch"),
    default="none",
    help="also time torchvision's network in this process",
  )
  parser.add_argument(
    "--no_torch_compile",
    action="store_true",
    help="time torch eagerly only (torch.compile can take minutes)",
  )
  parser.add_argument("--out", default="", help="write throughput.json and .md here")
  return parser.parse_args(argv)


def write(result: dict, out: str) -> None:
  """throughput.json and throughput.md in `out`."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "throughput.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(out, "throughput.md"), "w") as f:
    f.write(markdown(result))


def main(argv=None) -> dict:
  """Writes --out after each config, so a run stopped early keeps the rows it has."""
  args = parse_args(argv)
  result = benchmark(
    args, (lambda partial: write(partial, args.out)) if args.out else (lambda partial: None)
  )
  print(markdown(result))
  assert sys.modules.get("tensorflow") is None, "the benchmark imported TensorFlow"
  return result


if __name__ == "__main__":
  main()
