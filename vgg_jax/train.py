"""The trainer: a config in, a trained and evaluated network out.

One SPMD program on a `jax.make_mesh` mesh: the batch is split over the `data` axis,
parameters are placed by the sharding rules (`vgg_jax.sharding`), the train state is
created already sharded (jit with out_shardings) and donated to every step. The loop
logs the previous step's metrics, so it never waits on the device, and a thread keeps the
next batches ready on the devices, so it never waits on the input pipeline either.

`train_and_evaluate(config, workdir)` reads as one linear story, section by section:
setup, input, model and optimiser, restore, the loop, the end.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import signal
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vgg_jax import checkpoint as ckpt_lib
from vgg_jax import config as config_lib
from vgg_jax import data as data_lib
from vgg_jax import metrics as metrics_lib
from vgg_jax import profiling
from vgg_jax import sharding as sharding_lib
from vgg_jax import weights as weights_lib
from vgg_jax.model import LRNConfig, VGG, VGGConfig


class NonFiniteLoss(FloatingPointError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM stopped the run after saving: rerun it, do not count it as failed."""


PREEMPTED_EXIT_CODE = 75  # launch.py's exit status for a preempted run (EX_TEMPFAIL)


# ------------------------------------------------------------------- model and optimiser


def model_config(config: ml_collections.ConfigDict, num_classes: int,
                 in_channels: int) -> VGGConfig:
  m = config.model
  return VGGConfig(
      name=m.name, num_classes=num_classes, width=m.width, fc_width=m.fc_width or None,
      batch_norm=m.batch_norm, dropout=m.dropout, image_size=config.data.crop,
      in_channels=in_channels, init=m.init, init_std=m.init_std,
      lrn=LRNConfig(alpha_over_n=m.lrn_alpha_over_n),
      dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype),
      # runs from before these fields computed both the first way
      pool=m.get("pool", "reduce_window"), relu_grad=m.get("relu_grad", "input"))


def model_graphdef(cfg: VGGConfig):
  """The model's structure without its arrays: `nnx.merge(graphdef, params, batch_stats)`
  rebuilds the network from a state's `params` and `batch_stats`."""
  return nnx.split(nnx.eval_shape(lambda: VGG(cfg, rngs=nnx.Rngs(0))),
                   nnx.Param, nnx.BatchStat)[0]


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay added to the gradient (Section 3.1)."""
  decay_mask = None if optim.decay_biases else (
      lambda params: jax.tree_util.tree_map_with_path(
          lambda path, _: sharding_lib.path_string(path).endswith("kernel"), params))
  return optax.chain(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
                     optax.sgd(optim.lr, momentum=optim.momentum))


def make_plateau(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """LR x factor when validation error stops improving, at most `max_drops` times; fed
  once per evaluation with the validation top-1 error."""
  return optax.contrib.reduce_on_plateau(
      factor=optim.plateau_factor, patience=optim.plateau_patience,
      rtol=0.0, atol=optim.plateau_min_delta,
      min_scale=optim.plateau_factor ** optim.plateau_max_drops * (1 - 1e-6))


def lr_drops(scale: float, factor: float) -> int:
  return round(math.log(scale) / math.log(factor)) if scale < 1 else 0


# --------------------------------------------------------------------- the train step


def train_step(state: dict, batch: dict, hyper: dict, *, graphdef,
               tx) -> tuple[dict, dict]:
  """One SGD step. `hyper` holds what differs between runs of one shape, as traced
  values (`run_hyper`: seed and base LR), so a config's seeds and fine-tunings share
  one compiled program; `tx` is built with LR 1 and the update scaled by the base LR
  here. Dropout's key is the run's key folded with the step, so a resumed run draws
  the same masks as an uninterrupted one."""
  key = jax.random.fold_in(jax.random.key(hyper["seed"]), state["step"])

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state["batch_stats"])
    model.train()
    logits = model(batch["image"], rngs=nnx.Rngs(dropout=key))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (logits, nnx.state(model, nnx.BatchStat))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  updates = jax.tree.map(lambda u: u * hyper["lr"] * state["plateau"].scale, updates)
  new_state = dict(state, step=state["step"] + 1,
                   params=optax.apply_updates(state["params"], updates),
                   batch_stats=batch_stats, opt_state=opt_state)
  metrics = dict(loss=loss, train_top1_err=1 - jnp.mean(logits.argmax(-1) == batch["label"]),
                 grad_norm=optax.global_norm(grads), lr=hyper["lr"] * state["plateau"].scale)
  return new_state, metrics


def eval_step(state: dict, batch: dict, *, graphdef) -> dict:
  """Sums over the real (mask=True) examples: top-1/top-5 hits, loss and count."""
  model = nnx.merge(graphdef, state["params"], state["batch_stats"])
  model.eval()
  logits = model(batch["image"])
  mask = batch["mask"].astype(jnp.float32)
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hit5 = (top5 == batch["label"][:, None]).any(-1)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return dict(top1=jnp.sum((logits.argmax(-1) == batch["label"]) * mask),
              top5=jnp.sum(hit5 * mask), loss=jnp.sum(loss * mask), count=jnp.sum(mask))


def evaluate(program: "Program", state: dict, pipeline: data_lib.Pipeline) -> dict:
  """Validation top-1/top-5 error over the whole split, each example counted once."""
  totals = None
  for batch in pipeline:
    sums = program.eval(state, data_lib.to_global(batch, program.batch_sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  top1, top5, loss, count = (float(totals[k]) for k in ("top1", "top5", "loss", "count"))
  return dict(val_top1_err=1 - top1 / count, val_top5_err=1 - top5 / count,
              val_top1_acc=top1 / count, val_loss=loss / count,
              val_count=int(count))


# ------------------------------------------------------------------------ the input


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """`iterator`'s items, a thread computing the next `size` while the caller works: the
  input pipeline's host work then overlaps the step instead of delaying the next dispatch.
  On a CPU it matters most: the NumPy pipeline's augmentation waits behind the running
  step on the same device, and without the thread the loop waited with it (Fashion-MNIST
  on 2 cores: 92% of the bare step's speed without, 99% with; benchmarks/README.md).
  `size` 0 is no thread: device-resident input only dispatches, in the loop's order."""
  if not size:
    yield from iterator
    return
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # one worker keeps the order
  try:
    pending = collections.deque(pool.submit(next, iterator) for _ in range(size))
    while True:
      pending.append(pool.submit(next, iterator))
      try:
        item = pending.popleft().result()
      except StopIteration:
        return
      yield item
  finally:
    pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------------- preemption


class Preemption:
  """SIGTERM (a preempted TPU VM, SLURM's time limit) asks the loop to save and stop.
  With several processes the flag is agreed on at log steps, so all stop together."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    return bool(multihost_utils.process_allgather(np.array(self.requested)).any())

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------- the sharded program


@dataclasses.dataclass(frozen=True)
class Program:
  """A run's jitted functions and where its state lives; built from the config alone,
  so training, resuming and evaluating a checkpoint all place arrays the same way."""
  model: VGGConfig
  mesh: jax.sharding.Mesh
  abstract_state: Any      # ShapeDtypeStructs carrying the target shardings
  batch_sharding: NamedSharding
  init: Any                # () -> state, created already sharded
  step: Any                # (state, batch) -> (state, metrics); state donated
  eval: Any                # (state, batch) -> summed top-1/top-5 hits, loss, count
  plateau: Any             # (plateau state, val error) -> plateau state


class Bound:
  """A jitted function with its last arguments bound as arrays (traced, not constants):
  callable and lowerable with the others alone, as the jitted function would be."""

  def __init__(self, fn, *bound):
    self.fn, self.bound = fn, bound

  def __call__(self, *args):
    return self.fn(*args, *self.bound)

  def lower(self, *args):
    return Bound(self.fn.lower(*args, *self.bound), *self.bound)

  def compile(self, *args, **kwargs):  # e.g. XLA compiler options
    return Bound(self.fn.compile(*args, **kwargs), *self.bound)

  def __getattr__(self, name):  # cost_analysis, as_text, ... of a lowered/compiled fn
    return getattr(self.fn, name)


def run_hyper(config: ml_collections.ConfigDict) -> dict:
  """What `train_step` and the initialiser take as traced values: they differ between
  runs that share a compiled program."""
  return dict(seed=np.uint32(config.seed), lr=np.float32(config.optim.lr))


# Fields of config.optim that reach the program only through `run_hyper` or the loop.
PER_RUN_OPTIM = ("lr", "epochs", "max_steps", "batch_size")
_COMPILED: dict[tuple, tuple] = {}  # program key -> the jitted functions, shared


def program_key(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                cfg: VGGConfig) -> tuple:
  """Everything that determines the programs' HLO, batch shapes aside (jit keys those)."""
  optim = {k: v for k, v in config.optim.items() if k not in PER_RUN_OPTIM}
  rules = config.sharding_rules or config.sharding
  return cfg, mesh, json.dumps(optim, sort_keys=True), json.dumps(rules, default=list)


def build_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                  num_classes: int, in_channels: int) -> Program:
  """The run's Program; runs whose `program_key` is equal (a config's seeds, its
  fine-tunings at another LR) share the jitted functions, so one process compiles
  them once."""
  cfg = model_config(config, num_classes, in_channels)
  key = program_key(config, mesh, cfg)
  if key not in _COMPILED:
    _COMPILED[key] = compile_program(config.optim, config.sharding_rules or config.sharding,
                                     mesh, cfg)
  abstract_state, batch_sharding, init, step, evaluate_batch, plateau = _COMPILED[key]
  hyper = run_hyper(config)
  return Program(cfg, mesh, abstract_state, batch_sharding, Bound(init, hyper["seed"]),
                 Bound(step, hyper), evaluate_batch, plateau)


def compile_program(optim: ml_collections.ConfigDict, rules, mesh: jax.sharding.Mesh,
                    cfg: VGGConfig) -> tuple:
  """The jitted init, train step, eval step and plateau update (compiled on first call)."""
  tx = make_optimizer(ml_collections.ConfigDict(dict(optim.to_dict(), lr=1.0)))  # see train_step
  plateau = make_plateau(optim)

  def init_state(seed):
    model = VGG(cfg, rngs=nnx.Rngs(jax.random.key(seed)))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                opt_state=tx.init(params), plateau=plateau.init(params))

  graphdef = model_graphdef(cfg)
  abstract_state = jax.eval_shape(init_state, jax.ShapeDtypeStruct((), jnp.uint32))
  state_sharding = sharding_lib.state_shardings(abstract_state, rules, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx),
                 in_shardings=(state_sharding, batch_sharding, replicated),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)
  evaluate_batch = jax.jit(functools.partial(eval_step, graphdef=graphdef),
                           in_shardings=(state_sharding, batch_sharding),
                           out_shardings=replicated)
  plateau_update = jax.jit(
      lambda p, err: plateau.update(updates={}, state=p, value=err)[1],
      out_shardings=state_sharding["plateau"])
  return (ckpt_lib.abstract_like(abstract_state, state_sharding), batch_sharding,
          jax.jit(init_state, out_shardings=state_sharding), step, evaluate_batch,
          plateau_update)


def checkpoint_meta(config: ml_collections.ConfigDict, program: Program) -> dict:
  return dict(model=program.model.signature(),
              config=json.loads(config.to_json_best_effort()))


# ------------------------------------------------------------------------ warm start


def warm_start(state: dict, cfg: VGGConfig, spec: ml_collections.ConfigDict) -> list[str]:
  """Overwrites a fresh state's weights with the finished run's in `spec.workdir`, as
  `weights.warm_start_tensors` chooses, on the state's shardings; returns their paths."""
  saved = ckpt_lib.Checkpointer(spec.workdir)
  try:
    step = saved.latest_step()
    if step is None:
      raise FileNotFoundError(f"warm start: no checkpoint in {saved.directory}")
    signature = saved.read_meta(step)["model"]
  finally:
    saved.close()
  parent_cfg = VGGConfig(**{k: v for k, v in signature.items() if k != "hidden"},
                         fc_width=signature["hidden"])
  parent = weights_lib.load_orbax(spec.workdir, nnx.eval_shape(
      lambda: VGG(parent_cfg, rngs=nnx.Rngs(0))))
  child = nnx.eval_shape(lambda: VGG(cfg, rngs=nnx.Rngs(0)))
  tensors = weights_lib.warm_start_tensors(parent, child, spec.layers)
  for path, value in tensors.items():
    layer, kind = path.split("/")
    group = "batch_stats" if layer in state["batch_stats"] and kind in state[
        "batch_stats"][layer] else "params"
    variable = state[group][layer][kind]
    variable.set_value(jax.device_put(value, variable.get_value().sharding))
  return sorted(tensors)


# ------------------------------------------------------------------------- the trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> tuple[dict, dict]:
  """Trains per `config`, resuming from `workdir` if it holds checkpoints; returns the
  final state and validation metrics. Raises NonFiniteLoss on a NaN/inf loss."""
  # --- Setup: validate before any compute, mesh, workdir. ---------------------------
  mesh = sharding_lib.make_mesh(config.mesh)
  config_lib.validate(config, mesh.shape["data"])
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # --- Input. ------------------------------------------------------------------------
  batch_size = config.optim.batch_size
  on_mesh = dict(global_batch_size=batch_size, sharding=sharding_lib.batch_sharding(mesh))
  train_data = data_lib.make_pipeline(config.data, train=True, seed=config.seed, **on_mesh)
  eval_data = data_lib.make_pipeline(config.data, train=False, **on_mesh)
  steps_per_epoch = train_data.steps
  total_steps = config.optim.max_steps or config.optim.epochs * steps_per_epoch

  # --- Model and optimiser: the sharded program. -------------------------------------
  program = build_program(config, mesh, train_data.num_classes, train_data.image_shape[-1])

  # --- Restore, or initialise. -------------------------------------------------------
  checkpoints = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                      keep_best=config.checkpoint.keep_best)
  meta = checkpoint_meta(config, program)
  restored = checkpoints.restore(program.abstract_state, meta)
  state = program.init() if restored is None else restored[0]
  copied = (warm_start(state, program.model, config.warm_start)
            if restored is None and config.warm_start.workdir else [])
  start_step = int(state["step"])

  # --- The loop. ---------------------------------------------------------------------
  writer = metrics_lib.MetricWriter(workdir)
  progress = metrics_lib.Progress(total_steps, start_step, batch_size)
  preemption = Preemption()
  profiler = profiling.StepProfiler(workdir, config.profile_steps)
  if start_step:
    progress.write(f"resumed from step {start_step} in {checkpoints.directory}")
  if copied:
    progress.write(f"warm start from {config.warm_start.workdir}: {', '.join(copied)}")
  batches = prefetch((data_lib.to_global(batch, program.batch_sharding)
                      for batch in train_data.iter_from(start_step)), train_data.prefetch)
  previous = None  # (step, metrics on device) of the step before

  def log(step, metrics):
    metrics = jax.device_get(metrics)
    if not math.isfinite(metrics["loss"]):
      raise NonFiniteLoss(f"loss is {metrics['loss']} at step {step}; the last good "
                          f"checkpoint is step {checkpoints.latest_step()} in "
                          f"{checkpoints.directory}")
    rate = progress.update(step, metrics)
    if step % config.log_every_steps == 0 or step == total_steps:
      writer.write(step, dict(metrics, img_per_s=rate, epoch=step / steps_per_epoch))

  def save(step, metrics=None):
    checkpoints.save(step, state, meta, metrics)

  # A finished run, restored, reports its result again.
  last_eval = evaluate(program, state, eval_data) if start_step >= total_steps else {}
  try:
    for step in range(start_step + 1, total_steps + 1):
      profiler.step(step, state)
      state, metrics = program.step(state, next(batches))
      if previous is not None:
        log(*previous)
      previous = (step, metrics)

      end_of_epoch = step % steps_per_epoch == 0
      if end_of_epoch and (step // steps_per_epoch) % config.eval_every_epochs == 0 \
          or step == total_steps:
        log(*previous)
        previous = None
        last_eval = evaluate(program, state, eval_data)
        state["plateau"] = program.plateau(state["plateau"], last_eval["val_top1_err"])
        scale = float(state["plateau"].scale)
        last_eval.update(epoch=step / steps_per_epoch, lr=config.optim.lr * scale,
                         lr_drops=lr_drops(scale, config.optim.plateau_factor))
        writer.write(step, last_eval)
        progress.write(f"step {step} epoch {step / steps_per_epoch:.2f}: val top-1 error "
                       f"{last_eval['val_top1_err']:.4f}, top-5 {last_eval['val_top5_err']:.4f}"
                       f" ({last_eval['val_count']} images), lr {last_eval['lr']:.2g}")
        save(step, {ckpt_lib.BEST_METRIC: last_eval["val_top1_acc"]})
      elif step % config.checkpoint.every_steps == 0:
        log(*previous)  # never save a state whose loss was not finite
        previous = None
        save(step)

      stop = (step % config.log_every_steps == 0 or jax.process_count() == 1) \
          and preemption.agreed()
      if stop:
        if previous is not None:
          log(*previous)
        if checkpoints.latest_step() != step:
          save(step)
        progress.write(f"SIGTERM: saved step {step} to {checkpoints.directory}; exiting")
        break
  finally:
    profiler.close(state)
    batches.close()
    preemption.restore()
    checkpoints.wait()
    checkpoints.close()
    progress.close()
    writer.close()
  return state, last_eval
