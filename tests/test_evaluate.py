"""The test protocols: views, their arithmetic, exact counting and bounded compilations.

The trained network is a 1/16-width A run 4 steps on Fashion-MNIST (checkpoints at steps
2 and 4); where the point is arithmetic, narrow untrained nets are built directly.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT, finish, free_port, needs_fashion_mnist, tiny_config
from vgg_jax import checkpoint as ckpt_lib
from vgg_jax import data, evaluate, sharding, train
from vgg_jax.model import VGG, VGGConfig

pytestmark = needs_fashion_mnist
SPLIT = "test[:203]"  # a multiple of neither the batch (32) nor the 8 devices


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run with two checkpoints: step 2, and step 4 (validated, so also the best)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(steps=4)
  config.checkpoint.every_steps = 2
  _, result = train.train_and_evaluate(config, workdir)
  return workdir, result


@pytest.fixture(scope="module")
def trained(run):
  return evaluate.load_trained(run[0])


@pytest.fixture(scope="module")
def images():
  return next(data.read_split(tiny_config().data, "test[:6]"))


def test_a_step_that_was_not_saved_names_those_that_were(run):
  with pytest.raises(
    ckpt_lib.NoCheckpoint, match=r"no checkpoint of step 999 in .*; it holds steps 2, 4$"
  ):
    evaluate.load_trained(run[0], step=999)


def built(image_size=32, width=1 / 16) -> evaluate.Trained:
  """An untrained Fashion-MNIST network on one device, for arithmetic."""
  cfg = VGGConfig(
    name="A", num_classes=10, width=width, image_size=image_size, in_channels=1, init="glorot"
  )
  _, params, batch_stats = nnx.split(VGG(cfg, rngs=nnx.Rngs(1)), nnx.Param, nnx.BatchStat)
  config = tiny_config()
  config.data.update(crop=image_size, scale=(image_size, image_size), eval_scale=image_size)
  return evaluate.Trained(config, cfg, sharding.make_mesh((("data", 1),)), params, batch_stats)


def noise(*shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(0, 50, shape).astype(np.float32)


def test_loads_the_best_checkpoint_else_the_newest(run, trained, tmp_path):
  assert (trained.step, trained.checkpoint) == (4, "best")
  earlier = evaluate.load_trained(run[0], step=2)
  assert (earlier.step, earlier.checkpoint) == (2, "requested")
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(earlier.params), jax.tree.leaves(trained.params))
  )
  unvalidated = str(tmp_path / "run")  # only step 2, saved without metrics
  shutil.copytree(run[0], unvalidated)
  shutil.rmtree(os.path.join(unvalidated, "checkpoints", "4"))
  latest = evaluate.load_trained(unvalidated)
  assert (latest.step, latest.checkpoint) == (2, "latest")


def test_single_crop_reproduces_the_trainers_validation(run, trained):
  result = evaluate.evaluate([trained], "single", split="test[:200]")
  assert result["count"] == run[1]["val_count"] == 200
  assert result["top1_err"] == pytest.approx(run[1]["val_top1_err"])
  assert result["top5_err"] == pytest.approx(run[1]["val_top5_err"])


def test_dense_on_a_training_size_image_equals_single_crop(trained):
  runner = evaluate.Runner(trained, batch_size=8)
  batch = noise(8, 32, 32, 1)
  np.testing.assert_allclose(
    runner.logits(batch, dense=True), runner.logits(batch, dense=False), rtol=1e-5, atol=1e-5
  )


def centre_taps(params):
  """Every 3x3 conv kernel zeroed but for its centre tap."""
  tap = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
  return jax.tree_util.tree_map_with_path(
    lambda path, x: x * tap if sharding.path_string(path).startswith("conv") and x.ndim == 4 else x,
    params,
  )


def test_dense_equals_the_average_of_stride_aligned_crops():
  """With 3x3 kernels zero but for the centre tap, each conv output pixel depends on
  that input pixel alone, so SAME padding never enters, and the 2x2 stride-2 pools tile
  the image in blocks aligned to multiples of 32 = 2^5. So a 64x64 crop at offset
  (32a, 32b) of a 96x96 image has as its pool5 map exactly the 2x2 window at (a, b) of
  the whole image's 3x3 pool5 map. With training size 64 fc6 is a 2x2 kernel: dense mode
  applies it as a VALID conv at the four positions (a, b) in {0, 1}^2, fc7/fc8
  pointwise, and averages the four logit vectors, which is by the above the mean of the
  four crops' FC logits. With full 3x3 kernels, SAME padding at each crop's border
  makes its features differ from the whole image's, and the two disagree."""
  full = built(image_size=64)
  image = noise(96, 96, 1)
  crops = np.stack([image[y : y + 64, x : x + 64] for y in (0, 32) for x in (0, 32)])

  def dense_and_crop_mean(trained):
    runner = evaluate.Runner(trained, batch_size=4)
    return (
      runner.logits(np.stack([image] * 4), dense=True)[0],
      runner.logits(crops, dense=False).mean(0),
    )

  dense, mean = dense_and_crop_mean(dataclasses.replace(full, params=centre_taps(full.params)))
  np.testing.assert_allclose(dense, mean, rtol=1e-4, atol=1e-6)
  dense, mean = dense_and_crop_mean(full)
  assert not np.allclose(dense, mean, rtol=1e-3, atol=1e-6)


def test_multicrop_is_a_5x5_grid_with_flips():
  image = noise(45, 50, 1)
  views = evaluate.views(image[None], "multicrop", 32, bucket=32)
  assert views.shape == (50, 32, 32, 1)
  crops, flips = views[:25], views[25:]
  assert len({c.tobytes() for c in crops}) == 25
  np.testing.assert_array_equal(flips, crops[:, :, ::-1])
  for y, x in [(0, 0), (0, 18), (13, 0), (13, 18), (6, 9)]:  # corners, centre
    assert any(np.array_equal(c, image[y : y + 32, x : x + 32]) for c in crops)
  np.testing.assert_array_equal(
    evaluate.views(image[None], "single", 32, bucket=32)[0], image[6:38, 9:41]
  )  # the centre crop is the grid's middle
  # A batch's views are each image's in turn (the owners the runner gives them).
  batch = np.stack([image, noise(45, 50, 1, seed=1), image[::-1]])
  for kind in evaluate.VIEWS:
    np.testing.assert_array_equal(
      evaluate.views(batch, kind, 32, bucket=32),
      np.concatenate([evaluate.views(x[None], kind, 32, bucket=32) for x in batch]),
    )
  np.testing.assert_array_equal(evaluate.grid_offsets(50, 32), [0, 4, 9, 13, 18])


def test_multicrop_and_dense_counts_views_per_scale(trained):
  result = evaluate.evaluate([trained], "multicrop+dense", "32,40,48", split="test[:6]")
  assert result["views_per_image"] == [(50 + 2) * 3]
  assert result["count"] == 6
  assert result["compilations"] == 2  # one crop program, one 32x32 dense program
  assert result["models"][0]["Q"] == [32, 40, 48]


def test_many_evaluations_in_one_pass_equal_each_alone(trained, monkeypatch):
  """`evaluate_many` (what `launch.py eval --configured` runs) predicts each (view
  kind, Q) once per image, whichever protocols share it, and gives each evaluation the
  counts it has alone, in the order asked."""
  asked = [
    ("multicrop+dense", "32,40", "test[:6]"),
    ("dense", "32,40", "test[:6]"),
    ("multicrop", "32,40", "test[:6]"),
    ("dense", "", "test[:10]"),
  ]
  scans, scan = [], evaluate.Runner.scan

  def counted(self, images, kind, q, bucket):
    scans.append((len(images), kind, q))
    return scan(self, images, kind, q, bucket)

  monkeypatch.setattr(evaluate.Runner, "scan", counted)
  together = evaluate.evaluate_many([trained], asked)
  monkeypatch.undo()
  own_q = trained.config.data.eval_scale
  assert sorted(scans) == sorted(
    [
      (6, "multicrop", 32),
      (6, "multicrop", 40),
      (6, "dense", 32),
      (6, "dense", 40),
      (10, "dense", own_q),
    ]
  )
  keys = ("protocol", "split", "count", "top1_hits", "top5_hits", "views_per_image", "models")
  for result, (protocol, scales, split) in zip(together, asked):
    alone = evaluate.evaluate([trained], protocol, scales, split=split)
    assert {k: result[k] for k in keys} == {k: alone[k] for k in keys}


def test_flip_averaging_of_a_symmetric_image_changes_nothing():
  trained = built()
  runner = evaluate.Runner(trained, batch_size=1)
  half = np.random.default_rng(0).integers(0, 255, (28, 14, 1))
  symmetric = np.concatenate([half, half[:, ::-1]], axis=1).astype(np.uint8)
  asymmetric = np.concatenate([half, half], axis=1).astype(np.uint8)

  def unflipped(raw):
    """Soft-max of the one image, no flip, averaged over the two scales."""
    padded = np.pad(raw, ((2, 2), (2, 2), (0, 0)))[None]
    return np.mean(
      [
        evaluate.softmax(
          runner.logits(
            evaluate.views(data.rescale_images(trained.config.data, padded, q), "dense", 32, 32)[
              :1
            ],
            dense=True,
          )
        )
        for q in (32, 40)
      ],
      0,
    )

  np.testing.assert_allclose(
    runner.predict([symmetric], "dense", [32, 40]), unflipped(symmetric), rtol=1e-5
  )
  assert not np.allclose(
    runner.predict([asymmetric], "dense", [32, 40]), unflipped(asymmetric), rtol=1e-5
  )


def test_ensembles_average_their_members(run, trained, images):
  raw, labels = images
  step2 = evaluate.load_trained(run[0], step=2)
  wider = built(width=1 / 8)  # another config
  runners = {
    name: evaluate.Runner(t, batch_size=8)
    for name, t in [("step4", trained), ("step2", step2), ("wider", wider)]
  }
  alone = {name: r.predict(raw, "dense", [32]) for name, r in runners.items()}
  np.testing.assert_array_equal(
    evaluate.predict([runners["step4"]], raw, "dense", [[32]]), alone["step4"]
  )
  for other in ("step2", "wider"):
    pair = evaluate.predict([runners["step4"], runners[other]], raw, "dense", [[32], [32]])
    np.testing.assert_allclose(pair, (alone["step4"] + alone[other]) / 2, rtol=1e-6)
    assert not np.allclose(pair, alone["step4"]) and not np.allclose(pair, alone[other])
  result = evaluate.evaluate([trained, step2], "dense", split="test[:6]")
  expected = evaluate.score(evaluate.hits((alone["step4"] + alone["step2"]) / 2, labels))
  assert {k: result[k] for k in expected} == expected


def test_exact_counting_on_8_devices(run):
  one = evaluate.evaluate([evaluate.load_trained(run[0])], "dense", split=SPLIT)
  eight = evaluate.load_trained(run[0], mesh=(("data", 8), ("model", 1)))
  assert eight.mesh.shape["data"] == 8
  result = evaluate.evaluate([eight], "dense", split=SPLIT)
  assert result["count"] == one["count"] == 203
  assert (result["top1_hits"], result["top5_hits"]) == (one["top1_hits"], one["top5_hits"])
  shares = [
    evaluate.evaluate([eight], "dense", split=SPLIT, process_index=i, process_count=3)
    for i in range(3)
  ]
  assert [s["count"] for s in shares] == [68, 68, 67]
  assert sum(s["top1_hits"] for s in shares) == one["top1_hits"]


def test_chunks_bound_the_images_held_and_change_no_score(trained, monkeypatch):
  whole = evaluate.evaluate([trained], "dense", "32,37", split=SPLIT)
  held, predict = [], evaluate.predict

  def counted(runners, images, *args):
    held.append(len(images))
    return predict(runners, images, *args)

  monkeypatch.setattr(evaluate, "predict", counted)
  chunked = evaluate.evaluate([trained], "dense", "32,37", split=SPLIT, chunk=50)
  assert held == [50, 50, 50, 50, 3]
  keys = ("count", "top1_hits", "top5_hits", "compilations")
  assert {k: chunked[k] for k in keys} == {k: whole[k] for k in keys}


def test_both_backends_give_a_process_the_same_chunks_and_views():
  trained = built()
  with_tf = dataclasses.replace(trained, config=trained.config.copy_and_resolve_references())
  with_tf.config.data.backend = "tfds"
  shares = [
    list(data.read_split(t.config.data, "test[:7]", 1, 2, chunk=2)) for t in (trained, with_tf)
  ]
  assert [[len(labels) for _, labels in share] for share in shares] == [[2, 1]] * 2
  (numpy_images, numpy_labels), (tfds_images, tfds_labels) = [
    (
      np.concatenate([np.stack(images) for images, _ in share]),
      np.concatenate([labels for _, labels in share]),
    )
    for share in shares
  ]
  np.testing.assert_array_equal(numpy_labels, tfds_labels)
  np.testing.assert_array_equal(numpy_images, tfds_images)
  for q in (20, 32, 37, 45):  # shrinking and enlarging
    np.testing.assert_allclose(
      evaluate.Runner(with_tf).rescaled(tfds_images, q),
      evaluate.Runner(trained).rescaled(numpy_images, q),
      atol=1e-2,
    )


def test_compilations_are_bounded_over_many_image_sizes():
  """Synthetic images of 12 sizes, each in both orientations, rescale to 12 distinct
  shapes at Q=32 (32x33 ... 32x100); cut to multiples of 32 they need 5 programs."""
  sizes = [(32, 33), (33, 60), (40, 90), (45, 100), (32, 64), (32, 100)]
  sizes += [(w, h) for h, w in sizes]
  raw = [np.full((h, w, 1), 7, np.uint8) for h, w in sizes]
  assert len({data.rescaled_shape(h, w, 32) for h, w in sizes}) == 12
  evaluate.forward_program.cache_clear()  # shared by runners of one model: count ours
  runner = evaluate.Runner(built(), batch_size=8)
  probs = runner.predict(raw, "dense", [32])
  assert probs.shape == (12, 10) and np.allclose(probs.sum(1), 1)
  assert {shape[1:3] for shape, _ in runner.programs} == {
    (32, 32),
    (32, 64),
    (64, 32),
    (32, 96),
    (96, 32),
  }
  assert runner._forward._cache_size() == len(runner.programs) == 5


def test_results_as_json_and_a_table_row(trained):
  result = evaluate.evaluate([trained], "dense", split="test[:6]")
  path = evaluate.write_result(result)
  assert path == os.path.join(trained.workdir, "eval", "test_6_dense_Q32.json")
  with open(path) as f:
    saved = json.load(f)
  assert saved["count"] == 6 and saved["models"][0]["step"] == 4
  assert saved["table_row"] == evaluate.table_row(result)
  cells = saved["table_row"].strip("|").split("|")
  assert [c.strip() for c in cells[:4]] == ["A", "32", "32", "dense"]
  assert float(cells[4]) == pytest.approx(100 * result["top1_err"], abs=0.05)


def test_scale_presets():
  config = tiny_config()
  assert evaluate.resolve_scales("", config) == (32,)
  assert evaluate.resolve_scales("table4", config) == (32, 37)
  config.data.scale = (32, 48)
  assert evaluate.resolve_scales("table4", config) == (32, 40, 48)
  config.data.update(scale=(256, 256), crop=224)
  assert evaluate.resolve_scales("table4", config) == (224, 256, 288)
  assert evaluate.resolve_scales("24,32", config) == (24, 32)


def test_launch_eval(run):
  out = subprocess.run(
    [
      sys.executable,
      "launch.py",
      "eval",
      f"--workdir={run[0]}",
      "--protocol=single",
      "--eval_split=test[:10]",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| A | 32 | 32 | single |" in out.stdout
  assert os.path.exists(os.path.join(run[0], "eval", "test_10_single_Q32.json"))


def test_two_processes_evaluate_as_one(tmp_path):
  """`launch.py eval` as two real processes on 127.0.0.1 (2 CPU devices each, gloo):
  shares of 101 and 100 images in chunks of 25, so process 0 runs a fifth chunk of one
  image while process 1 runs an empty one. The JSON equals one process's evaluation."""
  workdir = str(tmp_path)
  config = tiny_config(steps=2)
  config.mesh = (("data", -1), ("model", 1))  # restores onto any job's devices
  train.train_and_evaluate(config, workdir)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  port = free_port()
  workers = [
    subprocess.Popen(
      [
        sys.executable,
        "launch.py",
        "eval",
        f"--workdir={workdir}",
        "--eval_chunk=25",
        "--scales=32,37",
        "--eval_split=test[:201]",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      env=env,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  assert "201 test[:201] images" in [finish(w, timeout=120) for w in workers][0]
  with open(os.path.join(workdir, "eval", "test_201_dense_Q32-37.json")) as f:
    two = json.load(f)
  one = evaluate.evaluate([evaluate.load_trained(workdir)], "dense", "32,37", split="test[:201]")
  keys = ("count", "top1_hits", "top5_hits", "compilations")
  assert {k: two[k] for k in keys} == {k: one[k] for k in keys}
  assert one["count"] == 201


def test_refuses_an_unknown_protocol_and_scales_below_the_crop():
  runner = evaluate.Runner(built(), batch_size=8)
  image = [np.zeros((28, 28, 1), np.uint8)]
  with pytest.raises(ValueError, match="unknown protocol 'tencrop'"):
    runner.predict(image, "tencrop", [32])
  with pytest.raises(ValueError, match="at least the crop 32"):
    runner.predict(image, "dense", [24, 32])


def test_evaluates_and_warm_starts_after_the_optimisers_state_changes_shape(run, trained, tmp_path):
  """The run was trained with momentum (a trace in its optimiser's state); its config
  now says none, so a training program's state has another shape. Evaluation and a
  warm start read only the weights, and get the trained ones."""
  workdir = tmp_path / "run"
  shutil.copytree(run[0], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["optim"]["momentum"] = 0.0
  (workdir / "config.json").write_text(json.dumps(saved))
  config = tiny_config()
  config.optim.momentum = 0.0
  config.warm_start.update(workdir=str(workdir), layers="all")
  program = train.build_program(config, sharding.make_mesh(config.mesh), 10, 1)
  with_momentum = train.build_program(tiny_config(), sharding.make_mesh(config.mesh), 10, 1)
  assert len(jax.tree.leaves(program.abstract_state["opt_state"])) < len(
    jax.tree.leaves(with_momentum.abstract_state["opt_state"])
  )
  loaded = evaluate.load_trained(str(workdir))
  state = program.init()
  train.warm_start(state, program.model, config.warm_start)
  assert loaded.step == trained.step
  for params in (loaded.params, state["params"]):
    for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(trained.params)):
      np.testing.assert_array_equal(ours, theirs)
