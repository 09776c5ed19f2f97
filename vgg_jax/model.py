"""VGG in Flax NNX: one module for all six configurations of Table 1.

Layers are named as in the released Caffe models and the literature that uses them
(conv1_1 ... conv5_4, pool1 ... pool5, fc6, fc7, fc8; C's 1x1 conv is the third conv
of its stage, e.g. conv3_3), so parameter paths read `conv3_3/kernel`, `fc6/kernel`.
Those paths are what sharding rules and weight import match on.

The classifier is stored once. FC1 (`fc6`) keeps its kernel as a KxK convolution
kernel, K = image_size // 32 (7 at 224, 1 at 32), laid out (K, K, C, F), so:
  * FC mode (`dense=False`, the training crop): flatten the KxK map in HWC order and
    multiply by the same kernel reshaped to (K*K*C, F);
  * dense mode (`dense=True`, Section 3.2): run fc6 as a VALID KxK conv and fc7/fc8 as
    1x1 convs over any input at least the training size, then average the class-score
    map spatially.
On the training size both give the same logits.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from vgg_jax import architectures
from vgg_jax import conv as conv_lib

POOLS = 5  # one 2x2 stride-2 max-pool per stage
HEAD = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8")


@dataclasses.dataclass(frozen=True)
class LRNConfig:
  """Local response normalisation across channels (AlexNet, Section 3.3 there).

  b_c = a_c / (k + alpha' * sum_{|c'-c| <= n//2} a_{c'}^2) ** beta, where
  alpha' = alpha / n when `alpha_over_n` (Caffe, PyTorch) and alpha' = alpha otherwise
  (AlexNet's formula, TensorFlow's `local_response_normalization`). The paper uses
  AlexNet's constants; which formula it meant is not stated, so we default to AlexNet's.
  """

  k: float = 2.0
  n: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  alpha_over_n: bool = False


@dataclasses.dataclass(frozen=True)
class VGGConfig:
  """Everything that defines a network; `create_model` builds one from it.

  name: a Table 1 configuration or alias (see `architectures.CONFIG_NAMES`).
  width: multiplies every conv width (and the FC width unless `fc_width` is given);
    0.125 gives CPU-sized nets.
  fc_width: hidden width of fc6/fc7; default 4096 * width.
  image_size: the training crop. It fixes fc6's kernel size K = image_size // 32, the
    only place where the input size enters the parameters.
  init: "paper" draws weights from N(0, init_std^2). The paper says "variance 1e-2",
    but reimplementations (and the released training code's practice) use standard
    deviation 1e-2, so init_std defaults to 1e-2; set init_std=0.1 for the literal
    reading. "glorot" is Glorot & Bengio's uniform init (the paper's note that it works
    without pre-training). "he" is torchvision's VGG init (the reference "He init for
    VGG"): convs from He et al. (2015)'s normal, variance 2 / fan_in (truncated at 2 sd),
    fc6-fc8 from N(0, 0.01); and, as He et al. derive the first layer separately
    (n_1 Var[w_1] E[x^2] = 1, their factor 2 kept), the first conv's variance is also
    divided by input_std^2: the paper's input is raw 0-255 pixels minus the mean
    (std ~90 for Fashion-MNIST), not the unit-variance input torchvision normalises to.
    Without the FC part the logits start O(1) and the first layer's update, which grows
    with the input (90x) while its weights shrink (1/90x), diverges at LR 1e-2; without
    the first-layer part the conv features start ~90x too large. Biases start at zero.
  input_std: the input pixels' standard deviation; only "he" uses it (a run's config
    takes it from the data statistics: `vgg_jax.config.network_config`). "paper" and
    "glorot" keep their fixed scales.
  batch_norm: conv-BN-ReLU in every conv layer, as torchvision's vgg*_bn (not in the
    paper).
  dtype / param_dtype: compute and storage dtypes (bf16 compute, fp32 parameters).
  pool: how the 2x2 max-pools are computed, same values either way: "reshape" (a max
    over the reshaped 2x2 windows; its gradient is a compare and a select) or
    "reduce_window" (XLA's reduce-window; its gradient is a select-and-scatter, emitted
    with atomics on GPUs). Ties split the gradient there (the reshape) or give it to one
    input. "reshape" is the default: D's train step ran 1.20x faster with it on an H200
    (docs/gpu.md); on a CPU the two were within noise.
  relu_grad: where ReLU's gradient mask comes from: "input" (jax.nn.relu: the
    pre-activation, so each convolution's output has two users) or "output" (y > 0,
    the same mask, so the convolution's output has one user and can fuse with its ReLU).
  conv: how each convolution is lowered, same parameters and values (to float rounding)
    either way: "xla" (XLA's convolution), "gemm" (one matmul over the KxK shifted
    views) or "auto" (per layer by its shape on a CPU, XLA's on GPUs and TPUs; see
    `vgg_jax.conv`). Not in the paper; "auto" is the default.
  """

  name: str = "D"
  num_classes: int = 1000
  width: float = 1.0
  fc_width: int | None = None
  batch_norm: bool = False
  dropout: float = 0.5
  image_size: int = 224
  in_channels: int = 3
  init: str = "paper"
  init_std: float = 1e-2
  input_std: float = 1.0
  lrn: LRNConfig = LRNConfig()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  pool: str = "reshape"
  relu_grad: str = "input"
  conv: str = "auto"

  def __post_init__(self):
    object.__setattr__(self, "name", architectures.canonical_name(self.name))
    if not self.width > 0:
      raise ValueError(f"width must be positive, got {self.width}")
    if self.fc_width is not None and self.fc_width < 1:
      raise ValueError(f"fc_width must be positive, got {self.fc_width}")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be positive, got {self.num_classes}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.image_size < min_input_size():
      raise ValueError(f"image_size {self.image_size} is too small: {too_small_reason()}")
    if self.init not in INITIALIZERS:
      raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITIALIZERS)}")
    if not self.input_std > 0:
      raise ValueError(f"input_std must be positive, got {self.input_std}")
    for field, choices in (("pool", POOLINGS), ("relu_grad", RELUS), ("conv", conv_lib.LOWERINGS)):
      if getattr(self, field) not in choices:
        raise ValueError(
          f"unknown {field} {getattr(self, field)!r}; choose one of {', '.join(choices)}"
        )

  @property
  def head_kernel(self) -> int:
    """K: side of the final feature map at the training size, fc6's kernel size."""
    return self.image_size // 2**POOLS

  @property
  def hidden(self) -> int:
    return self.fc_width or max(1, round(4096 * self.width))

  def channels(self, features: int) -> int:
    return max(1, round(features * self.width))

  def signature(self) -> dict:
    """What weights must agree on to load into this network (not dtypes, dropout or
    init): checkpoints store it and loaders compare it."""
    return dict(
      name=self.name,
      num_classes=self.num_classes,
      width=self.width,
      hidden=self.hidden,
      batch_norm=self.batch_norm,
      image_size=self.image_size,
      in_channels=self.in_channels,
    )

  @classmethod
  def from_signature(cls, signature: dict, **rest) -> "VGGConfig":
    """The network a checkpoint's `signature()` describes; `rest` sets what the
    signature leaves out (dtypes, dropout, init)."""
    fields = {k: v for k, v in signature.items() if k != "hidden"}
    return cls(**fields, fc_width=signature["hidden"], **rest)


def min_input_size() -> int:
  return 2**POOLS


def too_small_reason() -> str:
  return f"VGG needs inputs of at least {min_input_size()}x{min_input_size()} (five 2x2 pools)"


FIRST_CONV = "conv1_1"


def he_init(cfg: "VGGConfig", layer: str) -> Callable:
  """He et al. (2015)'s normal init for the convs, torchvision's N(0, 0.01) for fc6-fc8
  (see VGGConfig.init)."""
  if layer.startswith("fc"):
    return nnx.initializers.normal(0.01)
  first = cfg.input_std**2 if layer == FIRST_CONV else 1.0
  return nnx.initializers.variance_scaling(2.0 / first, "fan_in", "truncated_normal")


# Kernel initialisers by name: (config, layer name) -> initialiser.
INITIALIZERS: dict[str, Callable[[VGGConfig, str], Callable]] = {
  "paper": lambda cfg, layer: nnx.initializers.normal(cfg.init_std),
  "glorot": lambda cfg, layer: nnx.initializers.glorot_uniform(),
  "he": he_init,
}
INPUT_SCALED = ("he",)  # the schemes whose first layer takes the input's std


def local_response_norm(x: jax.Array, cfg: LRNConfig) -> jax.Array:
  """LRN across the last (channel) axis, computed in float32."""
  sq = jnp.square(x.astype(jnp.float32))
  half = cfg.n // 2
  window_sum = jax.lax.reduce_window(
    sq,
    0.0,
    jax.lax.add,
    (1, 1, 1, cfg.n),
    (1, 1, 1, 1),
    ((0, 0), (0, 0), (0, 0), (half, cfg.n - 1 - half)),
  )
  alpha = cfg.alpha / cfg.n if cfg.alpha_over_n else cfg.alpha
  return (x / (cfg.k + alpha * window_sum) ** cfg.beta).astype(x.dtype)


def max_pool(x: jax.Array) -> jax.Array:
  """2x2 stride-2 VALID max-pool by reduce-window."""
  return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def max_pool_reshape(x: jax.Array) -> jax.Array:
  """The same pool as a max over the reshaped 2x2 windows (an odd last row or column
  dropped, as VALID does): its gradient has no select-and-scatter."""
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_jvp
def relu_output_grad(x: jax.Array) -> jax.Array:
  """ReLU whose gradient mask is taken from its output (y > 0, as jax.nn.relu's x > 0),
  so the backward pass keeps y alone and the pre-activation has one user."""
  return jnp.maximum(x, 0)


@relu_output_grad.defjvp
def _relu_output_grad_jvp(primals, tangents):
  y = jnp.maximum(primals[0], 0)
  return y, jnp.where(y > 0, tangents[0], jnp.zeros_like(tangents[0]))


POOLINGS = {"reduce_window": max_pool, "reshape": max_pool_reshape}
RELUS = {"input": nnx.relu, "output": relu_output_grad}


class VGG(nnx.Module):
  """A VGG network; see the module docstring for the two uses of the classifier."""

  def __init__(self, cfg: VGGConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = functools.partial(INITIALIZERS[cfg.init], cfg)
    dense_kwargs = dict(
      bias_init=nnx.initializers.zeros, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs
    )
    plan, channels = [], cfg.in_channels
    for s, stage in enumerate(architectures.stages(cfg.name), start=1):
      convs = 0
      for layer in stage:
        if layer.kind == "lrn":
          plan.append(f"lrn{s}")
          continue
        convs += 1
        name, out = f"conv{s}_{convs}", cfg.channels(layer.features)
        setattr(
          self,
          name,
          nnx.Conv(
            channels,
            out,
            (layer.kernel, layer.kernel),
            padding="SAME" if layer.kernel > 1 else "VALID",
            kernel_init=init(name),
            conv_general_dilated=conv_lib.conv_function(cfg.conv),
            **dense_kwargs,
          ),
        )
        plan.append(name)
        if cfg.batch_norm:
          # momentum 0.9 and eps 1e-5 are torchvision's BN defaults (momentum=0.1 there).
          setattr(
            self,
            f"bn{s}_{convs}",
            nnx.BatchNorm(
              out,
              momentum=0.9,
              epsilon=1e-5,
              dtype=cfg.dtype,
              param_dtype=cfg.param_dtype,
              rngs=rngs,
            ),
          )
          plan.append(f"bn{s}_{convs}")
        plan.append(f"relu{s}_{convs}")
        channels = out
      plan.append(f"pool{s}")
    k = cfg.head_kernel
    self.fc6 = nnx.Conv(  # a convolution in dense mode only
      channels,
      cfg.hidden,
      (k, k),
      padding="VALID",
      kernel_init=init("fc6"),
      conv_general_dilated=conv_lib.conv_function(cfg.conv),
      **dense_kwargs,
    )
    self.fc7 = nnx.Linear(cfg.hidden, cfg.hidden, kernel_init=init("fc7"), **dense_kwargs)
    self.fc8 = nnx.Linear(cfg.hidden, cfg.num_classes, kernel_init=init("fc8"), **dense_kwargs)
    self.drop6 = nnx.Dropout(cfg.dropout)
    self.drop7 = nnx.Dropout(cfg.dropout)
    self.plan = tuple(plan) + HEAD

  def __call__(
    self, x: jax.Array, *, dense: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """Class logits (float32). `dense` runs the head as convolutions and averages the
    class-score map; `rngs` (a `dropout` stream) is needed in train mode."""
    return self.features(x, ("fc8",), dense=dense, rngs=rngs)["fc8"]

  def features(
    self,
    x: jax.Array,
    layers: Iterable[str] | None = None,
    *,
    dense: bool = False,
    rngs: nnx.Rngs | None = None,
  ) -> dict[str, jax.Array]:
    """Activations of the named layers (any of `self.plan`; default: each stage's
    output before its pool, relu1_2 ... relu5_3 for D), computing no further than the last one
    asked for; any input size >= 32 if the classifier is not asked."""
    wanted = set(layers if layers is not None else self.stage_outputs())
    unknown = wanted.difference(self.plan)
    if unknown:
      raise ValueError(
        f"unknown layers {sorted(unknown)} for VGG-{self.cfg.name}; "
        f"its layers are {', '.join(self.plan)}"
      )
    last = max(self.plan.index(name) for name in wanted)
    self._check_input(x, dense=dense, head=last >= self.plan.index("fc6"))
    out = {}
    x = x.astype(self.cfg.dtype)
    for name in self.plan[: last + 1]:
      with jax.named_scope(name):  # names each op in the HLO and in profiles by its layer
        x = self._apply(name, x, dense=dense, rngs=rngs)
      if name in wanted:
        out[name] = x
    if "fc8" in out:
      out["fc8"] = out["fc8"].astype(jnp.float32)
    return out

  def stage_outputs(self) -> tuple[str, ...]:
    """Each stage's last layer before its pool (its last ReLU; A-LRN's LRN in stage
    1): the layers perceptual losses use."""
    return tuple(self.plan[self.plan.index(f"pool{s}") - 1] for s in range(1, POOLS + 1))

  def _apply(self, name: str, x: jax.Array, *, dense: bool, rngs) -> jax.Array:
    kind = name.rstrip("0123456789_")
    if kind == "relu":
      return RELUS[self.cfg.relu_grad](x)
    if kind == "pool":
      return POOLINGS[self.cfg.pool](x)
    if kind == "lrn":
      return local_response_norm(x, self.cfg.lrn)
    if kind == "drop":
      return self._dropout(getattr(self, name), x, rngs)
    if name == "fc6" and not dense:
      return self._fc6_as_matmul(x)
    x = getattr(self, name)(x)
    if name == "fc8" and dense:
      x = x.mean(axis=(1, 2))
    return x

  def _fc6_as_matmul(self, x: jax.Array) -> jax.Array:
    kernel = self.fc6.kernel[...].reshape(-1, self.cfg.hidden).astype(self.cfg.dtype)
    bias = self.fc6.bias[...].astype(self.cfg.dtype)
    return x.reshape(x.shape[0], -1) @ kernel + bias

  def _dropout(self, layer: nnx.Dropout, x: jax.Array, rngs) -> jax.Array:
    if rngs is None and not layer.deterministic and layer.rate > 0:
      raise ValueError(
        "dropout in train mode needs rngs=nnx.Rngs(dropout=key); call model.eval() for inference"
      )
    return layer(x, rngs=rngs)

  def _check_input(self, x: jax.Array, *, dense: bool, head: bool):
    if x.ndim != 4 or x.shape[-1] != self.cfg.in_channels:
      raise ValueError(
        f"expected NHWC images with {self.cfg.in_channels} channels, got shape {tuple(x.shape)}"
      )
    height, width = x.shape[1:3]
    if min(height, width) < min_input_size():
      raise ValueError(f"input {height}x{width} is too small: {too_small_reason()}")
    k, size = self.cfg.head_kernel, self.cfg.image_size
    final = (height // 2**POOLS, width // 2**POOLS)
    if head and dense and min(final) < k:
      raise ValueError(
        f"dense evaluation needs inputs of at least the training size "
        f"{size}x{size}; got {height}x{width}"
      )
    if head and not dense and final != (k, k):
      raise ValueError(
        f"the FC head expects a {k}x{k} final feature map ({size}x{size} "
        f"input); got {height}x{width}: pass dense=True for other sizes"
      )


def create_model(
  name: str,
  *,
  num_classes: int = 1000,
  width: float = 1.0,
  batch_norm: bool = False,
  dropout: float = 0.5,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
  init: str = "paper",
  rngs: nnx.Rngs | None = None,
  **options,
) -> VGG:
  """Builds a VGG of Table 1 (or an alias such as "vgg16"). `options` are the other
  `VGGConfig` fields: fc_width, image_size, in_channels, init_std, lrn."""
  cfg = VGGConfig(
    name=name,
    num_classes=num_classes,
    width=width,
    batch_norm=batch_norm,
    dropout=dropout,
    dtype=dtype,
    param_dtype=param_dtype,
    init=init,
    **options,
  )
  return VGG(cfg, rngs=rngs if rngs is not None else nnx.Rngs(0))


def count_params(model: VGG) -> int:
  """Trainable parameters (BN running statistics excluded); works on abstract models."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def weight_layer_names(model: VGG) -> tuple[str, ...]:
  return tuple(n for n in model.plan if n.startswith(("conv", "fc")))


def layer_shapes(model: VGG, input_shape: tuple, names, *, dense: bool) -> dict:
  """{layer: output shape} of the named layers on an input of `input_shape` (NHWC),
  from a shape walk of the model itself: costs no compute."""
  graphdef, state = nnx.split(model)

  def walk(state, x):
    net = nnx.merge(graphdef, state)
    net.eval()
    return net.features(x, names, dense=dense)

  shapes = jax.eval_shape(walk, state, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  return {name: shape.shape for name, shape in shapes.items()}


def count_macs(
  model: VGG, height: int, width: int | None = None, *, dense: bool | None = None
) -> int:
  """Forward multiply-adds per image: each conv or FC layer costs (output positions) x
  (its kernel's size)."""
  width = width or height
  dense = dense if dense is not None else (height, width) != (model.cfg.image_size,) * 2
  names = weight_layer_names(model)
  shapes = layer_shapes(model, (1, height, width, model.cfg.in_channels), names, dense=dense)
  # In dense mode fc8's output is already averaged; its score map is fc7's size.
  output_of = dict(zip(names, names), **({"fc8": "fc7"} if dense else {}))
  return sum(
    math.prod(shapes[output_of[name]][1:-1]) * math.prod(getattr(model, name).kernel.shape)
    for name in names
  )


def conv_lowerings(
  model: VGG, input_shape: tuple, *, dense: bool = False, platform: str | None = None
) -> dict[str, str]:
  """{convolution: "xla" | "gemm"}: how each of the model's convolutions is lowered on a
  batch of `input_shape` (NHWC) on `platform` (default: JAX's default backend), by the
  model's `conv` option (`vgg_jax.conv.choose`)."""
  convs = [n for n in model.plan if n.startswith("conv")] + (["fc6"] if dense else [])
  before = {n: model.plan[model.plan.index(n) - 1] for n in convs if n != FIRST_CONV}
  shapes = layer_shapes(model, input_shape, set(before.values()), dense=dense)
  return {
    name: conv_lib.choose(
      model.cfg.conv,
      platform or jax.default_backend(),
      shapes[before[name]] if name in before else tuple(input_shape),
      getattr(model, name).kernel.shape,
    )
    for name in convs
  }


def describe_lowerings(lowerings: dict[str, str]) -> str:
  """One line for a run's log: which convolutions run as one matmul (`conv_lowerings`)."""
  gemm = [name for name, how in lowerings.items() if how == "gemm"]
  if not gemm:
    return "convolutions: XLA's in all layers"
  rest = len(lowerings) - len(gemm)
  return f"convolutions: one matmul in {', '.join(gemm)}; XLA's in the other {rest}"


def training_flops_per_image(model: VGG, height: int) -> float:
  """FLOPs to train on one image: multiply-adds x 2 FLOPs, x 3 for the forward pass and
  the backward pass's two (activation and weight gradients); 92.8 G for D at 224."""
  return 6.0 * count_macs(model, height)


def model_graphdef(cfg: VGGConfig):
  """The network's structure without its arrays: `nnx.merge(graphdef, params,
  batch_stats)` rebuilds it from a state's `params` and `batch_stats`."""
  return nnx.split(nnx.eval_shape(lambda: VGG(cfg, rngs=nnx.Rngs(0))), nnx.Param, nnx.BatchStat)[0]


def abstract_weights(cfg: VGGConfig) -> dict:
  """{"params", "batch_stats"} of the network as shapes, as a train state lays them out:
  what a checkpoint's weights are restored into."""
  _, params, batch_stats = nnx.split(
    nnx.eval_shape(lambda: VGG(cfg, rngs=nnx.Rngs(0))), nnx.Param, nnx.BatchStat
  )
  return dict(params=params, batch_stats=batch_stats)
