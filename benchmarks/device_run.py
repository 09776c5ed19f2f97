"""One accelerator window: the speed table, a profile, the levers and the ablation.

  python benchmarks/device_run.py --out DIR --fashion_mnist_dir .data/fashion-mnist
  python benchmarks/device_run.py --out DIR --smoke          # every part, toy size, CPU

Each part runs in its own process with its own time limit, in this order, and writes
into DIR as soon as it finishes, so a crash, a hang or the window's end loses only the
parts not yet run:

  env         device, driver, library versions, XLA flags, jax config, CPU  -> env.json
  throughput  benchmarks/throughput.py: D, A, B, C, E at 224, batch 128, bf16, beside
              torchvision eager and torch.compile in the same process, with the ratios
              (rows written after each config)             -> throughput.md, .json
  profile     a jax.profiler trace of D's train step (5 steps after warm-up), summed per
              kind of op and per layer (benchmarks/profile_summary.py); then the
              ablation's first run trained by `launch.py train` for 172 steps, 20 of them
              traced by its profiler switch (config.profile_steps): whether the small
              nets' loop leaves the device waiting on the host -> profile.md; the traces,
              the steps' optimised HLO and the summaries as JSON -> profile.tar.gz
  levers      D's step with each lever of the tuned step on and off (VGGConfig's conv,
              pool and relu_grad; XLA's conv fusion as a compiler option, GPU only), img/s
              and the ratio to today's step, in one process; then conv=gemm against
              today's on the gpu design's net (D, half width, 32 px, batch 512, bf16),
              where small maps with many channels may suit cuBLAS better than cuDNN
                                                                -> levers.md
  ablation    `launch.py sweep --config SPEC` then `launch.py report`, with the
              Fashion-MNIST directory passed to every run (SPEC's manual_dir=); the
              report, each run's metrics and evaluations        -> ablation.tar.gz

and log.txt: per part its status, wall time and time limit, and the tail of its output.
A part's limit is its share (--share) plus whatever the parts before it left unused,
less the shares of the parts after it, all within --budget_s; a part out of time is
killed (its whole process group) and the next starts. Work files (traces, the sweep's
checkpoints, the compilation cache the parts share) live in a scratch directory, not in
DIR, so DIR holds eight files at most. TensorFlow is never imported.
"""

import argparse
import dataclasses
import datetime
import functools
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as `python benchmarks/device_run.py`
  sys.path.insert(0, ROOT)

# Seconds each part gets on the accelerator, and in --smoke on a CPU.
SHARES = {"env": 20, "throughput": 190, "profile": 100, "levers": 60, "ablation": 170}
SMOKE_SHARES = {"env": 10, "throughput": 40, "profile": 45, "levers": 30, "ablation": 55}
ABLATION = "experiments/fashion_mnist.py:gpu"
SMOKE_ABLATION = "experiments/fashion_mnist.py:smoke"
# (name, model overrides, XLA compiler options), most telling first. "today" is the
# defaults: pool=reshape since the H200 run of 2026-11-28 (1.20x for D; docs/gpu.md).
LEVERS = (
  ("today", {}, {}),
  ("conv=gemm", {"conv": "gemm"}, {}),
  ("conv fusion", {}, {"xla_gpu_experimental_enable_conv_fusion": True}),
  ("pool=reduce_window", {"pool": "reduce_window"}, {}),
  ("relu_grad=output", {"relu_grad": "output"}, {}),
  (
    "relu_grad=output + conv fusion",
    {"relu_grad": "output"},
    {"xla_gpu_experimental_enable_conv_fusion": True},
  ),
)
# The ablation's loop in the profile part: (steps before the trace, steps traced).
LOOP_STEPS = {"full": (150, 20), "smoke": (3, 4)}
LOG_TAIL = 60  # lines of a part's output copied into log.txt
MAX_FILE_BYTES = 15 * 2**20


@dataclasses.dataclass(frozen=True)
class Size:
  """What the GPU parts measure, and the toy size of --smoke."""

  configs: str = "D,A,B,C,E"
  width: float = 1.0
  resolution: int = 224
  batch: int = 128
  dtype: str = "bfloat16"
  torch_compile: bool = True


FULL = Size()
SMOKE = Size(
  configs="D,A", width=1 / 16, resolution=32, batch=8, dtype="float32", torch_compile=False
)
# The gpu design's net (experiments/fashion_mnist.py), for the conv lowering's second table.
DESIGN_NET = Size(configs="D", width=0.5, resolution=32, batch=512, dtype="bfloat16")
DESIGN_LEVERS = LEVERS[:2]


# ------------------------------------------------------------------------ the parts


def part_env(args, size: Size) -> str:
  """Device, driver, versions, flags: written first, as it takes seconds."""
  import importlib.metadata

  import jax

  packages = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "flax",
    "optax",
    "orbax-checkpoint",
    "ml-collections",
    "tensorboardX",
    "numpy",
    "torch",
    "torchvision",
    "triton",
    "matplotlib",
    "nvidia-cudnn-cu13",
    "nvidia-cudnn-cu12",
  )
  versions = {}
  for name in packages:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  device = jax.devices()[0]
  env = dict(
    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    device_kind=device.device_kind,
    platform=device.platform,
    device_count=jax.device_count(),
    versions=versions,
    python=sys.version,
    cpu=cpu_model(),
    cpu_count=os.cpu_count(),
    avx512="avx512f" in cpu_flags(),
    memory_gib=memory_gib(),
    machine=platform.platform(),
    environment={
      k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "CUDA", "NVIDIA", "TF_"))
    },
    jax_config={k: repr(v) for k, v in sorted(getattr(jax.config, "values", {}).items())},
    nvidia_smi=command_output(
      [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
        "--format=csv",
      ]
    ),
    jax_environment=jax.print_environment_info(return_string=True),
    size=dataclasses.asdict(size),
  )
  write_json(os.path.join(args.out, "env.json"), env)
  return f"{env['device_kind']} x{env['device_count']}, jax {versions.get('jax')}"


def part_throughput(args, size: Size) -> str:
  """benchmarks/throughput.py, D first; its files are rewritten after each config."""
  from benchmarks import throughput

  argv = [
    "--configs",
    size.configs,
    "--width",
    str(size.width),
    "--batch",
    str(size.batch),
    "--resolution",
    str(size.resolution),
    "--dtype",
    size.dtype,
    "--baseline",
    "torch",
    "--out",
    args.out,
  ]
  argv += (
    ["--warmup", "3", "--steps", "10", "--windows", "3"]
    if not args.smoke
    else ["--warmup", "1", "--steps", "2", "--windows", "1"]
  )
  if not size.torch_compile:
    argv.append("--no_torch_compile")
  result = throughput.main(argv)
  if not size.torch_compile:
    result["notes"].append("--smoke: torch.compile not run (minutes on a CPU)")
    throughput.write(result, args.out)
  return f"{len(result['rows'])} rows"


def part_profile(args, size: Size) -> str:
  """A trace of D's step and its per-op summary; the trace, HLO and JSON as a tarball."""
  import jax

  from benchmarks import profile_summary

  trace_dir = os.path.join(args.scratch, "profile")
  shutil.rmtree(trace_dir, ignore_errors=True)
  os.makedirs(trace_dir)
  step, state, batch = compiled_step(size, "D", {}, {})
  with open(os.path.join(trace_dir, "step_hlo.txt"), "w") as f:
    f.write(step.as_text())
  for _ in range(3):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  steps = 5 if not args.smoke else 3
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      state, _ = step(state, batch)
    jax.block_until_ready(state)
  header = (
    f"D at {size.resolution}, batch {size.batch}, {size.dtype}, width "
    f"{size.width:g}, on {jax.devices()[0].device_kind}; "
    f"`python benchmarks/profile_summary.py profile --steps {steps}` in profile.tar.gz's "
    f"directory gives this again.\n\n"
  )
  try:  # the trace and HLO come back even if they cannot be summarised here
    summary = profile_summary.summarise(trace_dir, profile_summary.load_hlo(trace_dir), steps=steps)
    write_json(os.path.join(trace_dir, "summary.json"), summary)
    text, outcome = (
      profile_summary.markdown(summary),
      (
        f"busy {summary['busy_ms']:.2f} ms/step, convolutions "
        f"{sum(v for k, v in summary['kinds_ms'].items() if k.startswith('conv')):.2f}"
      ),
    )
  except Exception as e:
    text = outcome = f"summary failed: {type(e).__name__}: {e}\n"
  with open(os.path.join(args.out, "profile.md"), "w") as f:
    f.write(header + text)
  tarball = os.path.join(args.out, "profile.tar.gz")
  pack_profile({"profile": trace_dir}, tarball)  # D's now, the loop's too below
  loop_dir = os.path.join(args.scratch, "loop")
  loop_text, loop_outcome = profile_loop(args, loop_dir)
  with open(os.path.join(args.out, "profile.md"), "a") as f:
    f.write("\n" + loop_text)
  pack_profile({"profile": trace_dir, "loop": loop_dir}, tarball)
  return f"{outcome}; {loop_outcome}"


def profile_loop(args, root: str) -> tuple[str, str]:
  """The ablation's first run trained by `launch.py train` in ROOT for a few steps, some
  traced with its own profiler switch (config.profile_steps): whether the device waits
  on the host between the small nets' steps, the one question D's step cannot answer."""
  from benchmarks import profile_summary
  from vgg_jax import sweep
  from vgg_jax.util import markdown_table

  warmup, traced = LOOP_STEPS["smoke" if args.smoke else "full"]
  config_file, runs = sweep.load_sweep(ablation_spec(args))
  run = runs[0]
  command = sweep.train_command(run, config_file, root) + [
    f"--config.optim.max_steps={warmup + traced + 2}",  # no validation in the trace
    f"--config.profile_steps=({warmup + 1}, {warmup + traced})",
  ]
  status = run_group(
    command, max(5.0, args.deadline - time.time() - 10), os.path.join(args.scratch, "loop.log")
  )
  title = (
    f"## The ablation's training loop\n\n{os.path.relpath(config_file, ROOT)}'s first run "
    f"({run.name}: {run.arg}), steps {warmup + 1}-{warmup + traced} traced through "
    f"`config.profile_steps` in `launch.py train` ({status}). `step` is the train "
    f"step's own ops; `all` every op on the device, the input's gather and augmentation "
    f"too; what `all` leaves idle of the span is time the device waited on the host. "
    f"`python benchmarks/profile_summary.py loop/{run.name}/profile --steps {traced}` in "
    f"profile.tar.gz's directory gives the step's table again.\n\n"
  )
  workdir = os.path.join(root, run.name)
  try:
    trace = os.path.join(workdir, "profile")
    hlo_text = profile_summary.load_hlo(trace)  # the profiler's step_hlo.txt
    step = profile_summary.summarise(trace, hlo_text, steps=traced)
    every = profile_summary.summarise(trace, hlo_text, module="", steps=traced)
  except Exception as e:
    return title + f"summary failed: {type(e).__name__}: {e}\n", f"loop: {status}, no summary"
  write_json(os.path.join(workdir, "summary.json"), dict(step=step, all=every))
  rows = [
    [name, f"{s['span_ms']:.3f}", f"{s['busy_ms']:.3f}", f"{s['idle_ms']:.3f}"]
    for name, s in (("step", step), ("all", every))
  ]
  table = markdown_table(["ops", "span (ms/step)", "busy (ms/step)", "idle (ms/step)"], rows)
  outcome = f"loop: device busy {every['busy_ms']:.2f} of {every['span_ms']:.2f} ms/step"
  return title + table + "\n\n" + profile_summary.markdown(step), outcome


def pack_profile(dirs: dict[str, str], tarball: str) -> None:
  """{name in the tarball: directory}, checkpoints left out; the raw traces left out too
  if that is over what comes back from the machine (said in profile.md)."""

  def add(raw: bool):
    with tarfile.open(tarball, "w:gz") as tar:
      for name, directory in dirs.items():
        if os.path.isdir(directory):
          tar.add(directory, arcname=name, filter=functools.partial(keep, raw=raw))

  def keep(info: tarfile.TarInfo, raw: bool) -> tarfile.TarInfo | None:
    if "/checkpoints" in info.name or (
      not raw and info.name.endswith((".xplane.pb", ".trace.json.gz"))
    ):
      return None
    return info

  add(raw=True)
  if os.path.getsize(tarball) > MAX_FILE_BYTES:  # what comes back is at most 16 MiB a file
    add(raw=False)
    with open(os.path.join(os.path.dirname(tarball), "profile.md"), "a") as f:
      f.write("\nThe raw traces were left out of profile.tar.gz: over 15 MiB.\n")


def part_levers(args, size: Size) -> str:
  """D's step with each lever, in one process: img/s and the ratio to today's."""
  import jax

  gpu = jax.devices()[0].platform == "gpu"
  design = size if args.smoke else DESIGN_NET  # CPU: the plumbing, at the toy size
  tables = [(size, []), (design, [])]
  for (net, rows), levers in zip(tables, (LEVERS[:3] if args.smoke else LEVERS, DESIGN_LEVERS)):
    for name, model, options in levers:
      if options and not gpu:
        rows.append(dict(setting=name, note="skipped: XLA GPU option, not a GPU"))
      else:
        rows.append(dict(setting=name, **time_step(net, model, options, args.smoke)))
      write_levers(args.out, tables)
  return "; ".join(
    ", ".join(f"{r['setting']}: {r.get('ratio') or 'n/a'}" for r in rows) for _, rows in tables
  )


def part_ablation(args, size: Size) -> str:
  """The sweep, then its report, within the part's deadline; packed without checkpoints."""
  del size
  root = os.path.join(args.scratch, "ablation")
  spec = ablation_spec(args)
  report_reserve = 25 if not args.smoke else 20
  sweep_s = max(5.0, args.deadline - time.time() - report_reserve)
  launch = [sys.executable, os.path.join(ROOT, "launch.py")]
  # The sweep starts no run in its last `last_run` seconds, so the run in flight ends
  # (and is evaluated) before the part's limit, which then only stops a hung sweep.
  last_run = 15 if args.smoke else 50
  sweep = run_group(
    launch
    + [
      "sweep",
      f"--config={spec}",
      f"--workdir={root}",
      f"--time_budget_s={max(1.0, sweep_s - last_run):.0f}",
      *args.sweep_flag,
    ],
    sweep_s,
    os.path.join(args.scratch, "ablation_sweep.log"),
  )
  report = run_group(
    launch + ["report", root],
    max(5.0, args.deadline - time.time() - 5),
    os.path.join(args.scratch, "ablation_report.log"),
  )
  pack_ablation(
    root,
    [os.path.join(args.scratch, f"ablation_{n}.log") for n in ("sweep", "report")],
    os.path.join(args.out, "ablation.tar.gz"),
  )
  return f"{spec}: sweep {sweep}, report {report}"


PARTS = {
  "env": part_env,
  "throughput": part_throughput,
  "profile": part_profile,
  "levers": part_levers,
  "ablation": part_ablation,
}


# ---------------------------------------------------------------------- part helpers


def compiled_step(size: Size, name: str, model: dict, options: dict):
  """The trainer's step for `name` at `size`, compiled with XLA `options`, its state
  and a random batch on the device (as throughput.py times it)."""
  from benchmarks import throughput
  from vgg_jax import sharding, train

  config = throughput.bench_config(
    name, batch=size.batch, resolution=size.resolution, dtype=size.dtype, width=size.width
  )
  config.model.update(model)
  program = train.build_program(
    config, sharding.make_mesh(config.mesh), throughput.NUM_CLASSES, throughput.CHANNELS
  )
  state = program.init()
  batch = throughput.random_batch(program.batch_sharding, size.batch, size.resolution)
  return program.step.lower(state, batch).compile(options or None), state, batch


def time_step(size: Size, model: dict, options: dict, smoke: bool) -> dict:
  """img/s of one setting of D at `size`; a compile or run failure is a note, not an error."""
  import jax

  from benchmarks import throughput

  try:
    start = time.perf_counter()
    step, state, batch = compiled_step(size, "D", model, options)
    compile_s = time.perf_counter() - start

    def run(n):
      nonlocal state
      for _ in range(n):
        state, _ = step(state, batch)
      jax.block_until_ready(state)

    timing = dict(warmup=1, steps=2, windows=1) if smoke else dict(warmup=3, steps=10, windows=3)
    step_s = throughput.seconds_per_step(run, **timing)
  except Exception as e:  # an XLA option this jaxlib lacks, say
    return dict(note=f"failed: {type(e).__name__}: {str(e)[:300]}")
  return dict(step_ms=step_s * 1e3, img_s=size.batch / step_s, compile_s=compile_s, note="")


def write_levers(out: str, tables: list[tuple[Size, list[dict]]]) -> None:
  """levers.md: a table per net, each setting's img/s over the table's first (today's)."""
  sections = []
  for size, rows in tables:
    if rows:
      sections.append(
        f"D's train step at {size.resolution}, batch {size.batch}, {size.dtype}, width "
        f"{size.width:g}, one process.\n\n{levers_table(rows)}\n\n"
        f"```json\n{json.dumps(rows, indent=1)}\n```\n"
      )
  with open(os.path.join(out, "levers.md"), "w") as f:
    f.write(
      "Levers: VGGConfig's conv (gemm: each convolution as one matmul), pool and "
      "relu_grad; conv fusion: XLA's xla_gpu_experimental_enable_conv_fusion.\n\n"
      + "\n".join(sections)
    )


def levers_table(rows: list[dict]) -> str:
  from vgg_jax.util import markdown_table

  base = rows[0].get("img_s")
  for row in rows:
    row["ratio"] = round(row["img_s"] / base, 3) if base and row.get("img_s") else None
  return markdown_table(
    ["setting", "step (ms)", "img/s", "vs today", "compile (s)", "note"],
    [
      [
        r["setting"],
        fmt(r.get("step_ms"), ".2f"),
        fmt(r.get("img_s"), ".1f"),
        fmt(r["ratio"], ".3f"),
        fmt(r.get("compile_s"), ".1f"),
        r.get("note", ""),
      ]
      for r in rows
    ],
  )


def ablation_spec(args) -> str:
  """The sweep SPEC, the Fashion-MNIST directory handed to every run."""
  spec = args.ablation or (SMOKE_ABLATION if args.smoke else ABLATION)
  return with_arg(spec, f"manual_dir={args.fashion_mnist_dir}") if args.fashion_mnist_dir else spec


def with_arg(spec: str, item: str) -> str:
  """ "FILE.py:a=1" + "b=2" -> "FILE.py:a=1,b=2"."""
  file, _, arg = spec.partition(":")
  return f"{file}:{','.join(filter(None, (arg, item)))}"


def run_group(command: list[str], timeout_s: float, log_path: str, env: dict | None = None) -> str:
  """Runs `command` in its own process group, output to `log_path`; kills the group
  when out of time. Returns "ok", "exit N" or "killed after N s"."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(
      command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=env
    )
    try:
      code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      kill_group(process)
      return f"killed after {timeout_s:.0f} s"
  return "ok" if code == 0 else f"exit {code}"


def kill_group(process: subprocess.Popen) -> None:
  """SIGTERM to the process group it leads (a sweep saves and stops), then SIGKILL."""
  for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
    try:
      os.killpg(process.pid, sig)
      process.wait(timeout=wait)
      return
    except ProcessLookupError:
      return
    except subprocess.TimeoutExpired:
      continue


def pack_ablation(root: str, logs: list[str], path: str) -> None:
  """The report and each run's config, metrics, evaluations and markers; no
  checkpoints, caches or TensorBoard files."""
  keep = ["report/**/*", "*/config.json", "*/metrics.jsonl", "*/eval/*.json", "*/sweep_*"]
  with tarfile.open(path, "w:gz") as tar:
    for pattern in keep:
      for file in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
        if os.path.isfile(file):
          tar.add(file, arcname=os.path.join("ablation", os.path.relpath(file, root)))
    for log in logs:
      if os.path.exists(log):
        tar.add(log, arcname=os.path.join("ablation", os.path.basename(log)))


def cpu_model() -> str:
  for line in read_text("/proc/cpuinfo").splitlines():
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor()


def cpu_flags() -> list[str]:
  for line in read_text("/proc/cpuinfo").splitlines():
    if line.startswith("flags"):
      return line.split(":", 1)[1].split()
  return []


def memory_gib() -> float | None:
  for line in read_text("/proc/meminfo").splitlines():
    if line.startswith("MemTotal"):
      return round(int(line.split()[1]) / 2**20, 1)
  return None


def read_text(path: str) -> str:
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return ""


def command_output(command: list[str]) -> str:
  try:
    return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"n/a ({type(e).__name__})"


def fmt(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2, default=str)


# ------------------------------------------------------------------- the conductor


def run_part(args) -> None:
  """In the part's own process: run it, then say so on the last line of its output."""
  size = SMOKE if args.smoke else FULL
  start = time.time()
  summary = PARTS[args.part](args, size)
  assert sys.modules.get("tensorflow") is None, f"part {args.part} imported TensorFlow"
  print(f"PART {args.part} done in {time.time() - start:.1f} s: {summary}", flush=True)


def part_limits(parts: list[str], shares: dict[str, float], budget_left: float, name: str) -> float:
  """`name`'s time limit: what is left of the budget less the later parts' shares."""
  later = parts[parts.index(name) + 1 :]
  return budget_left - sum(shares[p] for p in later)


def conduct(args) -> list[dict]:
  """Runs each part in order in a child process; log.txt after each."""
  shares = dict(SMOKE_SHARES if args.smoke else SHARES, **args.share)
  parts = args.parts
  end = time.time() + args.budget_s
  os.makedirs(args.out, exist_ok=True)
  scratch = args.scratch or tempfile.mkdtemp(prefix="device_run_")
  os.makedirs(scratch, exist_ok=True)
  env = dict(
    os.environ,
    XLA_PYTHON_CLIENT_PREALLOCATE="false",  # torch shares the GPU
    JAX_COMPILATION_CACHE_DIR=os.path.join(scratch, "jax_cache"),
    PYTHONUNBUFFERED="1",
  )
  results = []
  for name in parts:
    limit = part_limits(parts, shares, end - time.time(), name)
    if limit < 5:
      results.append(
        dict(
          part=name,
          status="not run: no time left",
          wall_s=0.0,
          limit_s=round(limit, 1),
          summary="",
          tail="",
        )
      )
      write_log(args, results, scratch)
      continue
    deadline = time.time() + limit
    command = [
      sys.executable,
      os.path.abspath(__file__),
      "--part",
      name,
      "--out",
      args.out,
      "--scratch",
      scratch,
      "--deadline",
      str(deadline),
    ]
    command += ["--smoke"] if args.smoke else []
    command += ["--fashion_mnist_dir", args.fashion_mnist_dir] if args.fashion_mnist_dir else []
    command += ["--ablation", args.ablation] if args.ablation else []
    command += [f"--sweep_flag={flag}" for flag in args.sweep_flag]
    log_path = os.path.join(scratch, f"{name}.log")
    print(f"[device_run] {name}: limit {limit:.0f} s", flush=True)
    start = time.time()
    status = run_group(command, limit, log_path, env)
    output = read_text(log_path)
    done = [line for line in output.splitlines() if line.startswith(f"PART {name} done")]
    results.append(
      dict(
        part=name,
        status=status,
        wall_s=round(time.time() - start, 1),
        limit_s=round(limit, 1),
        summary=done[-1] if done else "",
        tail="\n".join(output.splitlines()[-LOG_TAIL:]),
      )
    )
    print(
      f"[device_run] {name}: {status} in {results[-1]['wall_s']} s {results[-1]['summary']}",
      flush=True,
    )
    write_log(args, results, scratch)
  if not args.scratch and not args.keep_scratch:
    shutil.rmtree(scratch, ignore_errors=True)
  return results


def write_log(args, results: list[dict], scratch: str) -> None:
  """log.txt: one line per part (status, wall time, limit), then each part's tail."""
  lines = [
    f"benchmarks/device_run.py {' '.join(sys.argv[1:])}",
    f"scratch: {scratch}; budget {args.budget_s:.0f} s",
    "",
  ]
  lines += [
    f"{r['part']:<10} {r['status']:<22} {r['wall_s']:>7.1f} s of {r['limit_s']:>6.1f}"
    f"  {r['summary']}"
    for r in results
  ]
  for r in results:
    lines += ["", f"==== {r['part']}: last {LOG_TAIL} lines of output ====", r["tail"]]
  with open(os.path.join(args.out, "log.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")


def share_flag(text: str) -> dict:
  name, _, seconds = text.partition("=")
  if name not in PARTS:
    raise argparse.ArgumentTypeError(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
  return {name: float(seconds)}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python benchmarks/device_run.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--out", required=True, help="where the parts' files go")
  parser.add_argument(
    "--smoke", action="store_true", help="every part at toy size (CPU, about 3 minutes)"
  )
  parser.add_argument(
    "--fashion_mnist_dir",
    default="",
    help="Fashion-MNIST's IDX files, handed to every ablation run (its SPEC's manual_dir=)",
  )
  parser.add_argument(
    "--ablation",
    default="",
    help=f"the sweep SPEC, its file relative to the repository (default "
    f"{ABLATION}; --smoke: {SMOKE_ABLATION})",
  )
  parser.add_argument(
    "--sweep_flag",
    action="append",
    default=[],
    metavar="FLAG",
    help="a flag for `launch.py sweep`, e.g. --sweep_flag=--time_budget_s=100 (repeat for more)",
  )
  parser.add_argument(
    "--budget_s",
    type=float,
    default=None,
    help="all parts together (default: the sum of the shares, 540 s; --smoke 180 s)",
  )
  parser.add_argument(
    "--share",
    type=share_flag,
    action="append",
    default=[],
    metavar="PART=SECONDS",
    help="a part's share of the budget",
  )
  parser.add_argument(
    "--parts", default=",".join(PARTS), help="which parts, comma-separated, in the order given"
  )
  parser.add_argument(
    "--scratch",
    default="",
    help="work directory (default: a new temporary one, removed at the end)",
  )
  parser.add_argument("--keep_scratch", action="store_true")
  parser.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
  parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.out = os.path.abspath(args.out)  # the parts run in the repository's root
  args.scratch = args.scratch and os.path.abspath(args.scratch)
  args.fashion_mnist_dir = args.fashion_mnist_dir and os.path.abspath(args.fashion_mnist_dir)
  args.share = {k: v for d in args.share for k, v in d.items()}
  args.parts = [p for p in args.parts.split(",") if p]
  unknown = set(args.parts) - set(PARTS)
  if unknown:
    parser.error(f"unknown parts {sorted(unknown)}; parts: {', '.join(PARTS)}")
  if args.budget_s is None:
    args.budget_s = sum(
      dict(SMOKE_SHARES if args.smoke else SHARES, **args.share)[p] for p in args.parts
    )
  return args


def main(argv=None) -> list[dict] | None:
  """The parts' outcomes (the exit status is 1 unless all are ok); None in a part's
  own process."""
  args = parse_args(argv)
  if args.part:
    return run_part(args)
  start = time.time()
  results = conduct(args)
  print(f"\n[device_run] {time.time() - start:.0f} s in all; files in {args.out}:")
  for r in results:
    print(f"  {r['part']:<10} {r['status']:<22} {r['wall_s']:>6.1f} s  {r['summary']}")
  print("  " + ", ".join(sorted(os.listdir(args.out))))
  return results


if __name__ == "__main__":
  outcome = main()
  sys.exit(0 if outcome is None or all(r["status"] == "ok" for r in outcome) else 1)
