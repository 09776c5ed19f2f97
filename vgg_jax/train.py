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
import signal
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vgg_jax import checkpoint as ckpt_lib
from vgg_jax import config as config_lib
from vgg_jax import data as data_lib
from vgg_jax import lock as lock_lib
from vgg_jax import metrics as metrics_lib
from vgg_jax import paths, profiling
from vgg_jax import sharding as sharding_lib
from vgg_jax import weights as weights_lib
from vgg_jax.model import VGG, VGGConfig, conv_lowerings, describe_lowerings, model_graphdef


class NonFiniteLoss(FloatingPointError):
  """The loss or the parameters became NaN or inf; the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM stopped the run after its state was saved: not finished, rerun it to resume
  (`launch.py train` exits with PREEMPTED_EXIT_CODE)."""


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", so chains do not go on


# ------------------------------------------------------------------- model and optimiser


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay added to the gradient (Section 3.1); momentum
  0 keeps no momentum buffer."""
  decay_mask = (
    None
    if optim.decay_biases
    else (
      lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: sharding_lib.path_string(path).endswith("kernel"), params
      )
    )
  )
  return optax.chain(
    optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
    optax.sgd(optim.lr, momentum=optim.momentum or None),
  )


def make_plateau(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """LR x factor when validation error stops improving, at most `max_drops` times; fed
  once per evaluation with the validation top-1 error."""
  return optax.contrib.reduce_on_plateau(
    factor=optim.plateau_factor,
    patience=optim.plateau_patience,
    rtol=0.0,
    atol=optim.plateau_min_delta,
    min_scale=lowest_lr_scale(optim) * (1 - 1e-6),
  )


def lowest_lr_scale(optim: ml_collections.ConfigDict) -> float:
  """The LR scale after `plateau_max_drops` drops, the rule's and `lr_drop_epochs`' together."""
  return optim.plateau_factor**optim.plateau_max_drops


def lr_drops(scale: float, factor: float) -> int:
  return round(math.log(scale) / math.log(factor)) if scale < 1 else 0


# --------------------------------------------------------------------- the train step


def train_step(state: dict, batch: dict, hyper: dict, *, graphdef, tx) -> tuple[dict, dict]:
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

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  updates = jax.tree.map(lambda u: u * hyper["lr"] * state["plateau"].scale, updates)
  new_state = dict(
    state,
    step=state["step"] + 1,
    params=optax.apply_updates(state["params"], updates),
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  metrics = dict(
    loss=loss,
    train_top1_err=1 - jnp.mean(logits.argmax(-1) == batch["label"]),
    grad_norm=optax.global_norm(grads),
    lr=hyper["lr"] * state["plateau"].scale,
  )
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
  return dict(
    top1=jnp.sum((logits.argmax(-1) == batch["label"]) * mask),
    top5=jnp.sum(hit5 * mask),
    loss=jnp.sum(loss * mask),
    count=jnp.sum(mask),
  )


def evaluate(program: "Program", state: dict, pipeline: data_lib.Pipeline) -> dict:
  """Validation top-1/top-5 error over the whole split, each example counted once."""
  totals = None
  for batch in pipeline:
    sums = program.eval(state, data_lib.to_global(batch, program.batch_sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  top1, top5, loss, count = (float(totals[k]) for k in ("top1", "top5", "loss", "count"))
  return dict(
    val_top1_err=1 - top1 / count,
    val_top5_err=1 - top5 / count,
    val_top1_acc=top1 / count,
    val_loss=loss / count,
    val_count=int(count),
  )


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
  With several processes the flag is agreed on every `every` steps, so all stop together."""

  def __init__(self, every: int):
    self.every, self.requested = every, False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def due(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if step % self.every:
      return False
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
  abstract_state: Any  # ShapeDtypeStructs carrying the target shardings
  batch_sharding: NamedSharding
  init: Any  # () -> state, created already sharded
  step: Any  # (state, batch) -> (state, metrics); state donated
  eval: Any  # (state, batch) -> summed top-1/top-5 hits, loss, count
  plateau: Any  # (plateau state, val error) -> plateau state


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
PER_RUN_OPTIM = (
  "lr",
  "epochs",
  "max_steps",
  "batch_size",
  "plateau_from_epoch",
  "lr_drop_epochs",
)
_COMPILED: dict[tuple, tuple] = {}  # program key -> the jitted functions, shared
# The initialiser runs once, but XLA's CPU backend spent 10-14 s optimising it (D at 1/16
# width) against 1.4-1.9 s unoptimised: unoptimised it is. The random bits are the same;
# a normal draw can differ from the optimised program's in a float's last place (LLVM
# contracts differently), never between runs.
INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def program_key(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, cfg: VGGConfig
) -> tuple:
  """Everything that determines the programs' HLO, batch shapes aside (jit keys those)."""
  optim = {k: v for k, v in config.optim.items() if k not in PER_RUN_OPTIM}
  rules = config.sharding_rules or config.sharding
  return cfg, mesh, json.dumps(optim, sort_keys=True), json.dumps(rules, default=list)


def build_program(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_classes: int, in_channels: int
) -> Program:
  """The run's Program; runs whose `program_key` is equal (a config's seeds, its
  fine-tunings at another LR) share the jitted functions, so one process compiles
  them once."""
  cfg = config_lib.network_config(config, num_classes, in_channels)
  key = program_key(config, mesh, cfg)
  if key not in _COMPILED:
    _COMPILED[key] = compile_program(
      config.optim, config.sharding_rules or config.sharding, mesh, cfg
    )
  abstract_state, batch_sharding, init, step, evaluate_batch, plateau = _COMPILED[key]
  hyper = run_hyper(config)
  return Program(
    cfg,
    mesh,
    abstract_state,
    batch_sharding,
    Bound(init, hyper["seed"]),
    Bound(step, hyper),
    evaluate_batch,
    plateau,
  )


def compile_program(
  optim: ml_collections.ConfigDict, rules, mesh: jax.sharding.Mesh, cfg: VGGConfig
) -> tuple:
  """The jitted init, train step, eval step and plateau update (compiled on first call)."""
  tx = make_optimizer(ml_collections.ConfigDict(dict(optim.to_dict(), lr=1.0)))  # see train_step
  plateau = make_plateau(optim)

  def init_state(seed):
    model = VGG(cfg, rngs=nnx.Rngs(jax.random.key(seed)))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return dict(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      plateau=plateau.init(params),
    )

  graphdef = model_graphdef(cfg)
  abstract_state = jax.eval_shape(init_state, jax.ShapeDtypeStruct((), jnp.uint32))
  state_sharding = sharding_lib.state_shardings(abstract_state, rules, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  step = jax.jit(
    functools.partial(train_step, graphdef=graphdef, tx=tx),
    in_shardings=(state_sharding, batch_sharding, replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=0,
  )
  evaluate_batch = jax.jit(
    functools.partial(eval_step, graphdef=graphdef),
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=replicated,
  )
  plateau_update = jax.jit(
    lambda p, err: plateau.update(updates={}, state=p, value=err)[1],
    out_shardings=state_sharding["plateau"],
  )
  return (
    ckpt_lib.abstract_like(abstract_state, state_sharding),
    batch_sharding,
    jax.jit(
      init_state,
      out_shardings=state_sharding,
      compiler_options=INIT_COMPILER_OPTIONS.get(mesh.devices.flat[0].platform),
    ),
    step,
    evaluate_batch,
    plateau_update,
  )


def lowerings_line(program: Program, batch_shape: tuple) -> str:
  """Which of the network's convolutions run as one matmul on the mesh's platform."""
  model = nnx.eval_shape(lambda: VGG(program.model, rngs=nnx.Rngs(0)))
  platform = program.mesh.devices.flat[0].platform
  return describe_lowerings(conv_lowerings(model, batch_shape, platform=platform))


def checkpoint_meta(config: ml_collections.ConfigDict, program: Program) -> dict:
  return dict(model=program.model.signature(), config=json.loads(config.to_json_best_effort()))


# ------------------------------------------------------------------------ warm start


def warm_start(state: dict, cfg: VGGConfig, spec: ml_collections.ConfigDict) -> list[str]:
  """Overwrites a fresh state's weights with the finished run's in `spec.workdir`, as
  `weights.warm_start_tensors` chooses, on the state's shardings; returns their paths."""
  with ckpt_lib.reader(spec.workdir) as saved:
    signature = saved.read_meta(saved.latest_step())["model"]
  parent = weights_lib.load_orbax(
    spec.workdir, nnx.eval_shape(lambda: VGG(VGGConfig.from_signature(signature), rngs=nnx.Rngs(0)))
  )
  child = nnx.eval_shape(lambda: VGG(cfg, rngs=nnx.Rngs(0)))
  tensors = weights_lib.warm_start_tensors(parent, child, spec.layers)
  for path, value in tensors.items():
    layer, kind = path.split("/")
    group = "batch_stats" if kind in state["batch_stats"].get(layer, {}) else "params"
    variable = state[group][layer][kind]
    variable.set_value(jax.device_put(value, variable.get_value().sharding))
  return sorted(tensors)


# --------------------------------------------------------------------- the loop's parts


def itstime(step: int, every: int, last: int = 0) -> bool:
  """Whether a periodic action is due after `step`: every `every` steps (0: never),
  and after the `last` step."""
  return step == last or (every > 0 and step % every == 0)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


class Run:
  """What a run leaves behind and the checks that keep it good: metrics (JSON lines and
  TensorBoard, each step once), the progress bar, validations, checkpoints.

  A step's metrics are read one step late (`step_done`), so the loop never waits on the
  device; a save or a validation reads them first, so that no state whose loss was not
  finite is saved."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str,
    program: Program,
    checkpoints: ckpt_lib.Checkpointer,
    eval_data: data_lib.Pipeline,
    steps_per_epoch: int,
    total_steps: int,
    start_step: int,
  ):
    self.config, self.program, self.checkpoints = config, program, checkpoints
    self.eval_data, self.steps_per_epoch = eval_data, steps_per_epoch
    self.total_steps, self.eval_every = total_steps, steps_per_epoch * config.eval_every_epochs
    self.meta = checkpoint_meta(config, program)
    self.writer = metrics_lib.MetricWriter(workdir, start_step=start_step)
    self.progress = metrics_lib.Progress(total_steps, start_step, config.optim.batch_size)
    self.pending = None  # (step, metrics still on the device)

  def step_done(self, step: int, metrics: dict):
    """Logs the previous step's metrics; a failed async save stops the run here."""
    self.checkpoints.check_saved()
    self.flush()
    self.pending = (step, metrics)

  def flush(self):
    """Checks and logs the pending step's metrics, waiting for them."""
    if self.pending is None:
      return
    (step, metrics), self.pending = self.pending, None
    metrics = jax.device_get(metrics)
    if not math.isfinite(metrics["loss"]):
      raise NonFiniteLoss(f"loss is {metrics['loss']} at step {step}; {self.last_good()}")
    rate = self.progress.update(step, metrics)
    if itstime(step, self.config.log_every_steps, self.total_steps):
      self.writer.write(step, dict(metrics, img_per_s=rate, epoch=step / self.steps_per_epoch))

  def validate(self, step: int, state: dict) -> tuple[dict, dict]:
    """Validation error after `step`, fed to the LR plateau from `plateau_from_epoch` on,
    then the drop of `lr_drop_epochs` if this is one: the new state and the result."""
    self.flush()
    result = evaluate(self.program, state, self.eval_data)
    optim, plateau = self.config.optim, state["plateau"]
    if step >= optim.plateau_from_epoch * self.steps_per_epoch:
      plateau = self.program.plateau(plateau, result["val_top1_err"])
    if step in (e * self.steps_per_epoch for e in optim.lr_drop_epochs):
      dropped = jnp.maximum(plateau.scale * optim.plateau_factor, lowest_lr_scale(optim))
      plateau = plateau._replace(scale=dropped)
    scale = float(plateau.scale)
    result.update(
      epoch=step / self.steps_per_epoch,
      lr=self.config.optim.lr * scale,
      lr_drops=lr_drops(scale, self.config.optim.plateau_factor),
    )
    self.writer.write(step, result)
    self.progress.write(
      f"step {step} epoch {result['epoch']:.2f}: val top-1 error "
      f"{result['val_top1_err']:.4f}, top-5 {result['val_top5_err']:.4f} "
      f"({result['val_count']} images), lr {result['lr']:.2g}"
    )
    return dict(state, plateau=plateau), result

  def save(self, step: int, state: dict, result: dict | None = None):
    """Saves `state` once its loss and its weights are known to be finite; `result`
    (a validation) ranks it for keep_best."""
    self.flush()
    if not all_finite({k: state[k] for k in ckpt_lib.WEIGHTS}):
      raise NonFiniteLoss(f"parameters are not finite after step {step}; {self.last_good()}")
    best = None if result is None else {ckpt_lib.BEST_METRIC: result["val_top1_acc"]}
    self.checkpoints.save(step, state, self.meta, best)

  def preempted(self, step: int, state: dict) -> Preempted:
    """Saves `step` (unless just saved) for the rerun to resume from."""
    if self.checkpoints.latest_step() != step:
      self.save(step, state)
    return Preempted(
      f"SIGTERM: saved step {step} to {self.checkpoints.directory}; rerun "
      f"the same command to resume"
    )

  def last_good(self) -> str:
    """Where to resume from: the newest checkpoint that restores intact (verified, not
    merely the newest)."""
    self.checkpoints.wait()
    good = self.checkpoints.newest_intact(ckpt_lib.state_args(self.program.abstract_state))
    if good is None:
      return "no intact checkpoint was saved yet: lower the learning rate (or check the data)"
    return f"the last good checkpoint is step {good} in {self.checkpoints.directory}"

  def close(self):
    try:
      self.checkpoints.wait()
    finally:
      self.checkpoints.close()
      self.progress.close()
      self.writer.close()


def record_config(config: ml_collections.ConfigDict, workdir: str, start_step: int):
  """config.json: the config training goes on with. configs/STEP.json: each config the
  run was started with, at the step it started from, so the steps after STEP (up to the
  next file's) are known to be trained with it. Steps past `start_step` are undone:
  their files go."""
  if jax.process_index() != 0:
    return
  text = config.to_json_best_effort(indent=2)
  history = paths.Path(workdir) / "configs"
  history.mkdir(parents=True, exist_ok=True)
  started = sorted(int(p.stem) for p in history.iterdir() if p.suffix == ".json")
  for step in started:
    if step > start_step:
      (history / f"{step}.json").unlink()
  earlier = [step for step in started if step <= start_step]
  if not earlier or (history / f"{earlier[-1]}.json").read_text() != text:
    paths.write_text(history / f"{start_step}.json", text)
  paths.write_text(paths.join(workdir, "config.json"), text)


# ------------------------------------------------------------------------- the trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, dict]:
  """Trains per `config`, resuming from `workdir` if it holds checkpoints; returns the
  final state and validation metrics. Raises NonFiniteLoss on a NaN/inf loss or
  parameters, Preempted once SIGTERM's save is done, lock.Locked when another process
  holds the workdir. Nothing is written before every check has passed."""
  # --- Setup: the config checked before any compute; the workdir locked. -------------
  mesh = sharding_lib.make_mesh(config.mesh)
  config_lib.validate(config, mesh.shape["data"])
  with lock_lib.workdir_lock(workdir, "train"):
    # --- Input. ----------------------------------------------------------------------
    batch_size = config.optim.batch_size
    on_mesh = dict(global_batch_size=batch_size, sharding=sharding_lib.batch_sharding(mesh))
    train_data = data_lib.make_pipeline(config.data, train=True, seed=config.seed, **on_mesh)
    eval_data = data_lib.make_pipeline(config.data, train=False, **on_mesh)
    steps_per_epoch = train_data.steps
    total_steps = config.optim.max_steps or config.optim.epochs * steps_per_epoch

    # --- Model and optimiser: the sharded program. -----------------------------------
    program = build_program(config, mesh, train_data.num_classes, train_data.image_shape[-1])

    # --- Restore (the checkpoint's model checked against the config), or initialise. --
    checkpoints = ckpt_lib.Checkpointer(
      workdir, keep=config.checkpoint.keep, keep_best=config.checkpoint.keep_best
    )
    restored = checkpoints.restore(program.abstract_state, checkpoint_meta(config, program))
    state = program.init() if restored is None else restored[0]
    start_step = int(state["step"])
    copied = (
      warm_start(state, program.model, config.warm_start)
      if restored is None and config.warm_start.workdir
      else []
    )
    record_config(config, workdir, start_step)  # every check passed: the first write

    # --- The loop. -------------------------------------------------------------------
    run = Run(
      config, workdir, program, checkpoints, eval_data, steps_per_epoch, total_steps, start_step
    )
    run.progress.write(lowerings_line(program, (batch_size, *train_data.image_shape)))
    if start_step:
      run.progress.write(f"resumed from step {start_step} in {checkpoints.directory}")
    if copied:
      run.progress.write(f"warm start from {config.warm_start.workdir}: {', '.join(copied)}")
    batches = prefetch(
      (
        data_lib.to_global(batch, program.batch_sharding)
        for batch in train_data.iter_from(start_step)
      ),
      train_data.prefetch,
    )
    preemption = Preemption(config.log_every_steps)
    profiler = profiling.StepProfiler(workdir, config.profile_steps, program.step)
    # A finished run, restored, reports its result again.
    last_eval = evaluate(program, state, eval_data) if start_step >= total_steps else {}
    try:
      for step in range(start_step + 1, total_steps + 1):
        batch = next(batches)
        profiler.step(step, state, batch)
        state, metrics = program.step(state, batch)
        run.step_done(step, metrics)
        if itstime(step, run.eval_every, total_steps):
          state, last_eval = run.validate(step, state)
          run.save(step, state, last_eval)
        elif itstime(step, config.checkpoint.every_steps):
          run.save(step, state)
        if preemption.due(step):
          raise run.preempted(step, state)
    finally:
      profiler.close(state)
      batches.close()
      preemption.restore()
      run.close()
  return state, last_eval
