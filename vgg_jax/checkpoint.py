"""Checkpoints with orbax: async saves, the last K and the best kept, safe resume.

Each checkpoint holds the train state (restored straight onto whatever mesh and
shardings the caller asks for, so a run saved on 8 devices resumes on 1 or 4) and a
JSON `meta` item with the model config, checked on restore so that a checkpoint of
another network is refused by name rather than by a shape error deep in orbax.
Orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = "val_top1_acc"


class CheckpointMismatch(ValueError):
  """The checkpoint in the workdir is of another model than the config asks for."""


class CorruptCheckpoint(RuntimeError):
  """The newest checkpoint cannot be read; nothing was deleted."""


class Checkpointer:
  """Saves and restores {"state": pytree, "meta": json} under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, *, keep: int = 3, keep_best: bool = True,
               async_save: bool = True):
    best = lambda metrics: metrics[BEST_METRIC]  # noqa: E731
    policies = [checkpoint_managers.LatestN(keep)]
    if keep_best:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best, n=1, keep_checkpoints_without_metrics=False))
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            # best_fn also makes orbax write the metrics to disk, so the best is
            # still known (and kept) after a restart.
            best_fn=best if keep_best else None,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True))

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None):
    """Starts an async save; the state's arrays are copied before this returns."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def restore(self, abstract_state: Any, meta: dict, step: int | None = None
              ) -> tuple[Any, dict] | None:
    """The state at `step` (default: newest) laid out as `abstract_state`'s shardings,
    or None when there is no checkpoint. `meta["model"]` must match the saved one."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    path = os.path.join(self.directory, str(step))
    saved_meta = self.read_meta(step)
    if saved_meta.get("model") != meta["model"]:
      raise CheckpointMismatch(
          f"checkpoint {path} holds model {saved_meta.get('model')}, but the config asks "
          f"for {meta['model']}: use another workdir, or the checkpoint's config")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:
      raise self._corrupt(path, step, e) from e
    return restored, saved_meta

  def restore_subset(self, abstract_subset: Any, step: int) -> Any:
    """Only the part of the saved state that `abstract_subset` names (e.g. params and
    batch_stats of a training state, without its optimiser), on its shardings."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item=abstract_subset, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subset))
      ))["state"]
    except Exception as e:
      raise self._corrupt(os.path.join(self.directory, str(step)), step, e) from e

  def read_meta(self, step: int) -> dict:
    """The JSON `meta` saved with `step` (the model signature and the run's config)."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
      raise self._corrupt(os.path.join(self.directory, str(step)), step, e) from e

  def _corrupt(self, path: str, step: int, error: Exception) -> CorruptCheckpoint:
    older = [s for s in self.manager.all_steps() if s < step]
    hint = (f"move it aside to resume from step {max(older)}" if older
            else "move it aside to start afresh")
    return CorruptCheckpoint(f"checkpoint {path} cannot be restored "
                             f"({type(error).__name__}: {str(error)[:300]}); {hint}")

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for `restore`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
