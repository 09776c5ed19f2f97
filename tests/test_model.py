"""The six networks against the paper: structure, counts, LRN, the two classifier uses."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vgg_jax
from conftest import needs_fashion_mnist
from vgg_jax import architectures, data, paper
from vgg_jax import model as model_lib

# The paper's parameter counts and the published multiply-adds (vgg_jax/paper.py, checked
# against docs/paper.md by test_paper.py); C's multiply-adds are our own count, so not here.
FULL_SIZE_PARAMS = paper.EXACT_PARAMS
GMACS_224 = {name: g for name, g in paper.GMACS_224.items() if name != "C"}

# Table 1 read column by column: the weight layers and LRN of each net, in order.
TABLE1_COLUMNS = {
  "A": "conv3-64 | conv3-128 | 2x conv3-256 | 2x conv3-512 | 2x conv3-512",
  "A-LRN": "conv3-64, LRN | conv3-128 | 2x conv3-256 | 2x conv3-512 | 2x conv3-512",
  "B": "2x conv3-64 | 2x conv3-128 | 2x conv3-256 | 2x conv3-512 | 2x conv3-512",
  "C": "2x conv3-64 | 2x conv3-128 | 2x conv3-256, conv1-256 | 2x conv3-512, conv1-512"
  " | 2x conv3-512, conv1-512",
  "D": "2x conv3-64 | 2x conv3-128 | 3x conv3-256 | 3x conv3-512 | 3x conv3-512",
  "E": "2x conv3-64 | 2x conv3-128 | 4x conv3-256 | 4x conv3-512 | 4x conv3-512",
}
DEPTHS = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}


def small(name="D", **kw):
  kw = dict(num_classes=10, width=1 / 16, image_size=32, init="he", rngs=nnx.Rngs(0)) | kw
  return vgg_jax.create_model(name, **kw)


def expand(column: str) -> list[tuple[str, ...]]:
  stages = []
  for stage in column.split(" | "):
    layers = []
    for item in stage.split(", "):
      count, _, layer = item.rpartition("x ")
      layers += [layer] * int(count or 1)
    stages.append(tuple(layers))
  return stages


@pytest.mark.parametrize("name", list(FULL_SIZE_PARAMS))
def test_table1_as_data(name):
  assert list(vgg_jax.TABLE1[name]) == expand(TABLE1_COLUMNS[name])
  assert architectures.weight_layers(name) == DEPTHS[name]


@pytest.mark.parametrize("name", list(FULL_SIZE_PARAMS))
def test_exact_parameter_count_at_224(name):
  model = nnx.eval_shape(lambda: vgg_jax.create_model(name))
  assert vgg_jax.count_params(model) == FULL_SIZE_PARAMS[name]


@pytest.mark.parametrize("name", list(GMACS_224))
def test_multiply_adds_at_224(name):
  model = nnx.eval_shape(lambda: vgg_jax.create_model(name))
  assert vgg_jax.count_macs(model, 224) / 1e9 == pytest.approx(GMACS_224[name], rel=5e-3)


def test_macs_shape_walk_agrees_with_xla_cost_analysis():
  """XLA counts no multiply by SAME padding's zeros, so its count is a little lower
  (3% for D at 224, from 3x3 borders); with padding counted, as torchvision's peers do,
  the walk must be an upper bound close to it."""
  model = nnx.eval_shape(lambda: vgg_jax.create_model("D"))
  graphdef, state = nnx.split(model)

  def forward(state, x):
    net = nnx.merge(graphdef, state)
    net.eval()
    return net(x)

  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  xla_macs = jax.jit(forward).lower(state, image).cost_analysis()["flops"] / 2
  assert 0.95 < xla_macs / vgg_jax.count_macs(model, 224) < 1.0


def test_dense_macs_grow_with_the_score_map():
  model = nnx.eval_shape(lambda: vgg_jax.create_model("D"))
  at_224, at_256 = vgg_jax.count_macs(model, 224), vgg_jax.count_macs(model, 256)
  head = 7 * 7 * 512 * 4096 + 4096 * 4096 + 4096 * 1000
  conv_224 = at_224 - head
  # 256 -> 8x8 final map, 2x2 score map; convs scale with the pixel count.
  assert at_256 == round(conv_224 * (256 / 224) ** 2) + 4 * head


def test_layer_order_follows_the_table():
  model = small("A-LRN")
  assert model.plan[:4] == ("conv1_1", "relu1_1", "lrn1", "pool1")
  c = small("C")
  assert c.conv3_3.kernel.shape[:2] == (1, 1) and c.conv3_3.padding == "VALID"
  assert c.conv3_2.kernel.shape[:2] == (3, 3) and c.conv3_2.padding == "SAME"
  convs = [n for n in c.plan if n.startswith("conv")]
  assert convs == [
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
  ]
  assert [n for n in c.plan if n.startswith("pool")] == [f"pool{s}" for s in range(1, 6)]
  assert c.plan[-7:] == ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8")


def test_one_by_one_conv_keeps_the_spatial_size():
  model = small("C")
  model.eval()
  shapes = model.features(jnp.ones((1, 64, 64, 3)), ("relu3_2", "relu3_3"))
  assert shapes["relu3_2"].shape[1:3] == shapes["relu3_3"].shape[1:3] == (16, 16)


def numpy_lrn(a, k, n, alpha, beta, alpha_over_n):
  """Direct transcription of the formula: b_c = a_c / (k + alpha * sum a^2)^beta over
  channels max(0, c - n//2) .. min(C-1, c + n//2)."""
  out = np.empty_like(a)
  channels = a.shape[-1]
  scale = alpha / n if alpha_over_n else alpha
  for c in range(channels):
    lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
    total = (a[..., lo : hi + 1] ** 2).sum(-1)
    out[..., c] = a[..., c] / (k + scale * total) ** beta
  return out


@pytest.mark.parametrize("alpha_over_n", [False, True])
def test_lrn_against_numpy(alpha_over_n):
  rng = np.random.default_rng(0)
  # Large activations so the alpha term matters (the two formulas then differ).
  a = rng.normal(0, 30, (2, 3, 4, 11)).astype(np.float32)
  cfg = vgg_jax.LRNConfig(alpha_over_n=alpha_over_n)
  got = np.asarray(vgg_jax.local_response_norm(jnp.asarray(a), cfg))
  np.testing.assert_allclose(got, numpy_lrn(a, 2.0, 5, 1e-4, 0.75, alpha_over_n), rtol=1e-5)
  other = vgg_jax.LRNConfig(alpha_over_n=not alpha_over_n)
  assert not np.allclose(got, vgg_jax.local_response_norm(jnp.asarray(a), other), rtol=1e-3)


def test_lrn_default_is_alexnet_formula_after_first_relu():
  model = small("A-LRN", lrn=vgg_jax.LRNConfig())
  assert model.cfg.lrn == vgg_jax.LRNConfig(k=2.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=False)
  model.eval()
  x = jax.random.normal(jax.random.key(1), (1, 32, 32, 3)) * 50
  acts = model.features(x, ("relu1_1", "lrn1"))
  expected = numpy_lrn(np.asarray(acts["relu1_1"]), 2.0, 5, 1e-4, 0.75, False)
  np.testing.assert_allclose(np.asarray(acts["lrn1"]), expected, rtol=1e-5)


@pytest.mark.parametrize("image_size", [32, 96])
def test_fc_mode_equals_conv_mode_at_training_size(image_size):
  """At 96 the head kernel is 3x3, so the FC flatten order is really exercised."""
  model = small("B", image_size=image_size)
  model.eval()
  x = jax.random.normal(jax.random.key(0), (3, image_size, image_size, 3))
  fc, dense = model(x), model(x, dense=True)
  scale = float(jnp.abs(fc).max())
  assert scale > 1e-3
  np.testing.assert_allclose(fc, dense, rtol=1e-5, atol=1e-6 * scale)  # summation order


def test_dense_mode_averages_the_class_score_map():
  """On a 160x128 input with training size 64 (K=2), the final map is 5x4, so the
  score map is 4x3: each score is the FC head on one 2x2 window of pool5."""
  model = small("A", image_size=64)
  model.eval()
  x = jax.random.normal(jax.random.key(2), (2, 160, 128, 3))
  pool5 = model.features(x, ("pool5",))["pool5"]
  assert pool5.shape[1:3] == (5, 4)

  def head(window):  # the FC head applied to one KxK window
    h = jax.nn.relu(
      window.reshape(len(window), -1) @ model.fc6.kernel[...].reshape(-1, model.cfg.hidden)
      + model.fc6.bias[...]
    )
    h = jax.nn.relu(model.fc7(h))
    return model.fc8(h)

  scores = [head(pool5[:, i : i + 2, j : j + 2]) for i in range(4) for j in range(3)]
  np.testing.assert_allclose(model(x, dense=True), np.mean(scores, axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jit_forward_in_fp32_and_bf16(dtype):
  model = small("D", dtype=dtype, width=1 / 8)
  reference = small("D", width=1 / 8)
  model.eval(), reference.eval()
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  logits = nnx.jit(lambda m, x: m(x))(model, x)
  assert logits.dtype == jnp.float32 and logits.shape == (4, 10)
  want = reference(x)
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
  assert float(jnp.abs(logits - want).max() / jnp.abs(want).max()) < tolerance


def test_batch_norm_in_train_and_eval_mode():
  model = small("A", batch_norm=True)
  x = jax.random.normal(jax.random.key(4), (8, 32, 32, 3)) * 3 + 1

  @nnx.jit
  def train_forward(model, x, key):
    return model(x, rngs=nnx.Rngs(dropout=key))

  before = model.bn1_1.mean[...].copy()
  train_forward(model, x, jax.random.key(0))
  assert not np.allclose(model.bn1_1.mean[...], before)  # running stats moved
  conv = model.features(x, ("conv1_1",))["conv1_1"]
  np.testing.assert_allclose(model.bn1_1.mean[...], 0.1 * conv.mean((0, 1, 2)), rtol=1e-4)
  model.eval()
  frozen = model.bn1_1.mean[...].copy()
  first, second = model(x), model(x[:1])
  np.testing.assert_allclose(first[:1], second, rtol=1e-4, atol=1e-5)  # no batch coupling
  np.testing.assert_array_equal(model.bn1_1.mean[...], frozen)


def test_dropout_needs_a_key_in_train_mode_and_uses_it():
  model = small("A")
  x = jnp.ones((2, 32, 32, 3))
  with pytest.raises(ValueError, match="rngs"):
    model(x)
  a = model(x, rngs=nnx.Rngs(dropout=0))
  b = model(x, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(a, b)
  model.eval()
  np.testing.assert_array_equal(model(x), model(x))


def test_same_seed_same_network_other_seed_other_network():
  x = jax.random.normal(jax.random.key(5), (2, 32, 32, 3))
  a, b, c = (small("C", rngs=nnx.Rngs(s)) for s in (7, 7, 8))
  for m in (a, b, c):
    m.eval()
  np.testing.assert_array_equal(a(x), b(x))
  assert not np.allclose(a(x), c(x))


@pytest.mark.parametrize(
  "init,std",
  [
    ("paper", lambda fan_in, fan_out: 1e-2),
    ("glorot", lambda fan_in, fan_out: np.sqrt(2 / (fan_in + fan_out))),
    ("he", lambda fan_in, fan_out: np.sqrt(2 / fan_in)),
  ],
)
def test_initialisations(init, std):
  model = vgg_jax.create_model("A", num_classes=10, width=0.5, image_size=32, init=init)
  kernel = np.asarray(model.conv4_1.kernel[...])  # 3x3x128x256
  fan_in, fan_out = 9 * kernel.shape[2], 9 * kernel.shape[3]
  assert kernel.std() == pytest.approx(std(fan_in, fan_out), rel=0.05)
  assert abs(kernel.mean()) < 0.05 * kernel.std()
  assert not np.asarray(model.conv4_1.bias[...]).any()
  assert not np.asarray(model.fc7.bias[...]).any()


def kernels(init: str, **kw) -> dict[str, np.ndarray]:
  model = vgg_jax.create_model(
    "A",
    num_classes=10,
    width=1 / 8,
    image_size=32,
    init=init,
    in_channels=1,
    rngs=nnx.Rngs(3),
    **kw,
  )
  return {
    name: np.asarray(getattr(model, name).kernel[...])
    for name in model_lib.weight_layer_names(model)
  }


@pytest.mark.parametrize("init", ["paper", "glorot", "he"])
def test_only_he_scales_the_first_conv_by_the_input_std(init):
  """input_std 90 (raw pixels): "he" divides conv1_1's draw by 90, the same draw, and
  leaves every other layer; "paper" and "glorot" ignore it bit for bit."""
  unit, raw = kernels(init), kernels(init, input_std=90.0)
  for name in unit:
    if init == "he" and name == model_lib.FIRST_CONV:
      np.testing.assert_allclose(raw[name], unit[name] / 90.0, rtol=1e-5)
    else:
      np.testing.assert_array_equal(raw[name], unit[name])


def test_he_draws_the_fc_layers_as_torchvision_does():
  fc = kernels("he")
  for name in ("fc6", "fc7", "fc8"):
    assert fc[name].std() == pytest.approx(0.01, rel=0.1)


@needs_fashion_mnist
def test_network_config_reads_the_pixels_std_for_he_only():
  """The std comes from the data statistics and is the training pixels' own."""
  from vgg_jax import config as config_lib

  images, _ = data.load_idx_numpy("", "train")
  for init, want in (("he", images.std(dtype=np.float64)), ("glorot", 1.0), ("paper", 1.0)):
    config = config_lib.experiment_config("fashion_mnist", f"init={init}")
    cfg = config_lib.network_config(config, num_classes=10, in_channels=1)
    assert cfg.input_std == pytest.approx(want, rel=1e-3)
  with pytest.raises(ValueError, match="input_std"):
    model_lib.VGGConfig(input_std=0.0)


def test_paper_init_std_is_an_option():
  model = vgg_jax.create_model("A", num_classes=10, width=0.5, image_size=32, init_std=0.1)
  assert np.asarray(model.conv4_1.kernel[...]).std() == pytest.approx(0.1, rel=0.05)


def test_width_and_fc_width():
  model = small("E", width=0.25, fc_width=64)
  assert model.conv1_1.kernel.shape == (3, 3, 3, 16)
  assert model.conv5_4.kernel.shape == (3, 3, 128, 128)
  assert model.fc6.kernel.shape == (1, 1, 128, 64)
  assert model.fc8.kernel.shape == (64, 10)
  assert small("E", width=0.25).fc7.kernel.shape == (1024, 1024)


def test_aliases_resolve_to_table_names():
  assert {"A", "A-LRN", "B", "C", "D", "E", "vgg16", "vgg19"} <= set(vgg_jax.CONFIG_NAMES)
  assert small("vgg16").cfg.name == "D" and small("a-lrn").cfg.name == "A-LRN"


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (dict(name="F"), "unknown VGG configuration 'F'.*A, A-LRN, B, C, D, E"),
    (dict(name="D", width=-0.5), "width must be positive"),
    (dict(name="D", image_size=16), "at least 32x32"),
    (dict(name="D", init="orthogonal"), "unknown init"),
  ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
  name = kwargs.pop("name")
  with pytest.raises(ValueError, match=message):
    vgg_jax.create_model(name, **kwargs)


def test_bad_inputs_are_clear_errors():
  model = small("D", image_size=64)
  model.eval()
  with pytest.raises(ValueError, match="at least 32x32"):
    model(jnp.ones((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="2x2 final feature map.*dense=True"):
    model(jnp.ones((1, 96, 96, 3)))
  with pytest.raises(ValueError, match="at least the training size 64x64"):
    model(jnp.ones((1, 32, 48, 3)), dense=True)
  with pytest.raises(ValueError, match="3 channels"):
    model(jnp.ones((1, 64, 64, 1)))
  with pytest.raises(ValueError, match="unknown layers"):
    model.features(jnp.ones((1, 64, 64, 3)), ("relu9_9",))


def test_default_features_are_each_stage_s_last_relu():
  assert small("A").stage_outputs() == ("relu1_1", "relu2_1", "relu3_2", "relu4_2", "relu5_2")
  assert small("A-LRN").stage_outputs()[0] == "lrn1"
  assert small("E").stage_outputs()[-1] == "relu5_4"


def test_features_at_any_size_without_the_classifier():
  model = small("D")
  model.eval()
  feats = nnx.jit(lambda m, x: m.features(x))(model, jnp.ones((2, 100, 70, 3)))
  assert feats["relu1_2"].shape == (2, 100, 70, 4)
  assert feats["relu5_3"].shape == (2, 6, 4, 32)


# ---------------------------------------------------------------- levers of the step


def loss_and_grads(model, x, labels):
  """The train step's loss and parameter gradients (dropout off, so runs compare)."""
  graphdef, params = nnx.split(model, nnx.Param)

  def loss_fn(params):
    net = nnx.merge(graphdef, params)
    net.eval()
    logits = net(x)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

  return jax.value_and_grad(loss_fn), params


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_reshape_pool_equals_reduce_window(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_array_equal(model_lib.max_pool_reshape(x), model_lib.max_pool(x))


@pytest.mark.parametrize(
  "options",
  [dict(pool="reshape"), dict(relu_grad="output"), dict(pool="reshape", relu_grad="output")],
)
def test_levers_give_today_s_loss_and_gradients(options):
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  labels = jnp.arange(4) % 10
  results = []
  for kw in ({}, options):
    grad_fn, params = loss_and_grads(small("D", **kw), x, labels)
    results.append(jax.jit(grad_fn)(params))
  (loss, grads), (lever_loss, lever_grads) = results
  np.testing.assert_allclose(lever_loss, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(lever_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def step_hlo(**kw) -> str:
  """The (unoptimised) HLO of the gradient computation: what every backend starts from."""
  grad_fn, params = loss_and_grads(
    small("A", **kw), jnp.ones((2, 32, 32, 3)), jnp.zeros((2,), jnp.int32)
  )
  return jax.jit(grad_fn).lower(params).as_text(dialect="hlo")


def test_reshape_pool_leaves_no_select_and_scatter():
  assert "select-and-scatter" in step_hlo(pool="reduce_window")
  assert "select-and-scatter" not in step_hlo()  # the default


def relu_input_users(relu_grad: str) -> list[int]:
  """For each conv ReLU of A's gradient computation (jax.nn.relu stays a custom_jvp call,
  ours is inlined as its max), how many equations use its input, the conv + bias output."""
  grad_fn, params = loss_and_grads(
    small("A", relu_grad=relu_grad), jnp.ones((2, 32, 32, 3)), jnp.zeros((2,), jnp.int32)
  )
  eqns = jax.make_jaxpr(grad_fn)(params).jaxpr.eqns
  users = collections.Counter(v for e in eqns for v in e.invars if not hasattr(v, "val"))
  return [
    users[e.invars[0]]
    for e in eqns
    if e.primitive.name in ("custom_jvp_call", "max") and e.invars[0].aval.ndim == 4
  ]


def test_relu_grad_from_output_leaves_the_conv_output_one_user():
  assert relu_input_users("output") == [1] * 8  # A's eight convolutions
  assert relu_input_users("input") == [2] * 8  # the ReLU and its gradient's x > 0


def bf16_step() -> tuple:
  """The trainer's step for A at 1/16 width in bf16 (fp32 parameters), its state, a batch."""
  from benchmarks import throughput
  from vgg_jax import sharding, train

  config = throughput.bench_config("A", batch=2, resolution=32, dtype="bfloat16", width=1 / 16)
  program = train.build_program(
    config, sharding.make_mesh(config.mesh), throughput.NUM_CLASSES, throughput.CHANNELS
  )
  return program, program.init(), throughput.random_batch(program.batch_sharding, 2, 32)


def test_bf16_weights_are_cast_once_per_step():
  """Each fp32 parameter is converted to bf16 once in the step (the backward pass reuses
  the cast, the optimiser works on fp32): counted in the step's HLO, through reshapes."""
  program, state, batch = bf16_step()
  hlo = program.step.lower(state, batch).as_text(dialect="hlo")
  defined = dict(re.findall(r"^\s*(\S+) = \S+ reshape\((\S+)\)", hlo, re.M))
  casts = collections.Counter()
  for operand in re.findall(r"= bf16\[[\d,]*\]\S* convert\((\S+)\)", hlo):
    operand = defined.get(operand, operand)
    match = re.match(r"state__params____(\w+?)____(kernel|bias)", operand)
    if match:
      casts[match.groups()] += 1
  layers = state["params"]
  assert sorted(casts) == sorted((name, kind) for name in layers for kind in layers[name])
  assert set(casts.values()) == {1}


def test_the_step_donates_the_state():
  program, state, batch = bf16_step()
  leaves = jax.tree.leaves(state)
  program.step(state, batch)
  assert all(leaf.is_deleted() for leaf in leaves)  # updated in place, not copied


def test_unknown_lever_values_are_errors():
  with pytest.raises(ValueError, match="unknown pool"):
    model_lib.VGGConfig(pool="avg")
  with pytest.raises(ValueError, match="unknown relu_grad"):
    model_lib.VGGConfig(relu_grad="leaky")
