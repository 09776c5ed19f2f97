"""The trainer on real Fashion-MNIST: sharding, processes, resume, checkpoints, errors.

Runs use the NumPy input path (the same global batches for any device or process
count) and a 1/16-width net, a few steps each, so the whole file takes a few minutes.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import (
  ROOT,
  finish,
  launch,
  losses,
  needs_fashion_mnist,
  run_launch,
  tiny_config,
  train_on_two_processes,
)
from conftest import TRAIN_TINY as TINY
from vgg_jax import checkpoint as ckpt_lib
from vgg_jax import config as config_lib
from vgg_jax import data, evaluate, lock, metrics, sharding, train
from vgg_jax import weights as weights_lib
from vgg_jax.model import VGG

pytestmark = needs_fashion_mnist


def flat(state) -> dict[str, np.ndarray]:
  return {
    sharding.path_string(path): np.asarray(x)
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
  }


def assert_same_state(a, b, rtol=1e-4):
  """Equal to float tolerance, relative to each array's scale (another device count
  sums in another order)."""
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys()
  for key in a:
    assert np.abs(a[key] - b[key]).max() <= rtol * np.abs(b[key]).max() + 1e-7, key


def finite_weights(state) -> bool:
  """Parameters and momenta all finite (the plateau's `best_value` starts at inf)."""
  return all(
    np.isfinite(x).all() for k, x in flat(state).items() if k.startswith(("params", "opt_state"))
  )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Six steps on one device: what every other layout must reproduce."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  state, result = train.train_and_evaluate(tiny_config(steps=6), workdir)
  return state, workdir, result


@pytest.mark.parametrize(
  "devices,model_axis,rules,sharded_path",
  [
    (8, 1, "replicated", None),
    (8, 1, "fsdp", "params/fc6/kernel"),
    (4, 2, "tensor", "opt_state/1/0/trace/fc7/kernel"),
  ],
)
def test_sharded_equals_unsharded(tmp_path, reference, devices, model_axis, rules, sharded_path):
  config = tiny_config(steps=6, devices=devices, model_axis=model_axis)
  config.sharding = rules
  state, result = train.train_and_evaluate(config, str(tmp_path))
  ref_state, ref_dir, ref_result = reference
  np.testing.assert_allclose(losses(tmp_path), losses(ref_dir), rtol=1e-4)
  assert_same_state(state, ref_state)
  assert result["val_count"] == ref_result["val_count"] == 200
  if sharded_path:
    leaf = dict(zip(flat(state), jax.tree.leaves(state)))[sharded_path]
    assert not leaf.sharding.is_fully_replicated  # the rule really placed it


def test_bf16_compute_keeps_fp32_parameters(tmp_path, reference):
  config = tiny_config(steps=6)
  config.model.dtype = "bfloat16"
  state, _ = train.train_and_evaluate(config, str(tmp_path))
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {np.dtype("float32")}
  bf16, fp32 = losses(tmp_path), losses(reference[1])
  np.testing.assert_allclose(bf16, fp32, rtol=2e-2)  # bf16 rounding, same trajectory
  assert bf16 != fp32


def fresh_state(config):
  program = train.build_program(config, sharding.make_mesh(config.mesh), 10, 1)
  return program, program.init()


def test_warm_start_copies_exactly_the_papers_layers(reference):
  """D from the trained A: A's first four convs (conv1_1, conv2_1, conv3_1, conv3_2)
  and fc6-fc8 land at the same names; every other tensor keeps D's own init."""
  parent_state, parent_dir, _ = reference
  config = tiny_config(arg="quick,backend=numpy,model=D")
  config.warm_start.workdir = parent_dir
  program, state = fresh_state(config)
  untouched = flat(fresh_state(config)[1]["params"])
  copied = train.warm_start(state, program.model, config.warm_start)
  layers = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]
  assert copied == sorted(f"{layer}/{k}" for layer in layers for k in ("bias", "kernel"))
  parent, child = flat(parent_state["params"]), flat(state["params"])
  for path, value in child.items():
    expected = parent if path in copied else untouched
    np.testing.assert_array_equal(value, expected[path], err_msg=path)
  assert not np.array_equal(parent["conv1_1/kernel"], untouched["conv1_1/kernel"])


def test_warm_start_all_layers_and_a_mismatch(reference):
  parent_state, parent_dir, _ = reference
  config = tiny_config()
  config.warm_start.update(workdir=parent_dir, layers="all")
  program, state = fresh_state(config)
  train.warm_start(state, program.model, config.warm_start)
  assert_same_state(state["params"], parent_state["params"], rtol=0)
  config = tiny_config(arg="quick,backend=numpy,model=B")
  config.warm_start.update(workdir=parent_dir, layers="all")
  program, state = fresh_state(config)
  with pytest.raises(ValueError, match=r"missing from the parent VGG-A: conv1_2/bias"):
    train.warm_start(state, program.model, config.warm_start)


def test_weight_decay_applies_to_kernels_only():
  tx = train.make_optimizer(tiny_config().optim)
  params = {"fc6": {"kernel": np.ones((2, 2)), "bias": np.ones(2)}}
  zero = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  lr, wd = 1e-2, 5e-4
  np.testing.assert_allclose(updates["fc6"]["kernel"], -lr * wd * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["fc6"]["bias"], 0)


def one_line_error(out: subprocess.CompletedProcess, status: int = 1) -> str:
  """The known failure's line: the last of stderr, with no traceback before it."""
  assert out.returncode == status and "Traceback" not in out.stderr, out.stderr[-3000:]
  return out.stderr.strip().splitlines()[-1]


def restore(config, workdir, step=None):
  mesh = sharding.make_mesh(config.mesh)
  program = train.build_program(config, mesh, 10, 1)
  checkpoints = ckpt_lib.Checkpointer(workdir)
  try:
    state, _ = checkpoints.restore(
      program.abstract_state, train.checkpoint_meta(config, program), step
    )
  finally:
    checkpoints.close()
  return state


def test_two_processes_agree_with_one(tmp_path, reference):
  """Two real processes on 127.0.0.1 (2 CPU devices each, gloo collectives) train on
  the same global batches as the one-device reference."""
  outputs = train_on_two_processes(tmp_path, "quick,backend=numpy", "--config.optim.max_steps=6")
  assert "final: top-1 error" in outputs[0]
  ref_state, ref_dir, _ = reference
  np.testing.assert_allclose(losses(tmp_path), losses(ref_dir), rtol=1e-4)
  assert_same_state(restore(tiny_config(steps=6), str(tmp_path)), ref_state)


def wait_for_step(workdir, step, process, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(r.get("step", 0) >= step for r in metrics.read_metrics(workdir)):
      return
    assert process.poll() is None, process.communicate()[0][-3000:]
    time.sleep(0.05)
  raise TimeoutError(f"no step {step} in {workdir}")


def test_sigterm_saves_and_resume_is_exact(tmp_path):
  """A run stopped by SIGTERM, then resumed == the same 30 steps straight through, bit
  for bit. Like is compared with like: all three runs are `launch.py train` processes
  with one CPU device, so both sides use the same XLA configuration (another device
  count, or the pytest process's 8 devices, sums in another order)."""
  one_device = ("--config.optim.max_steps=30", "--config.mesh=(('data', 1), ('model', 1))")
  straight = launch(tmp_path / "straight", "quick,backend=numpy", *one_device)
  finish(straight)
  workdir = tmp_path / "interrupted"
  process = launch(workdir, "quick,backend=numpy", *one_device)
  wait_for_step(workdir, 3, process)
  process.send_signal(signal.SIGTERM)
  out = finish(process, status=train.PREEMPTED_EXIT_CODE)  # preempted is not done
  stopped_at = int(out.split("SIGTERM: saved step ")[1].split()[0])
  assert 3 <= stopped_at < 30, out[-2000:]
  out = finish(launch(workdir, "quick,backend=numpy", *one_device))
  assert f"resumed from step {stopped_at}" in out, out[-2000:]
  config = tiny_config(steps=30)
  assert_same_state(
    restore(config, str(workdir)), restore(config, str(tmp_path / "straight")), rtol=0
  )


@pytest.mark.parametrize("devices", [4, 1])
def test_restore_onto_another_device_count(tmp_path, devices):
  """Saved on 8 devices with FSDP-sharded fc layers, restored on 4 or 1: the same
  arrays, and two more steps agree with two more on 8 devices."""
  config = tiny_config(steps=4, devices=8)
  config.sharding = "fsdp"
  saved, _ = train.train_and_evaluate(config, str(tmp_path / "a"))
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  config.optim.max_steps = 6
  on_8, _ = train.train_and_evaluate(config, str(tmp_path / "a"))
  other = tiny_config(steps=4, devices=devices)
  assert_same_state(train.train_and_evaluate(other, str(tmp_path / "b"))[0], saved, rtol=0)
  other.optim.max_steps = 6
  assert_same_state(train.train_and_evaluate(other, str(tmp_path / "b"))[0], on_8)


def test_kill_9_during_saves_leaves_a_restorable_checkpoint(tmp_path):
  process = launch(
    tmp_path,
    "quick,backend=numpy",
    "--config.optim.max_steps=400",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.keep=2",
  )
  wait_for_step(tmp_path, 6, process)
  process.kill()
  process.wait()
  state = restore(tiny_config(), str(tmp_path))
  saved = int(state["step"])
  assert 1 <= saved < 400
  assert finite_weights(state)
  # and training carries on from there, each step logged once
  resumed, _ = train.train_and_evaluate(tiny_config(steps=saved + 2), str(tmp_path))
  assert int(resumed["step"]) == saved + 2
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path)) if "loss" in r] == list(
    range(1, saved + 3)
  )
  newest = max((tmp_path / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime)
  assert saved + 1 in session_starts(newest)  # TensorBoard purges the steps after saved


def session_starts(event_file) -> list[int]:
  """The steps of an event file's SessionLog.START events (TFRecord framing: length,
  its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2

  data, starts, at = event_file.read_bytes(), [], 0
  while at < len(data):
    length = int.from_bytes(data[at : at + 8], "little")
    event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
    if event.session_log.status == event_pb2.SessionLog.START:
      starts.append(event.step)
    at += 16 + length
  return starts


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_deleted(tmp_path):
  config = tiny_config(steps=4)
  config.checkpoint.every_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  latest = tmp_path / "checkpoints" / "4"
  for path in (latest / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 100:
      path.write_bytes(b"\0" * 16)
  with pytest.raises(
    ckpt_lib.CorruptCheckpoint,
    match=r"checkpoints/4 cannot be restored.*"
    r"the newest intact one is step 2: move 4 aside to resume from it",
  ) as error:
    train.train_and_evaluate(tiny_config(steps=6), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  assert "\n" not in str(error.value) and len(str(error.value)) < 500  # see test_checkpoint


def test_bytes_damaged_in_place_are_refused_by_train_eval_and_weights(tmp_path):
  """Each data file of step 4 damaged in turn (same size) at a quarter, half and three
  quarters of its length: whatever orbax still decodes must be the bytes saved, or the
  restore is refused naming the array and step 2. Which arrays share a file, and in what
  order, varies from run to run; three places per file reach every large array."""
  config = tiny_config(steps=4)
  config.checkpoint.every_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  saved = flat(restore(config, str(tmp_path)))
  refusals = {}
  for path in sorted((tmp_path / "checkpoints" / "4" / "state").rglob("d/*")):
    original = path.read_bytes()
    for at in (0.25, 0.5, 0.75):
      path.write_bytes(damaged(original, at))
      try:
        loaded = flat(restore(config, str(tmp_path)))
      except ckpt_lib.CorruptCheckpoint as e:
        refusals[path, at] = str(e)
      else:
        assert all(np.array_equal(loaded[k], saved[k]) for k in saved), (path, at)
    path.write_bytes(original)
  intact = "the newest intact one is step 2: move 4 aside to resume from it"
  assert all(r.endswith(intact) for r in refusals.values()), refusals
  # Without the checksums these loaded silently: a weight's file, damaged again.
  path, at = next(
    key for key, r in refusals.items() if "(params/" in r and "checksum mismatch" in r
  )
  path.write_bytes(damaged(path.read_bytes(), at))
  for load in (
    lambda: weights_lib.load_orbax(str(tmp_path), nnx.eval_shape(lambda: tiny_model(config))),
    lambda: evaluate.load_trained(str(tmp_path), step=4),
  ):
    with pytest.raises(ckpt_lib.CorruptCheckpoint, match=READER_HINT):
      load()
  assert evaluate.load_trained(str(tmp_path), step=2).step == 2  # the hint, followed


READER_HINT = r"the newest intact one is step 2: ask for it \(eval --step 2\), or move 4 aside$"


def damaged(data: bytes, at: float) -> bytes:
  """`data` with 64 bytes inverted from `at` (a fraction of its length): the same size."""
  start = int(len(data) * at)
  return data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :]


def tiny_model(config):
  return VGG(config_lib.network_config(config, 10, 1), rngs=nnx.Rngs(0))


def test_checkpoint_of_another_model_names_both(tmp_path):
  train.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
  other = tiny_config(steps=4, arg="quick,backend=numpy,model=B")
  with pytest.raises(
    ckpt_lib.CheckpointMismatch,
    match=r"holds model .*'name': 'A'.*"
    r"asks for .*'name': 'B'",
  ):
    train.train_and_evaluate(other, str(tmp_path))


def test_a_rerun_that_does_not_fit_the_workdir_writes_nothing(tmp_path, monkeypatch):
  """Another model is refused before config.json is touched (the finished run stays
  evaluable); a negative width fails before any data is read."""
  from vgg_jax import evaluate

  train.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
  written = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
  with pytest.raises(ckpt_lib.CheckpointMismatch, match="'name': 'B'"):
    train.train_and_evaluate(tiny_config(steps=4, arg="quick,backend=numpy,model=B"), str(tmp_path))
  monkeypatch.setattr(data, "make_pipeline", lambda *a, **k: pytest.fail("data was read"))
  negative = tiny_config(steps=4)
  negative.model.width = -1.0
  with pytest.raises(config_lib.ConfigError, match="width must be positive, got -1"):
    train.train_and_evaluate(negative, str(tmp_path))
  assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == written
  assert evaluate.load_trained(str(tmp_path)).model.name == "A"


def test_two_trainers_on_one_workdir(tmp_path):
  """The second (a trainer, or an evaluation, which writes eval/) is refused at once,
  naming the first; the first goes on unharmed, until SIGTERM stops it."""
  first = launch(tmp_path, "quick,backend=numpy", "--config.optim.max_steps=1000")
  wait_for_step(tmp_path, 2, first)
  with pytest.raises(lock.Locked, match=rf"in use by train \(pid {first.pid} on "):
    train.train_and_evaluate(tiny_config(steps=30), str(tmp_path))
  evaluation = one_line_error(run_launch("eval", f"--workdir={tmp_path}"))
  assert f"in use by train (pid {first.pid} on " in evaluation
  assert first.poll() is None  # still training
  first.send_signal(signal.SIGTERM)
  out = finish(first, status=train.PREEMPTED_EXIT_CODE)
  stopped_at = int(out.split("SIGTERM: saved step ")[1].split()[0])
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path)) if "loss" in r] == list(
    range(1, stopped_at + 1)
  )
  assert int(restore(tiny_config(), str(tmp_path))["step"]) == stopped_at
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_nonfinite_parameters_are_never_saved_and_each_start_config_is_kept(tmp_path):
  """An infinite LR at step 3: step 3's loss (of step 2's weights) is finite, its
  weights are not, so step 3 is not saved; configs/ tells which config trained which
  steps."""
  train.train_and_evaluate(tiny_config(steps=2), str(tmp_path))
  config = tiny_config(steps=6, lr=float("inf"))
  config.checkpoint.every_steps = 1
  with pytest.raises(
    train.NonFiniteLoss,
    match=r"parameters are not finite after step 3; "
    r"the last good checkpoint is step 2 in ",
  ):
    train.train_and_evaluate(config, str(tmp_path))
  state = restore(config, str(tmp_path))
  assert int(state["step"]) == 2 and finite_weights(state)
  started = {
    name: json.loads((tmp_path / "configs" / name).read_text())["optim"]["lr"]
    for name in os.listdir(tmp_path / "configs")
  }
  assert started == {"0.json": tiny_config().optim.lr, "2.json": float("inf")}


def test_nan_before_the_first_checkpoint_says_so(tmp_path):
  with pytest.raises(
    train.NonFiniteLoss,
    match=r"loss is (nan|inf) at step 2; no "
    r"intact checkpoint was saved yet",
  ):
    train.train_and_evaluate(tiny_config(steps=50, lr=float("inf")), str(tmp_path))


def test_launch_prints_known_errors_as_one_line(tmp_path):
  workdir = tmp_path / "run"
  field = one_line_error(
    run_launch(
      "train",
      f"--config={ROOT}/experiments/fashion_mnist.py:quick",
      f"--workdir={workdir}",
      "--config.no_such=1",
    ),
    status=2,
  )
  assert field.startswith("launch.py train: --config.no_such: unknown config field no_such")
  assert not workdir.exists()
  empty = one_line_error(run_launch("eval", f"--workdir={tmp_path}"))
  assert empty == f"launch.py eval: no vgg_jax checkpoint in {tmp_path}/checkpoints"
  assert os.listdir(tmp_path) == []  # no empty checkpoints/, no lock left


@pytest.mark.skipif(
  subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode,
  reason="needs `unshare -rm` (user and mount namespaces) for a small tmpfs",
)
def test_a_full_disk_is_one_line_naming_it(tmp_path):
  """Training in a 400 kB tmpfs (its own mount namespace): the first checkpoint does
  not fit."""
  command = " ".join(
    [
      sys.executable,
      os.path.join(ROOT, "launch.py"),
      "train",
      f"--config={ROOT}/experiments/fashion_mnist.py:quick,backend=numpy",
      f"--workdir={tmp_path}/run",
      *TINY,
      "--config.optim.max_steps=4",
      "--config.checkpoint.every_steps=1",
    ]
  )
  out = subprocess.run(
    ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=400k tmpfs {tmp_path} && {command}"],
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 1, out.stderr[-3000:]
  expected = f"launch.py train: no space left on the device of {tmp_path}/run/checkpoints: "
  assert out.stderr.strip().splitlines()[-1].startswith(expected), out.stderr[-3000:]
  # Orbax's and asyncio's tracebacks go to WORKDIR/orbax.log (lost on a full disk).
  assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
  assert "RESOURCE_EXHAUSTED" not in out.stderr, out.stderr[-3000:]


def test_a_failed_save_stops_the_run_at_once_saying_what_exists(tmp_path, monkeypatch):
  """A full disk, simulated: orbax's async save of step 4 fails in its thread (seen by
  check_for_errors); the run stops at step 5, before going on to validate. (Orbax
  finishes one save before it starts the next, so step 2 is complete.)"""
  import orbax.checkpoint as ocp

  full = OSError(errno.ENOSPC, "No space left on device")

  def failed_async_save(manager):
    if 4 in manager.all_steps():
      raise full

  monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failed_async_save)
  config = tiny_config(steps=8)
  config.checkpoint.every_steps = 2
  with pytest.raises(ckpt_lib.DiskFull, match="resume from step [24], the newest complete"):
    train.train_and_evaluate(config, str(tmp_path / "async"))
  logged = metrics.read_metrics(str(tmp_path / "async"))
  assert max(r["step"] for r in logged) <= 5 and not any("val_top1_err" in r for r in logged)

  def no_room(manager, step, **kwargs):
    raise full

  monkeypatch.setattr(ocp.CheckpointManager, "save", no_room)
  with pytest.raises(ckpt_lib.DiskFull) as error:
    train.train_and_evaluate(config, str(tmp_path / "none"))
  assert str(error.value).endswith("start afresh (no checkpoint is complete)")
  assert "resume from" not in str(error.value)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(steps=50, lr=1e6)
  config.checkpoint.every_steps = 1
  with pytest.raises(
    train.NonFiniteLoss,
    match=r"loss is (nan|inf) at step \d+; the last "
    r"good checkpoint is step \d+",
  ):
    train.train_and_evaluate(config, str(tmp_path))
  state = restore(config, str(tmp_path))
  assert finite_weights(state)
  bad = [r for r in metrics.read_metrics(str(tmp_path)) if "loss" in r]
  assert all(np.isfinite(r["loss"]) for r in bad)  # only finite losses were logged


def test_lr_drop_epochs_divide_the_lr_after_their_validation(tmp_path):
  """4 steps an epoch, 3 epochs, a drop after epoch 2 and a plateau rule that never
  fires: the steps of epoch 3 train at LR / 10, and it is logged."""
  config = tiny_config(steps=0, lr_drop_epochs=(2,), epochs=3, plateau_patience=9)
  config.data.train_split = "train[:128]"
  train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_metrics(str(tmp_path))
  assert [r["lr"] for r in records if "loss" in r] == pytest.approx([1e-2] * 8 + [1e-3] * 4)
  assert [r["lr_drops"] for r in records if "val_top1_err" in r] == [0, 1, 1]
  config.optim.lr_drop_epochs = (1.5,)
  with pytest.raises(config_lib.ConfigError, match="lr_drop_epochs"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))


def test_metrics_tensorboard_and_config_are_written(tmp_path, reference):
  _, workdir, result = reference
  records = metrics.read_metrics(workdir)
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
  final = [r for r in records if "val_top1_err" in r][-1]
  assert final["val_count"] == 200 and 0 <= final["val_top5_err"] <= final["val_top1_err"] <= 1
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  checkpoints = ckpt_lib.Checkpointer(workdir)
  assert checkpoints.best_step() == 6  # the validation metrics reached orbax's store
  checkpoints.close()
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["data"]["name"] == "fashion_mnist" and saved["optim"]["max_steps"] == 6


def test_every_image_counts_once_on_8_devices(tmp_path):
  config = tiny_config(steps=1, devices=8)
  config.data.eval_split = "test[:1003]"  # not a multiple of the batch or of 8
  _, result = train.train_and_evaluate(config, str(tmp_path))
  assert result["val_count"] == 1003


def test_unknown_dataset_is_a_clear_error(tmp_path):
  config = tiny_config()
  config.data.update(name="not_a_dataset", backend="tfds")
  with pytest.raises(Exception, match="not_a_dataset"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_end_to_end_fashion_mnist_learns(tmp_path):
  """The README's recipe, shortened: a 1/8-width A trained for 300 steps through the
  tf.data pipeline gets well below the 90% error of chance (measured: ~18-20%)."""
  process = launch(tmp_path, "quick", tiny=False)
  out = finish(process, timeout=900)
  final = [r for r in metrics.read_metrics(str(tmp_path)) if "val_top1_err" in r][-1]
  assert final["val_count"] == 10000 and final["step"] == 300
  assert final["val_top1_err"] < 0.35, out[-2000:]
