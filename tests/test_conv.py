"""The convolution lowerings (VGGConfig.conv): the same network, the same numbers.

"gemm" and "auto" against XLA's convolution and a float64 reference for all six
configurations; a checkpoint trained with one lowering evaluated with another; the rule
applied in the CPU's optimised HLO; other platforms keep XLA's convolutions.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import export, lax

import vgg_jax
from conftest import needs_fashion_mnist, tiny_config
from vgg_jax import conv, evaluate, train
from vgg_jax.model import VGG, VGGConfig, conv_lowerings

# At 1/8 width and 32 px the last stage has 64 channels on 2x2 maps: "auto" takes the
# matmul there on a CPU and XLA's convolution everywhere else.
SMALL = dict(num_classes=10, width=1 / 8, image_size=32, init="glorot")
# The equality tests compile unoptimised (the same maths, compiled in a fraction of the
# time); the HLO test compiles as training does.
QUICK_COMPILE = train.INIT_COMPILER_OPTIONS["cpu"]


def images(n=4, size=32, channels=3):
  return jnp.asarray(np.random.default_rng(0).normal(0, 60, (n, size, size, channels)), jnp.float32)


def loss_and_grads(cfg: VGGConfig, params, rest, x):
  """Cross-entropy of the eval-mode logits of the network `cfg` with these arrays, and
  its gradient for every parameter."""
  graphdef = nnx.split(nnx.eval_shape(lambda: VGG(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)[0]
  labels = jnp.arange(x.shape[0]) % cfg.num_classes

  def loss(params):
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  step = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=QUICK_COMPILE)
  (_, logits), grads = step(params)
  return logits, jax.tree.leaves(grads)


def relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


@pytest.mark.parametrize("name", vgg_jax.TABLE1)
def test_every_lowering_gives_xlas_logits_and_gradients(name):
  cfg = VGGConfig(name=name, **SMALL)
  _, params, rest = nnx.split(VGG(cfg, rngs=nnx.Rngs(1)), nnx.Param, ...)
  x = images()
  results = {
    lowering: loss_and_grads(dataclasses.replace(cfg, conv=lowering), params, rest, x)
    for lowering in conv.LOWERINGS
  }
  with jax.enable_x64(True):
    cfg64 = dataclasses.replace(cfg, dtype=jnp.float64, param_dtype=jnp.float64, conv="xla")
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    reference = loss_and_grads(cfg64, params64, rest, x.astype(jnp.float64))
  for lowering, (logits, grads) in results.items():
    assert relative_error(logits, reference[0]) < 1e-5, lowering
    for got, want in zip(grads, reference[1]):
      assert got.shape == want.shape
      assert relative_error(got, want) < 1e-4, lowering
    if lowering != "xla":
      assert relative_error(logits, results["xla"][0]) < 1e-5, lowering
      for got, want in zip(grads, results["xla"][1]):
        assert relative_error(got, want) < 1e-4, lowering


@pytest.mark.parametrize(
  "options", [dict(name="D", batch_norm=True), dict(name="B", dtype=jnp.bfloat16)]
)
def test_batch_norm_bf16_features_and_dense_heads_agree_across_lowerings(options):
  base = VGGConfig(**dict(SMALL, **options))
  params = nnx.split(VGG(base, rngs=nnx.Rngs(2)), nnx.Param, nnx.BatchStat)
  tolerance = 2e-2 if base.dtype == jnp.bfloat16 else 1e-5
  outputs = {}
  for lowering in ("xla", "gemm"):
    model = nnx.merge(model_graphdef(dataclasses.replace(base, conv=lowering)), *params[1:])
    model.eval()
    outputs[lowering] = (
      model(images(2, 64), dense=True),  # fc6 a 1x1 convolution over 2x2 maps
      model.features(images(2, 48), ("relu5_2",))["relu5_2"],
    )
  for got, want in zip(outputs["gemm"], outputs["xla"]):
    assert relative_error(got.astype(jnp.float32), want.astype(jnp.float32)) < tolerance


def model_graphdef(cfg):
  return nnx.split(nnx.eval_shape(lambda: VGG(cfg, rngs=nnx.Rngs(0))), nnx.Param, nnx.BatchStat)[0]


def test_the_cpu_rule_takes_the_matmul_on_tiny_maps_with_many_channels():
  prefers = conv.cpu_prefers_matmul
  assert prefers((32, 2, 2, 512), (3, 3, 512, 512))
  assert prefers((8, 1, 1, 64), (3, 3, 64, 64))
  assert not prefers((32, 2, 2, 32), (3, 3, 32, 32))  # few channels
  assert not prefers((32, 4, 4, 512), (3, 3, 512, 512))  # a larger map
  assert not prefers((32, 2, 2, 512), (1, 1, 512, 512))  # a 1x1 kernel
  shape = ((32, 2, 2, 512), (3, 3, 512, 512))
  assert conv.choose("auto", "cpu", *shape) == "gemm"
  for platform in ("gpu", "cuda", "rocm", "tpu"):
    assert conv.choose("auto", platform, *shape) == "xla"
  assert conv.choose("gemm", "tpu", *shape) == "gemm"  # asked for, not chosen


def test_conv_lowerings_name_each_layer():
  model = nnx.eval_shape(lambda: vgg_jax.create_model("A", **SMALL))
  chosen = conv_lowerings(model, (8, 32, 32, 3), platform="cpu")
  assert [n for n, how in chosen.items() if how == "gemm"] == ["conv5_1", "conv5_2"]
  assert set(conv_lowerings(model, (8, 32, 32, 3), platform="tpu").values()) == {"xla"}
  assert set(conv_lowerings(model, (8, 224, 224, 3), platform="cpu").values()) == {"xla"}
  assert "fc6" in conv_lowerings(model, (8, 64, 64, 3), dense=True, platform="cpu")


def forward(model):
  graphdef, state = nnx.split(model)

  def apply(state, x):
    net = nnx.merge(graphdef, state)
    net.eval()
    return net(x)

  return jax.jit(apply), state


def test_the_optimised_cpu_program_has_a_dot_where_the_rule_chose_the_matmul():
  x = images(8)
  counts = {}
  for lowering in ("xla", "auto"):
    model = vgg_jax.create_model("A", conv=lowering, **SMALL)
    fn, state = forward(model)
    hlo = fn.lower(state, x).compile().as_text()
    counts[lowering] = (hlo.count(" convolution("), hlo.count(" dot("))
  model = vgg_jax.create_model("A", **SMALL)
  gemm = sum(how == "gemm" for how in conv_lowerings(model, x.shape, platform="cpu").values())
  assert gemm == 2
  assert counts["auto"][0] == counts["xla"][0] - gemm
  assert counts["auto"][1] == counts["xla"][1] + gemm


def test_other_platforms_keep_xlas_convolutions():
  """Lowered for a GPU or a TPU (from this CPU machine), "auto" is XLA's convolution in
  every layer; lowered for the CPU, two of A's eight are matmuls."""
  model = vgg_jax.create_model("A", **SMALL)
  fn, state = forward(model)
  x = images(8)
  for platform, convolutions in (("cuda", 8), ("tpu", 8), ("cpu", 6)):
    text = export.export(fn, platforms=[platform])(state, x).mlir_module()
    assert text.count("stablehlo.convolution") == convolutions, platform


def test_the_matmul_form_refuses_what_it_does_not_compute():
  x, w = images(1, 8, 4), jnp.ones((3, 3, 4, 4))
  dims = lax.conv_dimension_numbers(x.shape, w.shape, conv.NHWC)
  with pytest.raises(ValueError, match="stride-1"):
    conv.conv_as_matmul(x, w, (2, 2), "SAME", dimension_numbers=dims)
  with pytest.raises(ValueError, match="dilated"):
    conv.conv_as_matmul(x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=dims)
  with pytest.raises(ValueError, match="unknown conv"):
    VGGConfig(conv="im2col")


@needs_fashion_mnist
def test_a_checkpoint_trained_with_one_lowering_evaluates_alike_with_another(tmp_path, capsys):
  config = tiny_config(steps=2)
  config.model.update(width=1 / 8, conv="gemm")
  train.train_and_evaluate(config, str(tmp_path))
  assert "convolutions: one matmul in conv1_1, conv2_1," in "".join(capsys.readouterr())
  trained = evaluate.load_trained(str(tmp_path))
  assert trained.model.conv == "gemm"
  as_xla = dataclasses.replace(trained, model=dataclasses.replace(trained.model, conv="xla"))
  batch = np.asarray(images(16, 32, 1))
  np.testing.assert_allclose(
    evaluate.Runner(as_xla, batch_size=16).logits(batch, dense=False),
    evaluate.Runner(trained, batch_size=16).logits(batch, dense=False),
    rtol=1e-5,
    atol=1e-5,
  )
  results = [evaluate.evaluate([t], "dense", split="test[:200]") for t in (trained, as_xla)]
  assert results[0]["top1_err"] == results[1]["top1_err"]
  assert results[0]["top5_err"] == results[1]["top5_err"]
