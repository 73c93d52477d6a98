"""How the networks' convolutions are computed (``config.arch.conv_path``); the same maths on every
path.

``'xla'``: ``lax.conv_general_dilated`` and its autodiff, as XLA compiles them.

``'chunked_weight_grad'``: the same forward and input gradient; the kernel's gradient (a
convolution of the layer's input with the output's gradient that sums over the whole batch) is
computed over slices of ``WEIGHT_GRAD_CHUNK`` examples and summed. XLA:CPU's convolution code
runs that reduction over a large batch at a small fraction of what the CPU can do (16-26% of the
matmul roofline for the 16-channel 32x32 layers at batch 192, benchmarks/results/
profile_mnist_dim32.md); in slices that fit its caches it runs ~1.5x faster
(benchmarks/conv_paths.py measures every path tried). The sum's order differs from XLA's, so
gradients agree within float32 rounding (tests/test_convolution.py).

``'auto'``: ``'chunked_weight_grad'`` on CPU, ``'xla'`` on accelerators (their convolution
libraries were not measured to need it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

CONV_PATHS = ("auto", "xla", "chunked_weight_grad", "batch_slices", "nchw",
              "patches_weight_grad")
WEIGHT_GRAD_CHUNK = 16  # examples per slice of the kernel's gradient (measured: 8-32 similar)

ConvFn = Callable[..., jax.Array]


def resolve(path: str, backend: str | None = None) -> str:
  """'auto' -> 'chunked_weight_grad' on CPU, else 'xla'; other paths unchanged."""
  if path not in CONV_PATHS:
    raise ValueError(f"unknown conv path {path!r}; expected one of {CONV_PATHS}")
  if path == "auto":
    return "chunked_weight_grad" if (backend or jax.default_backend()) == "cpu" else "xla"
  return path


def conv_general_dilated(path: str) -> ConvFn | None:
  """The ``conv_general_dilated`` of ``flax.linen.Conv`` for a resolved ``path`` (None: Flax's
  own, ``lax.conv_general_dilated``)."""
  if path == "xla":
    return None
  if path in _FUNCTIONS:
    return _FUNCTIONS[path]
  raise ValueError(f"conv path {path!r} is not resolved; resolve() it first")


def chunked_weight_grad(lhs: jax.Array, rhs: jax.Array, window_strides: Any, padding: Any,
                        chunk: int = WEIGHT_GRAD_CHUNK, **kwargs: Any) -> jax.Array:
  """``lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)``, whose kernel
  gradient is summed over slices of ``chunk`` examples (``lhs``'s batch axis is its first, as
  Flax's ``Conv`` lays it out: (N, ..., C_in) -> (N, ..., C_out)). Works under jit, vmap and
  grad (a ``jax.custom_vjp``; the forward and the input gradient are XLA's own)."""

  def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, window_strides, padding, **kwargs)

  def kernel_grad(x: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
    dw = None
    for start in range(0, x.shape[0], chunk):
      (part,) = jax.vjp(lambda w_, s=start: conv(x[s:s + chunk], w_), w)[1](g[start:start + chunk])
      dw = part if dw is None else dw + part
    return dw

  return _with_kernel_grad(conv, kernel_grad)(lhs, rhs)


def _with_kernel_grad(conv: Callable[[jax.Array, jax.Array], jax.Array],
                      kernel_grad: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
                      ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``conv(x, w)`` with XLA's forward and input gradient, and the kernel's gradient computed by
  ``kernel_grad(x, w, output_grad)`` (a ``jax.custom_vjp``)."""

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def forward(x, w):
    return conv(x, w), (x, w)

  def backward(residuals, g):
    x, w = residuals
    (dx,) = jax.vjp(lambda x_: conv(x_, w), x)[1](g)
    return dx, kernel_grad(x, w, g)

  f.defvjp(forward, backward)
  return f


def batch_slices(lhs: jax.Array, rhs: jax.Array, window_strides: Any, padding: Any,
                 chunk: int = 64, **kwargs: Any) -> jax.Array:
  """The convolution over slices of ``chunk`` examples, concatenated: forward, input and kernel
  gradients all run per slice (D's one forward over [x, *fakes] as one forward per term, the
  same weights)."""
  if lhs.shape[0] <= chunk:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  return jnp.concatenate([
      lax.conv_general_dilated(lhs[s:s + chunk], rhs, window_strides, padding, **kwargs)
      for s in range(0, lhs.shape[0], chunk)])


def nchw(lhs: jax.Array, rhs: jax.Array, window_strides: Any, padding: Any,
         dimension_numbers: Any = None, **kwargs: Any) -> jax.Array:
  """The convolution in XLA's other layout: NCHW images, OIHW kernels (Flax's NHWC / HWIO are
  transposed in and out)."""
  del dimension_numbers  # Flax's: NHWC, HWIO
  out = lax.conv_general_dilated(lhs.transpose(0, 3, 1, 2), rhs.transpose(3, 2, 0, 1),
                                 window_strides, padding,
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"), **kwargs)
  return out.transpose(0, 2, 3, 1)


def patches_weight_grad(lhs: jax.Array, rhs: jax.Array, window_strides: Any, padding: Any,
                        **kwargs: Any) -> jax.Array:
  """XLA's forward and input gradient; the kernel's gradient as one matrix product of the
  input's patches (N*H*W, kh*kw*C_in) with the output's gradient (N*H*W, C_out)."""

  def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, window_strides, padding, **kwargs)

  kh, kw, c_in, c_out = rhs.shape

  def kernel_grad(x: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
    del w
    patches = lax.conv_general_dilated_patches(  # channel-major: k = c * kh * kw + i * kw + j
        x, (kh, kw), window_strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    dw = jnp.einsum("nhwk,nhwo->ko", patches, g).reshape(c_in, kh, kw, c_out)
    return dw.transpose(1, 2, 0, 3)

  return _with_kernel_grad(conv, kernel_grad)(lhs, rhs)


_FUNCTIONS: dict[str, ConvFn] = {
    "chunked_weight_grad": chunked_weight_grad, "batch_slices": batch_slices, "nchw": nchw,
    "patches_weight_grad": patches_weight_grad}
