"""Where a train step's time goes, from a jax.profiler trace: a table readable anywhere.

  python benchmarks/profile_summary.py TRACE_DIR [--hlo step_hlo.txt] [--module train_step]

TRACE_DIR holds a `*.xplane.pb` (jax.profiler.trace's output, found at any depth; the
newest is read); the optimised HLO of the step (`compiled.as_text()`, plain or .gz; by
default TRACE_DIR/step_hlo.txt[.gz]) names what each traced op is. Each op event of the
step's module (on a GPU: the kernels on the device's streams; on a CPU: the thunks on
the host's threads) is put in a kind:

  conv fwd / conv dgrad / conv wgrad   a convolution, its data gradient, its weight
      gradient: cuDNN's custom-call targets say which on a GPU; elsewhere the name scope
      (`transpose(` is the backward pass) and the output's shape (a weight gradient's
      shares at most two sizes with its layer's forward output) do;
  matmul          the FC layers (dot, cuBLAS);
  pooling, activation, dropout, normalisation   by the layer's name scope (the model
      names its ops `pool3`, `relu3_1`, ...) or the op (reduce-window, select-and-scatter);
  copies          copy, transpose and memory-copy ops (layout changes);
  bias grad       a conv or FC layer's bias gradient, a reduction of its output's
      gradient over batch and space (XLA fuses the ReLU's gradient into it);
  loss            the rest of the forward and backward pass;
  optimiser       everything outside them: weight decay, momentum, the update, metrics;
  other           what the HLO does not name.

and per layer (conv1_1 ... fc8) by direction. Time is summed over streams or threads
(on a CPU several threads run at once, so kinds can sum to more than the wall time);
`idle` is the time in the traced steps' span when no op of the step ran, `between
steps` the gaps from one step's last op to the next one's first.
"""

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys

# A layer's name scope in an op's name stack: ".../conv3_1/...", "jvp(conv3_1)".
LAYER = re.compile(
  r"(?:^|[/(])((?:conv|bn)\d+_\d+|fc\d+|pool\d+|relu\d+(?:_\d+)?|drop\d+|"
  r"lrn\d+)(?:[/)]|$)"
)
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$")
SHAPE_DIMS = re.compile(r"\[([\d,]*)\]")
CUDNN_CONV = (
  ("BackwardFilter", "conv wgrad"),
  ("BackwardInput", "conv dgrad"),
  ("Forward", "conv fwd"),
)
COPY_OPS = {
  "copy",
  "copy-start",
  "copy-done",
  "transpose",
  "bitcast",
  "reshape",
  "dynamic-update-slice",
  "slice",
  "concatenate",
  "pad",
  "parameter",
  "tuple",
  "get-tuple-element",
  "constant",
  "broadcast",
}
SCOPE_KINDS = (
  ("pool", "pooling"),
  ("relu", "activation"),
  ("drop", "dropout"),
  ("lrn", "normalisation"),
  ("bn", "normalisation"),
)
# Lines a trace viewer derives from the streams' events: counting them again would double.
DERIVED_LINES = {
  "XLA Modules",
  "XLA Ops",
  "XLA TraceMe",
  "Steps",
  "Framework Name Scope",
  "Framework Ops",
  "Source code",
  "Launch Stats",
  "TensorFlow Ops",
  "TensorFlow Name Scope",
}
# Kernel names of cuDNN / cuBLAS / CUDA where a trace event carries no HLO op.
KERNEL_KINDS = (
  (r"wgrad", "conv wgrad"),
  (r"dgrad", "conv dgrad"),
  (r"fprop|conv", "conv fwd"),
  (r"gemm|cublas|cutlass", "matmul"),
  (r"memcpy|memset", "copies"),
)
KINDS = (
  "conv fwd",
  "conv dgrad",
  "conv wgrad",
  "matmul",
  "pooling",
  "activation",
  "dropout",
  "normalisation",
  "copies",
  "bias grad",
  "loss",
  "optimiser",
  "other",
)


@dataclasses.dataclass
class HloOp:
  name: str
  opcode: str
  shape: str
  target: str = ""  # a custom call's target
  op_name: str = ""  # the JAX name stack it came from
  calls: str = ""  # the computation a fusion calls
  reversed_kernel: bool = False  # a convolution with the kernel flipped: a data gradient


# ------------------------------------------------------------------------------ HLO


def parse_hlo(text: str) -> tuple[dict[str, HloOp], dict[str, list[HloOp]]]:
  """Every instruction of an HLO module by name, and each computation's instructions."""
  ops, computations, current = {}, collections.defaultdict(list), ""
  for line in text.splitlines():
    match = INSTRUCTION.match(line)
    if match is None:
      header = COMPUTATION.match(line)
      if header and "=" not in line.split("(")[0]:
        current = header.group(1)
      continue
    name, shape, opcode, rest = match.groups()
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    op = HloOp(
      name,
      opcode,
      shape,
      target.group(1) if target else "",
      op_name.group(1) if op_name else "",
      calls.group(1) if calls else "",
      "rhs_reversal" in rest,
    )
    ops[name] = op
    computations[current].append(op)
  return ops, computations


def inner_ops(op: HloOp, computations: dict[str, list[HloOp]]) -> list[HloOp]:
  """The op itself, or for a fusion the ops it fuses (nested fusions too)."""
  if not op.calls:
    return [op]
  inner = []
  for child in computations.get(op.calls, []):
    inner += inner_ops(child, computations) if child.calls else [child]
  return inner


def dims(shape: str) -> list[int]:
  found = SHAPE_DIMS.search(shape)
  return [int(d) for d in found.group(1).split(",") if d] if found else []


def is_conv(op: HloOp) -> bool:
  return op.opcode == "convolution" or "conv" in op.target.lower()


def classify(
  op: HloOp, computations: dict[str, list[HloOp]], forward_dims: dict[str, list[int]]
) -> tuple[str, str]:
  """(kind, layer) of an op the trace names; layer "" where no layer scope names it."""
  inner = inner_ops(op, computations)
  convs = [o for o in inner if is_conv(o)]
  named = convs or [o for o in inner if o.op_name] or [op]
  op_name = op.op_name or named[0].op_name
  layer = LAYER.search(op_name)
  layer = layer.group(1) if layer else ""
  if convs:
    return conv_direction(convs[0], op_name, layer, forward_dims), layer
  if any(o.opcode == "dot" or re.search(r"gemm|matmul|cublas", o.target, re.I) for o in inner):
    return "matmul", layer
  if any(o.opcode in ("reduce-window", "select-and-scatter") for o in inner):
    return "pooling", layer
  if is_bias_grad(inner, op_name, layer):
    return "bias grad", layer
  for prefix, kind in SCOPE_KINDS:
    if layer.startswith(prefix):
      return kind, layer
  if all(o.opcode in COPY_OPS for o in inner):
    return "copies", layer
  if not op_name:
    return "other", layer
  return ("loss" if "jvp(" in op_name else "optimiser"), layer


def is_bias_grad(inner: list[HloOp], op_name: str, layer: str) -> bool:
  """A reduction in a conv or FC layer's backward pass: nothing else there reduces."""
  return (
    layer.startswith(("conv", "fc"))
    and "transpose(" in op_name
    and any(o.opcode == "reduce" for o in inner)
  )


def conv_direction(
  conv: HloOp, op_name: str, layer: str, forward_dims: dict[str, list[int]]
) -> str:
  """cuDNN's target names the direction. Elsewhere, an op of the forward pass is one; of
  the backward pass (`transpose(`, or no name: XLA made it) the data gradient convolves
  with the flipped kernel and has its layer's forward output's batch and spatial sizes;
  the weight gradient is the rest."""
  for key, kind in CUDNN_CONV:
    if key in conv.target:
      return kind
  if op_name and "transpose(" not in op_name:
    return "conv fwd"
  forward = collections.Counter(forward_dims.get(layer, []))
  shared = sum((collections.Counter(dims(conv.shape)) & forward).values())
  return "conv dgrad" if conv.reversed_kernel or shared >= 3 else "conv wgrad"


def forward_conv_dims(ops: dict[str, HloOp]) -> dict[str, list[int]]:
  """Each layer's forward convolution output shape."""
  found = {}
  for op in ops.values():
    layer = LAYER.search(op.op_name)
    if is_conv(op) and layer and "transpose(" not in op.op_name:
      found.setdefault(layer.group(1), dims(op.shape))
  return found


def kernel_kind(name: str) -> str:
  """The kind of an event the HLO does not name, by its GPU kernel's name."""
  for pattern, kind in KERNEL_KINDS:
    if re.search(pattern, name, re.I):
      return kind
  return "other"


# ---------------------------------------------------------------------------- trace


@dataclasses.dataclass
class Event:
  op: str  # the HLO op's name, or the kernel's where the trace gives no op
  start: float  # ns
  duration: float
  run: object  # which execution of the module (one step)
  line: str


def find_xplane(trace_dir: str) -> str:
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}")
  return max(files, key=os.path.getmtime)


def op_events(path: str, module: str) -> tuple[list[Event], str]:
  """The events of ops of `module` (a regex on the HLO module's name; all modules where
  none matches) on the device planes, or on the host where no device plane has any."""
  from jax.profiler import ProfileData  # jax reads the XSpace protobuf; no TensorFlow

  profile = ProfileData.from_file(path)
  by_source = {"device": [], "host": []}
  for plane in profile.planes:
    source = (
      "device"
      if plane.name.startswith("/device:")
      else ("host" if plane.name.startswith("/host:CPU") else None)
    )
    if source is None:
      continue
    lines = [line for line in plane.lines if line.name not in DERIVED_LINES]
    streams = [line for line in lines if line.name.startswith("Stream")]
    for line in streams or lines:
      for event in line.events:
        stats = dict(event.stats)
        if source == "host" and "hlo_op" not in stats:
          continue  # the host's own work (Python, dispatch), not the step's ops
        by_source[source].append(
          (
            stats.get("hlo_module", ""),
            Event(
              str(stats.get("hlo_op", event.name)),
              event.start_ns,
              event.duration_ns,
              stats.get("run_id"),
              line.name,
            ),
          )
        )
  source = "device" if by_source["device"] else "host"
  tagged = by_source[source]
  chosen = [e for m, e in tagged if re.search(module, str(m))]
  return (chosen or [e for _, e in tagged]), source


def busy_spans(events: list[Event]) -> list[tuple[float, float]]:
  """The union of the events' intervals, merged, in order."""
  spans = []
  for start, end in sorted((e.start, e.start + e.duration) for e in events):
    if spans and start <= spans[-1][1]:
      spans[-1] = (spans[-1][0], max(spans[-1][1], end))
    else:
      spans.append((start, end))
  return spans


def step_gaps(events: list[Event]) -> list[float]:
  """The gaps (ns) between one execution's last op and the next one's first."""
  runs = collections.defaultdict(list)
  for e in events:
    runs[e.run].append(e)
  bounds = sorted(
    (min(e.start for e in group), max(e.start + e.duration for e in group))
    for group in runs.values()
  )
  return [max(0.0, nxt[0] - end) for (_, end), nxt in zip(bounds, bounds[1:])]


# -------------------------------------------------------------------------- summary


def load_hlo(trace_dir: str, hlo_path: str = "") -> str:
  candidates = (
    [hlo_path]
    if hlo_path
    else [os.path.join(trace_dir, "step_hlo.txt.gz"), os.path.join(trace_dir, "step_hlo.txt")]
  )
  for path in candidates:
    if os.path.exists(path):
      opener = gzip.open if path.endswith(".gz") else open
      with opener(path, "rt") as f:
        return f.read()
  return ""


def summarise(
  trace_dir: str, hlo_text: str = "", module: str = "train_step", steps: int | None = None
) -> dict:
  """Time per kind, per layer and direction, per op, and idle time, from the trace."""
  path = find_xplane(trace_dir)
  events, source = op_events(path, module)
  if not events:
    raise ValueError(f"{path} holds no op events")
  ops, computations = parse_hlo(hlo_text)
  forward = forward_conv_dims(ops)
  runs = len({e.run for e in events})
  steps = steps or runs
  kinds, layers, per_op = (
    collections.Counter(),
    collections.defaultdict(collections.Counter),
    collections.Counter(),
  )
  named = {}
  for e in events:
    op = ops.get(e.op)
    if op is not None:
      kind, layer = classify(op, computations, forward)
    else:
      kind, layer = kernel_kind(e.op), ""
    kinds[kind] += e.duration
    per_op[e.op] += e.duration
    named[e.op] = (kind, layer)
    if layer:
      layers[layer][kind] += e.duration
  spans = busy_spans(events)
  span = spans[-1][1] - spans[0][0]
  busy = sum(end - start for start, end in spans)
  gaps = step_gaps(events)
  largest = sorted((nxt[0] - end for (_, end), nxt in zip(spans, spans[1:])), reverse=True)
  ms = lambda ns: ns / 1e6 / steps  # noqa: E731  per step
  return dict(
    xplane=os.path.relpath(path, trace_dir),
    source=source,
    steps=steps,
    executions=runs,
    events=len(events),
    hlo_ops_named=sum(e.op in ops for e in events),
    span_ms=ms(span),
    busy_ms=ms(busy),
    idle_ms=ms(span - busy),
    between_steps_ms=[g / 1e6 for g in gaps],
    largest_gaps_ms=[g / 1e6 for g in largest[: max(steps, 3)]],
    kinds_ms={k: ms(kinds[k]) for k in KINDS if kinds[k]},
    layers_ms={
      layer: {k: ms(v) for k, v in counts.items()}
      for layer, counts in sorted(layers.items(), key=lambda kv: layer_order(kv[0]))
    },
    top_ops=[
      dict(op=op, kind=named[op][0], layer=named[op][1], ms=ms(total))
      for op, total in per_op.most_common(25)
    ],
  )


def layer_order(layer: str) -> tuple:
  """conv1_1 < relu1_1 < pool1 < conv2_1 ... < fc6 < fc8."""
  numbers = [int(n) for n in re.findall(r"\d+", layer)]
  stage = numbers[0] if not layer.startswith(("fc", "drop")) else 10 + numbers[0]
  rank = {"conv": 0, "bn": 1, "relu": 2, "lrn": 3, "pool": 4, "fc": 0, "drop": 1}
  return stage, numbers[1] if len(numbers) > 1 else 99, rank.get(re.sub(r"\d.*", "", layer), 5)


def markdown(summary: dict) -> str:
  from vgg_jax.util import markdown_table  # pylint: disable=import-outside-toplevel

  busy = sum(summary["kinds_ms"].values()) or 1.0
  where = "device streams" if summary["source"] == "device" else "host threads"
  lines = [
    f"{summary['steps']} steps traced ({summary['events']} op events on the "
    f"{where}, {summary['hlo_ops_named']} of them named by the HLO; "
    f"{summary['xplane']}). Per step: span {summary['span_ms']:.3f} ms, ops busy "
    f"{summary['busy_ms']:.3f} ms, idle {summary['idle_ms']:.3f} ms; gaps between "
    f"steps (ms): {', '.join(f'{g:.3f}' for g in summary['between_steps_ms']) or 'n/a'}; "
    f"largest gaps (ms): {', '.join(f'{g:.3f}' for g in summary['largest_gaps_ms'])}.",
    "",
    markdown_table(
      ["kind", "ms/step", "share"],
      [[k, f"{v:.3f}", f"{v / busy:.1%}"] for k, v in summary["kinds_ms"].items()],
    ),
    "",
  ]
  columns = [k for k in KINDS if any(k in row for row in summary["layers_ms"].values())]
  lines += [
    "Per layer (ms/step):",
    "",
    markdown_table(
      ["layer", *columns, "total"],
      [
        [layer, *(f"{row.get(k, 0.0):.3f}" for k in columns), f"{sum(row.values()):.3f}"]
        for layer, row in summary["layers_ms"].items()
      ],
    ),
    "",
  ]
  lines += [
    "Top ops (ms/step):",
    "",
    markdown_table(
      ["op", "kind", "layer", "ms/step"],
      [[t["op"], t["kind"], t["layer"] or "-", f"{t['ms']:.3f}"] for t in summary["top_ops"]],
    ),
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
    prog="python benchmarks/profile_summary.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("trace_dir")
  parser.add_argument(
    "--hlo", default="", help="the step's optimised HLO (default: TRACE_DIR/step_hlo.txt[.gz])"
  )
  parser.add_argument(
    "--module",
    default="train_step",
    help="regex on the HLO module's name (default: the train step)",
  )
  parser.add_argument(
    "--steps", type=int, default=None, help="steps traced (default: the module's executions)"
  )
  parser.add_argument("--json", default="", help="also write the summary here")
  args = parser.parse_args(argv)
  summary = summarise(args.trace_dir, load_hlo(args.trace_dir, args.hlo), args.module, args.steps)
  print(markdown(summary))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=2)
  return summary


if __name__ == "__main__":
  if __package__ in (None, ""):  # run as `python benchmarks/profile_summary.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
