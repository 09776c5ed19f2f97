"""Checkpoint retention: the last K and the best by validation accuracy survive."""

import jax.numpy as jnp
import numpy as np

from vgg_jax import checkpoint as ckpt_lib


def test_keeps_the_last_k_and_the_best(tmp_path):
  checkpoints = ckpt_lib.Checkpointer(str(tmp_path), keep=2, keep_best=True)
  accuracy = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.6}  # epoch ends; odd steps are mid-epoch saves
  meta = {"model": {"name": "A"}}
  for step in range(1, 9):
    metrics = {ckpt_lib.BEST_METRIC: accuracy[step]} if step in accuracy else None
    checkpoints.save(step, {"w": jnp.full((3,), float(step))}, meta, metrics)
  checkpoints.wait()
  assert checkpoints.manager.all_steps() == [4, 7, 8]
  assert checkpoints.best_step() == 4
  state, saved_meta = checkpoints.restore({"w": jnp.zeros(3)}, meta, step=4)
  np.testing.assert_array_equal(state["w"], [4.0, 4.0, 4.0])
  assert saved_meta["model"] == {"name": "A"}
  checkpoints.close()
  # After a restart the best is still known, and still kept.
  again = ckpt_lib.Checkpointer(str(tmp_path), keep=2, keep_best=True)
  for step in (9, 10):
    again.save(step, {"w": jnp.zeros(3)}, meta, {ckpt_lib.BEST_METRIC: 0.1})
  again.wait()
  assert again.manager.all_steps() == [4, 9, 10] and again.best_step() == 4
  again.close()


def test_empty_workdir_restores_nothing(tmp_path):
  checkpoints = ckpt_lib.Checkpointer(str(tmp_path))
  assert checkpoints.restore({"w": jnp.zeros(3)}, {"model": {}}) is None
  checkpoints.close()
