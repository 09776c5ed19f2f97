"""Checkpoint retention (the last K and the best by validation accuracy survive), and
the errors a reader can act on."""

import errno

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vgg_jax import checkpoint as ckpt_lib


def test_keeps_the_last_k_and_the_best(tmp_path, caplog):
  checkpoints = ckpt_lib.Checkpointer(str(tmp_path), keep=2, keep_best=True)
  accuracy = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.6}  # epoch ends; odd steps are mid-epoch saves
  meta = {"model": {"name": "A"}}
  for step in range(1, 9):
    metrics = {ckpt_lib.BEST_METRIC: accuracy[step]} if step in accuracy else None
    checkpoints.save(step, {"w": jnp.full((3,), float(step))}, meta, metrics)
  checkpoints.wait()
  assert checkpoints.manager.all_steps() == [4, 7, 8]
  assert checkpoints.best_step() == 4
  assert "did not provide metrics" not in caplog.text  # mid-epoch saves: none, by design
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


def test_an_error_in_a_message_is_one_line_of_whole_words():
  words = " ".join(f"word{i}" for i in range(60))
  error = ValueError(
    f"DATA_LOSS: Error reading params.fc6.kernel: {words} "
    f'[tensorstore_spec=\'{{"driver": "zarr"}}\']\nand a second line'
  )
  text = ckpt_lib.brief(error)
  assert text.startswith("ValueError: DATA_LOSS: Error reading params.fc6.kernel: word0 ")
  assert text.endswith(" ...") and len(text) <= 220 and "\n" not in text
  body = text[len("ValueError: ") : -len(" ...")]
  assert str(error)[len(body)] == " "  # cut between words
  short = ckpt_lib.brief(ValueError("checksum mismatch [tensorstore_spec='{...}']"))
  assert short == "ValueError: checksum mismatch"


def test_a_full_disk_is_recognised_however_it_is_wrapped():
  assert ckpt_lib.no_space(OSError(errno.ENOSPC, "No space left on device"))
  assert ckpt_lib.no_space(
    ValueError(
      "RESOURCE_EXHAUSTED: Failed to write 40364 bytes: No "
      "space left on device [os_error_code='28']"
    )
  )
  try:
    try:
      raise OSError(errno.ENOSPC, "disk full")
    except OSError as e:
      raise RuntimeError("commit failed") from e
  except RuntimeError as wrapped:
    assert ckpt_lib.no_space(wrapped)
  assert not ckpt_lib.no_space(OSError(errno.EACCES, "Permission denied"))


def test_reading_an_empty_workdir_creates_nothing(tmp_path):
  with pytest.raises(ckpt_lib.NoCheckpoint, match=f"no vgg_jax checkpoint in {tmp_path}"):
    with ckpt_lib.reader(str(tmp_path)):
      pass
  assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_from_before_checksums_still_loads(tmp_path):
  checkpoints = ckpt_lib.Checkpointer(str(tmp_path))
  meta = {"model": {"name": "A"}}
  checkpoints.manager.save(  # what save wrote before checksums: no "checksums" in meta
    1,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave({"w": jnp.ones(3)}), meta=ocp.args.JsonSave(meta)
    ),
  )
  checkpoints.wait()
  state, saved_meta = checkpoints.restore({"w": jnp.zeros(3)}, meta)
  np.testing.assert_array_equal(state["w"], [1.0, 1.0, 1.0])
  assert ckpt_lib.CHECKSUMS not in saved_meta
  checkpoints.close()


def test_checksums_name_each_array_and_see_a_swap_of_words():
  tree = {"params": {"fc6": {"kernel": jnp.arange(4.0)}}, "step": jnp.int32(3)}
  sums = ckpt_lib.checksums(tree)
  assert sorted(sums) == ["params/fc6/kernel", "step"]
  swapped = {"params": {"fc6": {"kernel": jnp.array([1.0, 0.0, 2.0, 3.0])}}, "step": jnp.int32(3)}
  with pytest.raises(ckpt_lib.ChecksumMismatch, match="params/fc6/kernel: not the bytes saved"):
    ckpt_lib.verify(swapped, sums)
  ckpt_lib.verify(tree, sums)
