"""Checkpoints with orbax: async saves, the last K and the best kept, safe resume.

Each checkpoint holds the train state (restored straight onto whatever mesh and
shardings the caller asks for, so a run saved on 8 devices resumes on 1 or 4) and a
JSON `meta` item with the model config, checked on restore so that a checkpoint of
another network is refused by name rather than by a shape error deep in orbax.
Orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest. Bytes damaged on disk
later may still decode (orbax checks no sums of its own), so `meta` also holds a
checksum of every saved array, verified on every restore: a mismatch is a
CorruptCheckpoint naming the array and the newest intact step.

A trained network's weights are read one way, `reader(workdir)`'s `restore_weights`:
params and batch statistics only (a partial restore, so the optimiser's state may change
shape or go), onto the caller's shardings, from a reader that creates and deletes
nothing. Evaluation, weight files and warm starts all use it.
"""

import contextlib
import errno
import logging
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from vgg_jax import paths
from vgg_jax.sharding import path_string

BEST_METRIC = "val_top1_acc"


class _NoMetricsAtMidEpochSaves(logging.Filter):
  """Mid-epoch saves carry no validation metrics by design (BestN ignores them); orbax
  would warn "Requested `tracked_metric`; did not provide metrics." at each."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsAtMidEpochSaves())


class CheckpointMismatch(ValueError):
  """The checkpoint in the workdir is of another model than the config asks for."""


class CorruptCheckpoint(RuntimeError):
  """The newest checkpoint cannot be read; nothing was deleted."""


class NoCheckpoint(FileNotFoundError):
  """The directory holds no checkpoint to read."""


class DiskFull(OSError):
  """A save ran out of space; the checkpoints already complete are intact."""


class ChecksumMismatch(ValueError):
  """A restored array is not the bytes that were saved."""


WEIGHTS = ("params", "batch_stats")  # the parts of a train state that make the network
CHECKSUMS = "checksums"  # meta's key: {leaf path: word sums of its bytes}; absent before


def _word_sums(x: jax.Array) -> jax.Array:
  """Two wrapping uint32 sums of the array's words, plain and weighted by position (a
  swap of words changes the second): exact, so equal bytes give equal sums anywhere."""
  x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
  words = jax.lax.bitcast_convert_type(x.reshape(-1), _WORDS[x.dtype.itemsize])
  words = words.astype(jnp.uint32)
  weights = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
  return jnp.stack([words.sum(dtype=jnp.uint32), (words * weights).sum(dtype=jnp.uint32)])


_WORDS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}
_all_word_sums = jax.jit(lambda tree: jax.tree.map(_word_sums, tree))


def checksums(tree: Any) -> dict[str, str]:
  """{"params/fc6/kernel": "1a2b3c4d-5e6f7a8b", ...}: each array's word sums, computed
  where it lives (no copy to the host)."""
  sums = jax.device_get(_all_word_sums(tree))
  return {
    path_string(path): "-".join(f"{int(v):08x}" for v in value)
    for path, value in jax.tree_util.tree_leaves_with_path(sums)
  }


def verify(restored: Any, saved: dict[str, str] | None) -> None:
  """ChecksumMismatch naming the first restored array whose sums are not the saved
  ones; a checkpoint from before checksums (`saved` None) passes."""
  if saved is None:
    return
  for path, value in checksums(restored).items():
    if path in saved and saved[path] != value:
      raise ChecksumMismatch(f"{path}: not the bytes saved (checksum mismatch)")


class Checkpointer:
  """Saves and restores {"state": pytree, "meta": json} under WORKDIR/checkpoints."""

  def __init__(
    self,
    workdir: str,
    *,
    keep: int = 3,
    keep_best: bool = True,
    async_save: bool = True,
    read_only: bool = False,
  ):
    best = lambda metrics: metrics[BEST_METRIC]  # noqa: E731
    policies = [checkpoint_managers.LatestN(keep)]
    if keep_best:
      policies.append(
        checkpoint_managers.BestN(get_metric_fn=best, n=1, keep_checkpoints_without_metrics=False)
      )
    self.directory = paths.join(paths.absolute(workdir), "checkpoints")
    self.read_only = read_only
    if read_only and not paths.Path(self.directory).is_dir():
      raise NoCheckpoint(f"no vgg_jax checkpoint in {self.directory}")
    self.manager = ocp.CheckpointManager(
      self.directory,
      item_names=("state", "meta"),
      options=ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn also makes orbax write the metrics to disk, so the best is
        # still known (and kept) after a restart.
        best_fn=best if keep_best else None,
        enable_async_checkpointing=async_save,
        create=not read_only,
        # A reader must not delete a running trainer's half-written save. (It never
        # saves, so it deletes nothing else; orbax's read_only only adds warnings.)
        cleanup_tmp_directories=not read_only,
      ),
    )

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None):
    """Starts an async save; the state's arrays are copied before this returns. A full
    disk (this save's or the previous one's) raises DiskFull."""
    meta = dict(meta, **{CHECKSUMS: checksums(state)})
    with self._writing():
      self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics,
        force=True,
      )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def restore(
    self, abstract_state: Any, meta: dict, step: int | None = None
  ) -> tuple[Any, dict] | None:
    """The state at `step` (default: newest) laid out as `abstract_state`'s shardings,
    or None when there is no checkpoint. `meta["model"]` must match the saved one."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    saved_meta = self.check_model(step, meta["model"], "the config asks for")
    return self._restore_verified(step, state_args(abstract_state), saved_meta), saved_meta

  def restore_weights(self, abstract_weights: Any, step: int, signature: dict) -> Any:
    """The saved state's {"params", "batch_stats"} alone, laid out as `abstract_weights`'
    shardings; the saved model must have `signature`."""
    saved_meta = self.check_model(step, signature, "the model is")
    return self._restore_verified(step, weights_args(abstract_weights), saved_meta)

  def _restore_verified(self, step: int, args: Any, saved_meta: dict) -> Any:
    """`step`'s state as `args` restores it, its checksums verified; CorruptCheckpoint
    naming the newest intact step otherwise."""
    try:
      return self._read_state(step, args, saved_meta)
    except Exception as e:
      raise self._corrupt(step, e, args) from e

  def _read_state(self, step: int, args: Any, saved_meta: dict) -> Any:
    state = self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    verify(state, saved_meta.get(CHECKSUMS))
    return state

  def intact(self, step: int, args: Any) -> bool:
    """Whether `step` restores (as `args` asks) to the bytes that were saved."""
    try:
      self._read_state(step, args, self.read_meta(step))
    except Exception:  # pylint: disable=broad-except
      return False
    return True

  def newest_intact(self, args: Any, before: int | None = None) -> int | None:
    """The newest step (below `before`) that restores intact, or None."""
    steps = [s for s in self.manager.all_steps() if before is None or s < before]
    return next((s for s in sorted(steps, reverse=True) if self.intact(s, args)), None)

  def check_model(self, step: int, signature: dict, wanted: str) -> dict:
    """`step`'s meta, once its model signature is found equal to `signature`."""
    meta = self.read_meta(step)
    if meta.get("model") != signature:
      raise CheckpointMismatch(
        f"checkpoint {paths.join(self.directory, str(step))} holds model "
        f"{meta.get('model')}, but {wanted} {signature}: use another workdir, or the "
        f"checkpoint's config"
      )
    return meta

  def read_meta(self, step: int) -> dict:
    """The JSON `meta` saved with `step` (the model signature and the run's config)."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        "meta"
      ]
    except Exception as e:
      raise self._corrupt(step, e) from e

  def _corrupt(self, step: int, error: Exception, args: Any = None) -> CorruptCheckpoint:
    """The refusal of `step`, naming the newest older step that `args` restores intact
    (every older step when `args` is None: the meta itself is unreadable), and what to do:
    a trainer resumes from the newest, a reader can ask for a step."""
    if args is None:
      older = [s for s in self.manager.all_steps() if s < step]
      intact = max(older) if older else None
    else:
      intact = self.newest_intact(args, before=step)
    if intact is None:
      hint = "no older one is intact" + (
        "" if self.read_only else f": move {step} aside to start afresh"
      )
    elif self.read_only:  # a reader resumes nothing; eval and load_orbax take a step
      hint = (
        f"the newest intact one is step {intact}: ask for it (eval --step {intact}), "
        f"or move {step} aside"
      )
    else:
      hint = f"the newest intact one is step {intact}: move {step} aside to resume from it"
    path = paths.join(self.directory, str(step))
    cause = str(error) if isinstance(error, ChecksumMismatch) else brief(error)
    return CorruptCheckpoint(f"checkpoint {path} cannot be restored ({cause}); {hint}")

  @contextlib.contextmanager
  def _writing(self) -> Iterator[None]:
    """A full disk, however deep orbax wraps it, as DiskFull saying what is left. (An
    async save's error surfaces at the next `check_saved`, save or wait, so the message
    names no step.)"""
    try:
      yield
    except Exception as e:
      if not no_space(e):
        raise
      complete = complete_steps(self.directory)
      then = (
        f"resume from step {max(complete)}, the newest complete checkpoint"
        if complete
        else "start afresh (no checkpoint is complete)"
      )
      raise DiskFull(
        f"no space left on the device of {self.directory}: a checkpoint could not be "
        f"written; free some (or lower checkpoint.keep) and rerun the command to {then}"
      ) from e

  def check_saved(self):
    """Raises the error of an async save that failed (DiskFull for a full disk), so the
    run stops at the next step rather than at the next save."""
    with self._writing():
      self.manager.check_for_errors()

  def wait(self):
    with self._writing():
      self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


@contextlib.contextmanager
def reader(workdir: str) -> Iterator[Checkpointer]:
  """WORKDIR's checkpoints to read, never to write (NoCheckpoint when there are none)."""
  checkpoints = Checkpointer(workdir, read_only=True)
  try:
    if checkpoints.latest_step() is None:
      raise NoCheckpoint(f"no vgg_jax checkpoint in {checkpoints.directory}")
    yield checkpoints
  finally:
    checkpoints.close()


def complete_steps(directory: str) -> list[int]:
  """The steps of DIRECTORY's complete checkpoints: orbax names each by its step once
  written (a save in progress, or one that failed, has a temporary name)."""
  path = paths.Path(directory)
  return [int(p.name) for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []


def state_args(abstract_state: Any) -> Any:
  """Restore args for a whole train state onto `abstract_state`'s shardings."""
  return ocp.args.StandardRestore(abstract_state)


def weights_args(abstract_weights: Any) -> Any:
  """Restore args for the weights alone (a partial restore) onto their shardings."""
  return ocp.args.PyTreeRestore(
    item=abstract_weights,
    partial_restore=True,
    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_weights),
  )


def no_space(error: BaseException | None) -> bool:
  """Whether `error` or an error behind it is a full disk (orbax and tensorstore wrap
  the OSError in their own types, keeping only its text)."""
  while error is not None:
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def brief(error: BaseException, limit: int = 200) -> str:
  """An error as one short line: its type and its first line without tensorstore's spec,
  cut at a word."""
  text = (str(error).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
  if len(text) > limit:
    text = text[:limit].rsplit(" ", 1)[0] + " ..."
  return f"{type(error).__name__}: {text}"


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for `restore`."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )
