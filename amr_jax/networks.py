"""Encoders, decoders, discriminators and the linear probe of AMR, in Flax Linen.

Two families, chosen by name (see :func:`build`):

- ``"acai32"``: 32x32 images; the ACAI architecture as ported by the AMR authors (affine instance
  norm in G, LeakyReLU 0.01). The code ``h`` is a feature map ``(B, 4, 4, latent_channels)``.
- ``"dsprites64"``: 64x64 dSprites; strided convs + an MLP. The code is a vector
  ``(B, latent_dim)``.

All images are NHWC in [-1, 1]; decoders are linear at the output (no tanh), as in the authors'
code. Discriminators return one logit per image, shape ``(B,)``, and are spectrally normalised:
their power-iteration state lives in the :data:`SPECTRAL` collection, so call them as
``D.apply(vars, x, update_stats=True, mutable=[SPECTRAL])`` when training and
``D.apply(vars, x, update_stats=False)`` otherwise. Never pass ``mutable=True``: Flax's
``SpectralNorm`` then also hands back a ``params`` collection holding the *normalised* weights.

Every module has ``dtype`` (computation dtype; ``None`` = float32) and ``param_dtype`` (float32)
so that bfloat16 compute can be switched on without touching parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
from flax.linen import normalization
import jax
import jax.numpy as jnp

from amr_jax import convolution

Dtype = Any

__all__ = [
    "SPECTRAL",
    "ARCHITECTURES",
    "IMAGE_SIZE",
    "Encoder32",
    "Decoder32",
    "Discriminator32",
    "Encoder64",
    "Decoder64",
    "Discriminator64",
    "Probe",
    "Networks",
    "build",
    "latent_shape",
]

SPECTRAL = "spectral"
"""Name of the Flax variable collection holding spectral-norm state (``u`` and ``sigma``)."""
SPECTRAL_BACKWARD = "spectral_backward"
"""Optional read-only collection shaped like :data:`SPECTRAL`: when a D forward is given it, each
layer's sigma keeps its value but is differentiated at the u, v that the layer's power iteration
reaches from this collection's u (see :class:`SpectralNorm`)."""

ARCHITECTURES = ("acai32", "dsprites64", "mlp2d")
INITS = ("flax", "authors")
"""Initialisations of acai32 (see :func:`build`): Flax's defaults, or the AMR authors' PyTorch port."""
# For "mlp2d" (2-D points) the "image size" is the point dimension.
IMAGE_SIZE = {"acai32": 32, "dsprites64": 64, "mlp2d": 2}

# PyTorch's InstanceNorm2d default; Flax's default is 1e-6.
_NORM_EPS = 1e-5


def _check_images(x: jax.Array, name: str) -> None:
  if x.ndim != 4:
    raise ValueError(f"{name} expects NHWC images (B, H, W, C); got shape {x.shape}")


def _conv(path: str, features: int, kernel_size: tuple[int, int], **kwargs: Any) -> nn.Conv:
  """Flax's ``Conv``, its convolution computed on ``path`` (:mod:`amr_jax.convolution`)."""
  return nn.Conv(features, kernel_size, conv_general_dilated=convolution.conv_general_dilated(path),
                 **kwargs)


def _upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling, (B, H, W, C) -> (B, 2H, 2W, C)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class SpectralNorm(nn.SpectralNorm):
  """Flax's SpectralNorm; given a :data:`SPECTRAL_BACKWARD` collection, sigma's gradient is taken
  at other vectors than its value.

  The authors' 32x32 SpectralNorm overwrites ``u.data`` and ``v.data`` in place on every D call,
  so when D's backward runs, every call's ``d sigma / dW = u v^T`` uses the u, v of the last
  call, while each call's sigma value is its own. With the collection holding the spectral state
  before that last call, this computes the same: the forward is Flax's, bit for bit; the
  gradient is that of ``W / s``, ``s`` having the call's sigma as value and
  ``v_last W u_last^T`` as derivative. Needs ``update_stats=True`` (the call's sigma is read from
  the state it stores).
  """

  def _spectral_normalize(self, path, vs, update_stats):
    normalized = super()._spectral_normalize(path, vs, update_stats)
    name = self.layer_instance.name + "/" + "/".join(k.key for k in path[1:])
    if normalized.ndim <= 1 or not self.has_variable(SPECTRAL_BACKWARD, f"{name}/u"):
      return normalized
    if not update_stats:
      raise ValueError(f"{SPECTRAL_BACKWARD} needs update_stats=True")
    kernel = jnp.asarray(vs)
    matrix = kernel.reshape(-1, kernel.shape[-1])
    u = self.get_variable(SPECTRAL_BACKWARD, f"{name}/u")
    for _ in range(self.n_steps):  # the last call's power iteration, as Flax runs it
      v = normalization._l2_normalize(u @ matrix.T, eps=self.epsilon)
      u = normalization._l2_normalize(v @ matrix, eps=self.epsilon)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    sigma_last = (v @ matrix @ u.T)[0, 0]
    sigma = jax.lax.stop_gradient(self.get_variable(self.collection_name, f"{name}/sigma"))
    sigma = sigma + (sigma_last - jax.lax.stop_gradient(sigma_last))  # value: the call's own
    kernel_bar = kernel / sigma
    # Value: Flax's normalised kernel exactly (x - x == 0); gradient: that of kernel / sigma.
    return (jax.lax.stop_gradient(normalized)
            + (kernel_bar - jax.lax.stop_gradient(kernel_bar)).astype(normalized.dtype))


def _spectral(layer: nn.Module, param_dtype: Dtype, power_iterations: int = 1) -> SpectralNorm:
  # The power iteration runs in param_dtype (float32) on the float32 kernel; the wrapped layer
  # then casts to its own compute dtype, so bfloat16 compute does not degrade the estimate.
  return SpectralNorm(layer, n_steps=power_iterations, collection_name=SPECTRAL,
                      param_dtype=param_dtype)


# The AMR authors' PyTorch initialisation (reference.md; used with init='authors').
_AUTHORS_SLOPE = 0.2


def _authors_normal(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32
                    ) -> jax.Array:
  """Their ``Initializer``: N(0, 1 / ((1 + 0.2**2) * prod(w.shape[:-1]))) on PyTorch's weight
  layout. For a conv (PyTorch (out, in, kh, kw); Flax (kh, kw, in, out)) that product is
  out*in*kh, not the fan-in: a far smaller std for wide layers. For an instance-norm scale
  (shape (C,)) it is the empty product 1: scales ~ N(0, ~1), random signs."""
  if len(shape) == 4:
    kh, _, channels_in, channels_out = shape
    fan = channels_out * channels_in * kh
  elif len(shape) == 1:
    fan = 1
  else:
    raise ValueError(f"the authors' initialiser is defined for conv kernels and norm scales; "
                     f"got shape {shape}")
  std = 1.0 / math.sqrt((1.0 + _AUTHORS_SLOPE**2) * fan)
  return std * jax.random.normal(key, shape, dtype)


# PyTorch's default for Conv2d / Linear (kaiming-uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)) for
# the kernel; the bias draws from the same bound. Their spectrally-normalised convs and their
# probe keep it.
_torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_default_bias(fan_in: int) -> nn.initializers.Initializer:
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _conv_init(init: str) -> dict[str, Any]:
  """Kernel init of G's convs (and of D's unnormalised input conv) under ``init``."""
  return {"kernel_init": _authors_normal} if init == "authors" else {}


# --------------------------------------------------------------------------------------------
# 32x32: ACAI architecture


class _ConvBlock32(nn.Module):
  """3x3 conv, optional affine instance norm, LeakyReLU. (B, H, W, C) -> (B, H, W, features)."""
  features: int
  instance_norm: bool
  leaky_slope: float
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  initializer: str = "flax"
  conv_path: str = "xla"  # resolved (amr_jax.convolution)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Instance norm subtracts each channel's mean, which cancels a conv bias exactly: such a bias
    # gets a gradient of pure rounding noise, which Adam would turn into steps of size lr.
    x = _conv(self.conv_path, self.features, (3, 3), padding="SAME",
              use_bias=not self.instance_norm, dtype=self.dtype, param_dtype=self.param_dtype,
              **_conv_init(self.initializer))(x)
    if self.instance_norm:
      scale = {"scale_init": _authors_normal} if self.initializer == "authors" else {}
      x = nn.InstanceNorm(epsilon=_NORM_EPS, use_scale=True, use_bias=True, dtype=self.dtype,
                          param_dtype=self.param_dtype, **scale)(x)
    return nn.leaky_relu(x, self.leaky_slope)


class Encoder32(nn.Module):
  """ACAI encoder. (B, 32, 32, C_img) -> (B, 4, 4, latent_channels).

  1x1 conv to ``width`` (linear); for each scale s: two [3x3 conv to width*2**s, norm, LeakyReLU]
  then 2x2 average pool; a 3x3 conv block to width*2**scales; a linear 3x3 conv to the code.
  ``input_padding=1`` pads the 1x1 conv's input as the authors' code did (32 -> 34 -> 17 -> 8
  -> 4 pixels; the border holds only the conv's bias); 0 keeps 32 -> 16 -> 8 -> 4.
  """
  width: int = 16
  latent_channels: int = 2
  instance_norm: bool = True
  leaky_slope: float = 0.01
  scales: int = 3
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  initializer: str = "flax"
  conv_path: str = "xla"  # resolved (amr_jax.convolution)
  input_padding: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_images(x, "Encoder32")
    block = lambda f: _ConvBlock32(f, self.instance_norm, self.leaky_slope, self.dtype,
                                   self.param_dtype, self.initializer,
                                   conv_path=self.conv_path)
    x = _conv(self.conv_path, self.width, (1, 1), padding=self.input_padding, dtype=self.dtype,
              param_dtype=self.param_dtype, **_conv_init(self.initializer))(x)
    for s in range(self.scales):
      x = block(self.width * 2**s)(x)
      x = block(self.width * 2**s)(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = block(self.width * 2**self.scales)(x)
    return _conv(self.conv_path, self.latent_channels, (3, 3), padding="SAME", dtype=self.dtype,
                 param_dtype=self.param_dtype, **_conv_init(self.initializer))(x)


class Decoder32(nn.Module):
  """ACAI decoder, the encoder's mirror. (B, 4, 4, C) -> (B, 32, 32, image_channels), linear."""
  width: int = 16
  image_channels: int = 1
  instance_norm: bool = True
  leaky_slope: float = 0.01
  scales: int = 3
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  initializer: str = "flax"
  conv_path: str = "xla"  # resolved (amr_jax.convolution)

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    _check_images(h, "Decoder32")
    block = lambda f: _ConvBlock32(f, self.instance_norm, self.leaky_slope, self.dtype,
                                   self.param_dtype, self.initializer,
                                   conv_path=self.conv_path)
    x = h
    for s in reversed(range(self.scales)):
      x = block(self.width * 2**s)(x)
      x = block(self.width * 2**s)(x)
      x = _upsample2x(x)
    x = block(self.width)(x)
    return _conv(self.conv_path, self.image_channels, (3, 3), padding="SAME", dtype=self.dtype,
                 param_dtype=self.param_dtype, **_conv_init(self.initializer))(x)


class Discriminator32(nn.Module):
  """Encoder32's shape without norm, its convs spectrally normalised. (B, 32, 32, C) -> (B,).

  The logit is the mean of the last conv's (B, 4, 4, latent_channels) output per image.
  ``spectral_input=False`` leaves the first 1x1 conv unnormalised (the authors' code: only its
  3x3 convs are wrapped); ``input_padding`` as in :class:`Encoder32`; ``power_iterations``:
  power-iteration steps per forward (the authors' code advances its estimate once on every
  training forward of D, five times per AMR iteration).
  """
  width: int = 16
  latent_channels: int = 2
  leaky_slope: float = 0.01
  scales: int = 3
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  initializer: str = "flax"
  conv_path: str = "xla"  # resolved (amr_jax.convolution)
  input_padding: int = 0
  spectral_input: bool = True
  power_iterations: int = 1

  num_attributes: int = 0  # > 0 adds an auxiliary multi-label classifier head (AC-GAN)

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool):
    """Returns logits (B,), or (logits, attribute_logits (B, num_attributes)) with the head."""
    _check_images(x, "Discriminator32")

    def conv(features: int, size: int, h: jax.Array, padding: Any = "SAME",
             spectral: bool = True) -> jax.Array:
      # Under init='authors' a normalised conv keeps PyTorch's default init (their Initializer
      # skipped layers wrapped in SpectralNorm) and an unnormalised one gets theirs. (Flax's
      # SpectralNorm stores a kernel divided by its first sigma estimate at init; PyTorch's keeps
      # the raw draw, entries ~0.8x as large for these layers. The forward is the same.)
      if self.initializer != "authors":
        inits = {}
      elif spectral:
        inits = {"kernel_init": _torch_default_kernel,
                 "bias_init": _torch_default_bias(size * size * h.shape[-1])}
      else:
        inits = _conv_init(self.initializer)
      layer = _conv(self.conv_path, features, (size, size), padding=padding, dtype=self.dtype,
                    param_dtype=self.param_dtype, **inits)
      if not spectral:
        return layer(h)
      return _spectral(layer, self.param_dtype, self.power_iterations)(
          h, update_stats=update_stats)

    x = conv(self.width, 1, x, padding=self.input_padding, spectral=self.spectral_input)
    for s in range(self.scales):
      x = nn.leaky_relu(conv(self.width * 2**s, 3, x), self.leaky_slope)
      x = nn.leaky_relu(conv(self.width * 2**s, 3, x), self.leaky_slope)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    features = nn.leaky_relu(conv(self.width * 2**self.scales, 3, x), self.leaky_slope)
    x = conv(self.latent_channels, 3, features)
    # Reduce in float32: the logit feeds a BCE loss, and bf16 sums lose precision.
    logits = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    if not self.num_attributes:
      return logits
    head = nn.Dense(self.num_attributes, dtype=self.dtype, param_dtype=self.param_dtype)
    pooled = jnp.mean(features, axis=(1, 2))
    attributes = _spectral(head, self.param_dtype, self.power_iterations)(
        pooled, update_stats=update_stats)
    return logits, attributes.astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# 64x64: dSprites


class Encoder64(nn.Module):
  """dSprites encoder. (B, 64, 64, C_img) -> (B, latent_dim).

  4x [4x4 conv stride 2, ``channels``, ReLU] (64 -> 4), flatten, Dense ``hidden`` ReLU x2,
  linear Dense to ``latent_dim``.
  """
  latent_dim: int = 10
  channels: int = 32
  hidden: int = 256
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_images(x, "Encoder64")
    for _ in range(4):
      x = nn.relu(nn.Conv(self.channels, (4, 4), strides=(2, 2), padding="SAME",
                          dtype=self.dtype, param_dtype=self.param_dtype)(x))
    x = x.reshape((x.shape[0], -1))
    for _ in range(2):
      x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(x))
    return nn.Dense(self.latent_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Decoder64(nn.Module):
  """dSprites decoder, the encoder's mirror. (B, latent_dim) -> (B, 64, 64, image_channels).

  ``logit_scale`` multiplies the last layer's output: 2 with BCE makes the decoder the authors'
  (their Tanh output t = tanh(u) is read as the probability (t + 1) / 2 = sigmoid(2 u)), with
  their parameters and so their optimiser steps."""
  image_channels: int = 1
  channels: int = 32
  hidden: int = 256
  logit_scale: float = 1.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    if h.ndim != 2:
      raise ValueError(f"Decoder64 expects flat codes (B, latent_dim); got shape {h.shape}")
    x = h
    for _ in range(2):
      x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(x))
    x = nn.relu(nn.Dense(4 * 4 * self.channels, dtype=self.dtype,
                         param_dtype=self.param_dtype)(x))
    x = x.reshape((x.shape[0], 4, 4, self.channels))
    # SAME padding with stride 2 doubles the spatial size exactly: 4 -> 8 -> 16 -> 32 -> 64.
    for _ in range(3):
      x = nn.relu(nn.ConvTranspose(self.channels, (4, 4), strides=(2, 2), padding="SAME",
                                   dtype=self.dtype, param_dtype=self.param_dtype)(x))
    x = nn.ConvTranspose(self.image_channels, (4, 4), strides=(2, 2), padding="SAME",
                         dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x if self.logit_scale == 1.0 else self.logit_scale * x


class Discriminator64(nn.Module):
  """dSprites discriminator: Encoder64's convs + Dense hidden, hidden, 1, all spectrally
  normalised, ReLU like the encoder. (B, 64, 64, C) -> (B,) logits."""
  channels: int = 32
  hidden: int = 256
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  num_attributes: int = 0  # > 0 adds an auxiliary multi-label classifier head (AC-GAN)

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool):
    """Returns logits (B,), or (logits, attribute_logits (B, num_attributes)) with the head."""
    _check_images(x, "Discriminator64")
    sn = lambda layer, h: _spectral(layer, self.param_dtype)(h, update_stats=update_stats)
    for _ in range(4):
      x = nn.relu(sn(nn.Conv(self.channels, (4, 4), strides=(2, 2), padding="SAME",
                             dtype=self.dtype, param_dtype=self.param_dtype), x))
    x = x.reshape((x.shape[0], -1))
    for _ in range(2):
      x = nn.relu(sn(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype), x))
    logits = sn(nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype), x)[:, 0]
    if not self.num_attributes:
      return logits.astype(jnp.float32)
    attributes = sn(nn.Dense(self.num_attributes, dtype=self.dtype,
                             param_dtype=self.param_dtype), x)
    return logits.astype(jnp.float32), attributes.astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Probe, presets


class Probe(nn.Module):
  """Linear classifier on a flattened code. (B, ...) -> (B, num_classes) logits.

  It does not stop gradients itself: the train step applies ``stop_gradient`` to ``h``.
  ``initializer='authors'``: PyTorch's ``nn.Linear`` default, U(+-1/sqrt(in)) for kernel and bias.
  """
  num_classes: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  initializer: str = "flax"

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = h.reshape((h.shape[0], -1))
    inits = {}
    if self.initializer == "authors":
      inits = {"kernel_init": _torch_default_kernel,
               "bias_init": _torch_default_bias(h.shape[-1])}
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    **inits)(h)


class ClassMixer(nn.Module):
  """The label-conditioned mixer of supervised AMR (section 2.2): an MLP from a binary attribute
  vector to per-channel Bernoulli logits (Linear A->C, ReLU, Linear C->C, ReLU, Linear C->C, as
  in the authors' code). (B, A) -> (B, channels) logits; ``sigmoid`` gives the probability that
  a channel is taken from the first code."""
  channels: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, attributes: jax.Array) -> jax.Array:
    x = attributes.astype(self.dtype or jnp.float32)
    for _ in range(2):
      x = nn.relu(nn.Dense(self.channels, dtype=self.dtype, param_dtype=self.param_dtype)(x))
    return nn.Dense(self.channels, dtype=self.dtype, param_dtype=self.param_dtype)(x).astype(
        jnp.float32)


@dataclasses.dataclass(frozen=True)
class Networks:
  """The (unbound) modules of one model; ``class_mixer`` only for supervised AMR."""
  encoder: nn.Module
  decoder: nn.Module
  discriminator: nn.Module
  probe: nn.Module
  class_mixer: nn.Module | None = None


# Options of one architecture only: name -> (that architecture, the value that leaves it unused).
ARCH_OPTIONS = {
    "init": ("acai32", "flax"),
    "input_conv_padding": ("acai32", 0),
    "spectral_input_conv": ("acai32", True),
    "spectral_power_iterations": ("acai32", 1),
    "decoder_logit_scale": ("dsprites64", 1.0),
}


def misplaced_options(arch: str, **options: Any) -> list[str]:
  """The names among ``options`` (of :data:`ARCH_OPTIONS`) set away from their unused value on
  an architecture they are not options of. The one place this rule is checked (``build`` and
  config validation ask it)."""
  return [name for name, value in options.items()
          if ARCH_OPTIONS[name][0] != arch and value != ARCH_OPTIONS[name][1]]


def _check_arch(arch: str) -> None:
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def build(arch: str, *, image_channels: int, num_classes: int, width: int = 16,
          latent_channels: int = 2, latent_dim: int = 10, instance_norm: bool = True,
          leaky_slope: float = 0.01, dtype: Dtype | None = None, variational: bool = False,
          num_attributes: int = 0, init: str = "flax", input_conv_padding: int = 0,
          spectral_input_conv: bool = True, spectral_power_iterations: int = 1,
          decoder_logit_scale: float = 1.0, conv_path: str = "xla") -> Networks:
  """The networks of a named architecture.

  ``acai32`` uses ``width``, ``latent_channels``, ``instance_norm`` and ``leaky_slope``
  (``latent_dim`` is ignored); ``dsprites64`` uses ``latent_dim`` (the others are ignored).
  ``dtype`` is the computation dtype of every module (``None`` = float32).
  ``variational``: the encoder outputs twice the code's channels (mean and log-variance, split
  along the last axis), for the beta-VAE baseline.
  ``num_attributes`` > 0: supervised AMR: D gets an attribute head and a ClassMixer is built.
  ``mlp2d`` (2-D points, the spiral toy) uses ``width`` (hidden units), ``latent_dim`` and
  ``leaky_slope``; ``image_channels`` is the point dimension.

  acai32 only, the four ways the authors' PyTorch model differs (all four reproduce it):
  ``init`` ('flax' or 'authors': their Initializer in G and D's input conv, PyTorch defaults in
  D's normalised convs and the probe), ``input_conv_padding`` (their 1), ``spectral_input_conv``
  (their False) and ``spectral_power_iterations`` per D forward (theirs: one per forward, 5 per
  AMR iteration).
  ``decoder_logit_scale`` (dsprites64 only): see Decoder64 (the authors' Tanh decoder: 2).
  ``conv_path`` (acai32's convolutions; :mod:`amr_jax.convolution`): how they are computed, the
  same maths on every path; 'auto' is resolved for the backend here.
  """
  _check_arch(arch)
  misplaced = misplaced_options(arch, init=init, input_conv_padding=input_conv_padding,
                                spectral_input_conv=spectral_input_conv,
                                spectral_power_iterations=spectral_power_iterations,
                                decoder_logit_scale=decoder_logit_scale)
  if misplaced:
    raise ValueError(", ".join(f"{name} is an option of {ARCH_OPTIONS[name][0]}"
                               for name in misplaced) + f", not of {arch!r}")
  if init not in INITS:
    raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
  factor = 2 if variational else 1
  conv_path = convolution.resolve(conv_path)
  if arch == "acai32":
    nets = Networks(
        encoder=Encoder32(width=width, latent_channels=factor * latent_channels,
                          instance_norm=instance_norm, leaky_slope=leaky_slope, dtype=dtype,
                          initializer=init, input_padding=input_conv_padding,
                          conv_path=conv_path),
        decoder=Decoder32(width=width, image_channels=image_channels,
                          instance_norm=instance_norm, leaky_slope=leaky_slope, dtype=dtype,
                          initializer=init, conv_path=conv_path),
        # The critic has no norm, as in the authors' code.
        discriminator=Discriminator32(width=width, latent_channels=latent_channels,
                                      leaky_slope=leaky_slope, dtype=dtype, initializer=init,
                                      input_padding=input_conv_padding,
                                      spectral_input=spectral_input_conv,
                                      power_iterations=spectral_power_iterations,
                                      num_attributes=num_attributes, conv_path=conv_path),
        probe=Probe(num_classes, dtype=dtype, initializer=init),
    )
  elif arch == "mlp2d":
    nets = Networks(
        encoder=MLPEncoder2D(hidden=width, latent_dim=factor * latent_dim,
                             leaky_slope=leaky_slope, dtype=dtype),
        decoder=MLPDecoder2D(hidden=width, out_dim=image_channels, leaky_slope=leaky_slope,
                             dtype=dtype),
        discriminator=MLPDiscriminator2D(hidden=width, leaky_slope=leaky_slope, dtype=dtype,
                                         num_attributes=num_attributes),
        probe=Probe(num_classes, dtype=dtype),
    )
  else:
    nets = Networks(
        encoder=Encoder64(latent_dim=factor * latent_dim, dtype=dtype),
        decoder=Decoder64(image_channels=image_channels, logit_scale=decoder_logit_scale,
                          dtype=dtype),
        discriminator=Discriminator64(dtype=dtype, num_attributes=num_attributes),
        probe=Probe(num_classes, dtype=dtype),
    )
  if num_attributes:
    channels = latent_shape(arch, latent_channels=latent_channels, latent_dim=latent_dim)[-1]
    nets = dataclasses.replace(nets, class_mixer=ClassMixer(channels, dtype=dtype))
  return nets


def latent_shape(arch: str, *, image_channels: int | None = None, num_classes: int | None = None,
                 width: int = 16, latent_channels: int = 2, latent_dim: int = 10,
                 instance_norm: bool = True, leaky_slope: float = 0.01,
                 dtype: Dtype | None = None) -> tuple[int, ...]:
  """The code shape without the batch axis, e.g. ``(4, 4, 2)`` or ``(10,)``.

  Takes the same keyword arguments as :func:`build` (so one kwargs dict serves both); only
  ``latent_channels`` (acai32) or ``latent_dim`` (dsprites64, mlp2d) matter.
  """
  del image_channels, num_classes, width, instance_norm, leaky_slope, dtype  # no effect on shape
  _check_arch(arch)
  if arch == "acai32":
    side = IMAGE_SIZE[arch] // 2**3  # build() always uses 3 scales
    return (side, side, latent_channels)
  return (latent_dim,)


# --------------------------------------------------------------------------------------------
# 2-D points: the appendix toy (spiral, Figure 12). For 'mlp2d', IMAGE_SIZE is the point
# dimension (2), so a config with data.image_size=2 validates; "images" are points (B, 2).


def _check_points(x: jax.Array, name: str) -> None:
  if x.ndim != 2:
    raise ValueError(f"{name} expects flat vectors (B, D); got shape {x.shape}")


class MLPEncoder2D(nn.Module):
  """MLP encoder for 2-D points. (B, 2) -> (B, latent_dim).

  ``depth`` x [Dense ``hidden``, LeakyReLU], then a linear Dense to ``latent_dim``.
  """
  hidden: int = 64
  depth: int = 3
  latent_dim: int = 2
  leaky_slope: float = 0.01
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_points(x, "MLPEncoder2D")
    for _ in range(self.depth):
      x = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(x),
                        self.leaky_slope)
    return nn.Dense(self.latent_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class MLPDecoder2D(nn.Module):
  """MLP decoder, the encoder's mirror. (B, latent_dim) -> (B, out_dim), linear output."""
  hidden: int = 64
  depth: int = 3
  out_dim: int = 2
  leaky_slope: float = 0.01
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    _check_points(h, "MLPDecoder2D")
    x = h
    for _ in range(self.depth):
      x = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)(x),
                        self.leaky_slope)
    return nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class MLPDiscriminator2D(nn.Module):
  """MLP discriminator for 2-D points, every Dense spectrally normalised. (B, 2) -> (B,) logits.

  Multiplies its input by ``input_scale``, then ``depth`` x [SN Dense ``hidden``, LeakyReLU],
  then SN Dense 1. Spectral norm makes D 1-Lipschitz in its input: on the spiral, whose turns
  are ~0.36 apart, its logit could change by at most ~0.18 from a turn to the gap beside it.
  ``input_scale`` raises that bound by its factor; in 6,000-step spiral runs (beta=0, two
  seeds), 10 took the fraction of decoded mixes within 0.05 of the curve from ~0.62 to ~0.82.
  With ``num_attributes`` > 0 it returns ``(logits (B,), attribute_logits (B, num_attributes))``,
  like the other discriminators.
  """
  hidden: int = 64
  depth: int = 3
  leaky_slope: float = 0.01
  input_scale: float = 10.0
  num_attributes: int = 0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool):
    _check_points(x, "MLPDiscriminator2D")
    x = x * self.input_scale
    sn = lambda layer, h: _spectral(layer, self.param_dtype)(h, update_stats=update_stats)
    dense = lambda features: nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype)
    for _ in range(self.depth):
      x = nn.leaky_relu(sn(dense(self.hidden), x), self.leaky_slope)
    logits = sn(dense(1), x)[:, 0].astype(jnp.float32)
    if not self.num_attributes:
      return logits
    return logits, sn(dense(self.num_attributes), x).astype(jnp.float32)
