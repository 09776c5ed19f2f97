"""The paper's augmentation and test-time rescaling in JAX, one implementation shared by
the numpy backend (on the host's CPU) and the device backend (inside jit on the
accelerators), so the two give the same batches for the same (seed, step).

The resampling rule is `resample`: the shortest side to S with the long side truncated
(`core.rescaled_shape`), bilinear with the kernel of tf.image.resize(antialias=True), so
the tfds backend's own rule agrees with it (to 1e-2 on 0-255 pixels, tests/test_data.py).
"""

import functools

import jax
import jax.numpy as jnp

from vgg_jax.data.core import Stats, rescaled_shape


def rescaled_hw(short_side: jax.Array, h: int, w: int) -> jax.Array:
  """[..., 2] height and width once the shortest side is `short_side`."""
  return jnp.stack(rescaled_shape(h, w, jnp.asarray(short_side, jnp.int32)), -1)


def resample(
  images: jax.Array, short_side: jax.Array, offsets: jax.Array, out_hw: tuple[int, int]
) -> jax.Array:
  """Rescales each image of [N, H, W, C] so its shortest side is short_side[i], then cuts
  the out_hw window at offsets[i] = (y, x): one resampling per image (float32 out)."""
  n, h, w, c = images.shape
  scale = rescaled_hw(short_side, h, w) / jnp.array([h, w], jnp.float32)

  def one(image, s, offset):
    return jax.image.scale_and_translate(
      image, (*out_hw, c), (0, 1), s, -offset.astype(jnp.float32), "linear", antialias=True
    )

  return jax.vmap(one)(images.astype(jnp.float32), scale, offsets)


def rescale_crop(
  images: jax.Array, short_side: jax.Array, offsets: jax.Array, crop: int
) -> jax.Array:
  """`resample` to a crop x crop window."""
  return resample(images, short_side, offsets, (crop, crop))


@functools.partial(jax.jit, static_argnames="short_side")
def rescale(images: jax.Array, mean: jax.Array, *, short_side: int) -> jax.Array:
  """Same-sized images [N, h, w, C], whole, shortest side to `short_side`, the channel
  means subtracted (the evaluation protocols cut their views from these)."""
  n, h, w, _ = images.shape
  return (
    resample(
      images,
      jnp.full((n,), short_side),
      jnp.zeros((n, 2), jnp.int32),
      rescaled_shape(h, w, short_side),
    )
    - mean
  )


def lighting(images: jax.Array, alpha: jax.Array, stats: Stats) -> jax.Array:
  """AlexNet's PCA colour shift: adds eigvec @ (alpha_i * eigval) to every pixel of image i."""
  shift = (alpha * jnp.asarray(stats.eigval)) @ jnp.asarray(stats.eigvec).T
  return images + shift[:, None, None, :]


def step_keys(key: jax.Array, step, global_batch: int) -> jax.Array:
  """One augmentation key per example of a step's global batch, by its position."""
  return jax.random.split(jax.random.fold_in(key, step), global_batch)


@functools.partial(jax.jit, static_argnames=("scale", "crop", "flip", "pca_std"))
def augment_batch(
  keys: jax.Array,
  images: jax.Array,
  stats: Stats,
  *,
  scale: tuple[int, int],
  crop: int,
  flip: bool,
  pca_std: float,
) -> jax.Array:
  """The training augmentation on a batch of same-sized images [N, H, W, C] (any dtype),
  one key per image: S ~ U{S_min..S_max}, random crop, flip, lighting, mean subtraction."""
  n, h, w, c = images.shape
  k_scale, k_crop, k_flip, k_alpha = jnp.moveaxis(
    jax.vmap(jax.random.split, (0, None))(keys, 4), 1, 0
  )
  short_side = jax.vmap(lambda k: jax.random.randint(k, (), scale[0], scale[1] + 1))(k_scale)
  offsets = jax.vmap(lambda k, hi: jax.random.randint(k, (2,), 0, hi))(
    k_crop, rescaled_hw(short_side, h, w) - crop + 1
  )
  x = rescale_crop(images, short_side, offsets, crop)
  if flip:
    flips = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(k_flip)
    x = jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)
  if pca_std:
    x = lighting(x, pca_std * jax.vmap(lambda k: jax.random.normal(k, (c,)))(k_alpha), stats)
  return x - jnp.asarray(stats.mean)


@functools.partial(jax.jit, static_argnames=("scale", "crop"))
def eval_batch(images: jax.Array, stats: Stats, *, scale: int, crop: int) -> jax.Array:
  """Test-time preprocessing: shortest side to Q, centre crop, mean subtraction (one
  compiled program a batch shape: op by op, the numpy backend took seconds a split)."""
  n, h, w, _ = images.shape
  short_side = jnp.full((n,), scale)
  offsets = (rescaled_hw(short_side, h, w) - crop) // 2
  return rescale_crop(images, short_side, offsets, crop) - jnp.asarray(stats.mean)


def on_cpu(*arrays):
  """The arrays on the host's CPU device: host-side JAX work leaves the accelerator free."""
  cpu = jax.local_devices(backend="cpu")[0]
  return [jax.device_put(a, cpu) for a in arrays]
