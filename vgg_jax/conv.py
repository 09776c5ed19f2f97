"""How each convolution is lowered: XLA's convolution, or the same sum as one matmul.

A stride-1 KxK convolution over NHWC input is one matrix product over the input's K*K
shifted views (im2col): pad the input, take the K*K shifted slices, concatenate them on
channels to [N, H', W', K*K*C] and multiply by the kernel reshaped to [K*K*C, F]. Same
parameters, same sums (in another order), so checkpoints and results are shared.

XLA's CPU convolution collapses on the smallest feature maps with many channels (VGG's
last stage at 32 px), where the matmul form is many times faster; on larger maps XLA's
is as fast or faster (benchmarks/README.md, "Convolutions on a CPU"). So the lowering is chosen per
layer by its shape: `conv="auto"` (the default) takes the matmul where
`cpu_prefers_matmul` says so, on a CPU only: GPUs and TPUs keep XLA's convolution, which
cuDNN and the TPU's MXU are built for. The platform is the one the program is lowered
for (`lax.platform_dependent`), not the host's, so a program compiled ahead of time for a
TPU from a CPU machine keeps XLA's convolutions.
"""

import jax.numpy as jnp
from jax import lax

LOWERINGS = ("auto", "xla", "gemm")
NHWC = ("NHWC", "HWIO", "NHWC")  # flax's layout: images NHWC, kernels HWIO

# The CPU rule (`cpu_prefers_matmul`), measured per layer shape (the forward convolution
# and both gradients) by `benchmarks/conv_lowering.py`: XLA's CPU convolution collapses
# on maps of at most 2x2 positions once they have 64 or more channels (tens of times
# slower than the matmul at 512), and is as fast or faster everywhere else.
SMALL_MAP_POSITIONS = 4
MIN_CHANNELS = 64


def cpu_prefers_matmul(input_shape: tuple, kernel_shape: tuple) -> bool:
  """Whether the matmul form of this convolution (input NHWC, kernel HWIO) beats XLA's
  on a CPU: a KxK kernel (K > 1) over a tiny map with many channels."""
  _, height, width, channels = input_shape
  kh, kw, _, _ = kernel_shape
  return kh * kw > 1 and height * width <= SMALL_MAP_POSITIONS and channels >= MIN_CHANNELS


def choose(conv: str, platform: str, input_shape: tuple, kernel_shape: tuple) -> str:
  """The lowering ("xla" or "gemm") a layer takes under `conv` on `platform`."""
  if conv != "auto":
    return conv
  if platform == "cpu" and cpu_prefers_matmul(input_shape, kernel_shape):
    return "gemm"
  return "xla"


def conv_as_matmul(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  preferred_element_type=None,
  out_sharding=None,
):
  """`lax.conv_general_dilated` (as nnx.Conv calls it) for stride-1, undilated,
  ungrouped NHWC convolutions, computed as one matmul over the shifted views."""
  _check_plain(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers)
  del out_sharding  # the product's sharding follows its operands'
  feature_group_count = int(feature_group_count)
  if feature_group_count != 1:
    raise ValueError("conv_as_matmul: grouped convolutions are not supported")
  kh, kw, channels, features = rhs.shape
  pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (1, 1), padding)
  x = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
  n, out_h, out_w = x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1
  views = [x[:, i : i + out_h, j : j + out_w, :] for i in range(kh) for j in range(kw)]
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  out = jnp.dot(
    patches.reshape(n * out_h * out_w, kh * kw * channels),
    rhs.reshape(kh * kw * channels, features),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  return out.reshape(n, out_h, out_w, features)


def _check_plain(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers):
  ones = (1,) * (lhs.ndim - 2)
  if tuple(window_strides) != ones or tuple(lhs_dilation or ones) != ones:
    raise ValueError("conv_as_matmul: only stride-1 convolutions without input dilation")
  if tuple(rhs_dilation or ones) != ones:
    raise ValueError("conv_as_matmul: dilated kernels are not supported")
  expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
  if dimension_numbers is not None and (
    lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != expected
  ):
    raise ValueError(f"conv_as_matmul: only {NHWC} layouts")


def conv_function(conv: str):
  """What nnx.Conv's `conv_general_dilated` is under the model's `conv` option."""
  if conv not in LOWERINGS:
    raise ValueError(f"unknown conv {conv!r}; choose one of {', '.join(LOWERINGS)}")
  return {"xla": lax.conv_general_dilated, "gemm": conv_as_matmul, "auto": conv_auto}[conv]


def conv_auto(lhs, rhs, *args, **kwargs):
  """XLA's convolution, or on a CPU the matmul form where this layer's shape favours it;
  decided when the program is lowered, for the platform it is lowered for."""
  xla = lambda lhs, rhs: lax.conv_general_dilated(lhs, rhs, *args, **kwargs)  # noqa: E731
  if not cpu_prefers_matmul(lhs.shape, rhs.shape):
    return xla(lhs, rhs)
  matmul = lambda lhs, rhs: conv_as_matmul(lhs, rhs, *args, **kwargs)  # noqa: E731
  return lax.platform_dependent(lhs, rhs, cpu=matmul, default=xla)
