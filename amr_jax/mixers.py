"""Mixing functions for latent codes: the heart of Adversarial Mixup Resynthesis.

Every mixer has one signature, so they are interchangeable (like optax transforms)::

    mixed, weights = mixer(key, hs)

- ``key``: a ``jax.random`` key; the only source of randomness.
- ``hs``: shape ``(k, B, *features)``: ``k >= 2`` sources of a batch of ``B`` codes. The last
  axis is the channel axis: NHWC feature maps ``(k, B, H, W, C)`` or flat vectors ``(k, B, D)``.
  Build it with :func:`partners` (source 0 is the batch, the others are permutations of it).
- ``mixed``: shape ``(B, *features)``, equal to ``sum(weights * hs, axis=0)``.
- ``weights``: shape ``(k, B, *s)`` where each entry of ``s`` is 1 or the matching feature size,
  so it broadcasts against ``hs``; non-negative and summing to 1 over the first axis. Returned so
  that a mix stays inspectable (an ACAI critic regresses alpha; pictures show masks).

The weights never depend on the values of ``hs``, so ``grad`` of ``mixed`` with respect to ``hs``
is exactly the weights. All mixers work under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

This module depends only on jax, so it can be copied into other projects.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Mixer = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

__all__ = [
    "Mixer",
    "partners",
    "mixup",
    "mixup_per_channel",
    "bernoulli",
    "spatial",
    "get",
    "names",
    "interpolate",
    "interpolate_channels",
]


def _check_sources(hs: jax.Array) -> tuple[int, int, tuple[int, ...]]:
  if hs.ndim < 3:
    raise ValueError(
        f"hs must have shape (k, B, *features) with at least one feature axis; got shape "
        f"{hs.shape}")
  k = hs.shape[0]
  if k < 2:
    raise ValueError(f"a mix needs k >= 2 sources; got k={k} (hs.shape={hs.shape})")
  return k, hs.shape[1], hs.shape[2:]


def _combine(hs: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  weights = weights.astype(hs.dtype)
  return jnp.sum(weights * hs, axis=0), weights


def _simplex_weights(key: jax.Array, k: int, shape: tuple[int, ...], dtype) -> jax.Array:
  """Points on the (k-1)-simplex, shape (k, *shape): U(0,1) for k=2, Dirichlet(1..1) above."""
  if k == 2:
    alpha = jax.random.uniform(key, shape, dtype=dtype)
    return jnp.stack([alpha, 1.0 - alpha])
  w = jax.random.dirichlet(key, jnp.ones((k,), dtype), shape=shape, dtype=dtype)
  return jnp.moveaxis(w, -1, 0)


def partners(key: jax.Array, h: jax.Array, k: int) -> jax.Array:
  """Stacks a batch with ``k - 1`` random re-orderings of itself.

  Args:
    key: random key.
    h: shape ``(B, *features)``.
    k: number of sources, ``k >= 2``.

  Returns:
    ``hs`` of shape ``(k, B, *features)``: ``hs[0] == h`` and ``hs[i] == h[perm_i]`` for
    independent uniform permutations ``perm_i`` of the batch (an example may meet itself).
  """
  if k < 2:
    raise ValueError(f"partners needs k >= 2 sources; got k={k}")
  batch = h.shape[0]
  perms = [jax.random.permutation(sub, batch) for sub in jax.random.split(key, k - 1)]
  return jnp.stack([h] + [h[p] for p in perms])


def mixup(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Convex combination of the sources, one point on the simplex per example.

  k=2: ``alpha ~ U(0, 1)`` per example, ``mixed = alpha*hs[0] + (1-alpha)*hs[1]``.
  k>2: weights ``~ Dirichlet(1, ..., 1)`` per example (Eq. 6 of the paper).

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and ``weights`` of shape ``(k, B, 1, ..., 1)``.
  """
  k, batch, features = _check_sources(hs)
  w = _simplex_weights(key, k, (batch,), hs.dtype)
  return _combine(hs, w.reshape((k, batch) + (1,) * len(features)))


def mixup_per_channel(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Like :func:`mixup`, with a separate simplex point per example and channel.

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``, channels last.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and ``weights`` of shape ``(k, B, 1, ..., 1, C)``:
    constant over the spatial axes.
  """
  k, batch, features = _check_sources(hs)
  channels = features[-1]
  w = _simplex_weights(key, k, (batch, channels), hs.dtype)
  return _combine(hs, w.reshape((k, batch) + (1,) * (len(features) - 1) + (channels,)))


def bernoulli(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Crossover of whole channels (Bernoulli mixup, Eq. 5 of the paper).

  k=2: one ``p ~ U(0, 1)`` per call (i.e. per minibatch), then a mask ``m ~ Bern(p)`` per example
  and channel, constant over the spatial axes; ``mixed = m*hs[0] + (1-m)*hs[1]``.
  k>2: each channel of each example comes from one source chosen uniformly among the k.

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``, channels last.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and one-hot ``weights`` (values in {0, 1}) of shape
    ``(k, B, 1, ..., 1, C)``.
  """
  k, batch, features = _check_sources(hs)
  mask_shape = (batch,) + (1,) * (len(features) - 1) + (features[-1],)
  if k == 2:
    key_p, key_m = jax.random.split(key)
    p = jax.random.uniform(key_p, (), dtype=hs.dtype)
    m = jax.random.bernoulli(key_m, p, mask_shape).astype(hs.dtype)
    w = jnp.stack([m, 1.0 - m])
  else:
    choice = jax.random.randint(key, mask_shape, 0, k)
    w = jnp.moveaxis(jax.nn.one_hot(choice, k, dtype=hs.dtype), -1, 0)
  return _combine(hs, w)


def _box_mask(key: jax.Array, batch: int, sizes: tuple[int, ...]) -> jax.Array:
  """A random axis-aligned box per example over a grid of ``sizes``, shape (B, *sizes), bool.

  The box's volume fraction ~ U(0, 1) (each side is that fraction to the power 1/len(sizes));
  it lies wholly inside the grid at a uniform position; a cell belongs to it when its centre does.
  """
  key_area, key_pos = jax.random.split(key)
  area = jax.random.uniform(key_area, (batch, 1))
  side = area ** (1.0 / len(sizes))  # fraction of each axis covered
  extent = jnp.asarray(sizes, jnp.float32)
  length = side * extent  # (B, n)
  start = jax.random.uniform(key_pos, (batch, len(sizes))) * (extent - length)
  inside = jnp.ones((batch,) + sizes, bool)
  for axis, size in enumerate(sizes):
    centres = jnp.arange(size, dtype=jnp.float32) + 0.5
    lo = start[:, axis:axis + 1]
    hi = lo + length[:, axis:axis + 1]
    along = (centres >= lo) & (centres < hi)  # (B, size)
    shape = [batch] + [1] * len(sizes)
    shape[1 + axis] = size
    inside = inside & along.reshape(shape)
  return inside


def spatial(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """CutMix in feature space: a rectangular region of the code comes from another source.

  Proposed in the paper's discussion. For feature maps ``(H, W, C)`` the region is a rectangle of
  the spatial grid, all channels together; for flat vectors ``(D,)`` it is a contiguous block of
  features. The region's area fraction ~ U(0, 1) and its position is uniform, per example.
  k>2: starting from source 0, the region of each source 1..k-1 is pasted on top in turn.

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``, channels last.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and one-hot ``weights`` of shape ``(k, B, H, W, 1)``
    (feature maps) or ``(k, B, D)`` (flat vectors).
  """
  k, batch, features = _check_sources(hs)
  region = features[:-1] if len(features) > 1 else features
  owner = jnp.zeros((batch,) + region, jnp.int32)  # which source each cell comes from
  for source, sub in enumerate(jax.random.split(key, k - 1), start=1):
    owner = jnp.where(_box_mask(sub, batch, region), source, owner)
  w = jnp.moveaxis(jax.nn.one_hot(owner, k, dtype=hs.dtype), -1, 0)
  if len(features) > 1:
    w = w[..., None]
  return _combine(hs, w)


_MIXERS: dict[str, Mixer] = {
    "mixup": mixup,
    "mixup_per_channel": mixup_per_channel,
    "bernoulli": bernoulli,
    "spatial": spatial,
}


def names() -> tuple[str, ...]:
  """The names :func:`get` accepts."""
  return tuple(_MIXERS)


def get(name: str) -> Mixer:
  """Returns the mixer called ``name``: one of 'mixup', 'mixup_per_channel', 'bernoulli',
  'spatial'."""
  try:
    return _MIXERS[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown mixer {name!r}; allowed: {', '.join(_MIXERS)}") from None


def interpolate(h1: jax.Array, h2: jax.Array, num: int) -> jax.Array:
  """Deterministic linear path from ``h1`` to ``h2``.

  Args:
    h1, h2: codes of the same shape ``S`` (one code or a batch).
    num: number of points, ``>= 2``.

  Returns:
    shape ``(num, *S)``; entry i is ``(1 - a_i) * h1 + a_i * h2`` with ``a = linspace(0, 1, num)``,
    so it starts at ``h1`` and ends at ``h2``.
  """
  alpha = jnp.linspace(0.0, 1.0, num, dtype=h1.dtype).reshape((num,) + (1,) * h1.ndim)
  return (1.0 - alpha) * h1[None] + alpha * h2[None]


def interpolate_channels(h1: jax.Array, h2: jax.Array, num: int) -> jax.Array:
  """Deterministic Bernoulli-style path: swap a growing number of channels from ``h1`` to ``h2``.

  Channels are swapped in a fixed order (0, 1, ..., C-1); entry i takes its first
  ``round(i * C / (num - 1))`` channels from ``h2`` and the rest from ``h1``.

  Args:
    h1, h2: codes of the same shape ``S``, channels last.
    num: number of points, ``>= 2``.

  Returns:
    shape ``(num, *S)``, starting at ``h1`` and ending at ``h2``.
  """
  channels = h1.shape[-1]
  swapped = jnp.round(jnp.linspace(0.0, channels, num))  # how many channels come from h2
  from_h2 = jnp.arange(channels)[None, :] < swapped[:, None]  # (num, C)
  from_h2 = from_h2.reshape((num,) + (1,) * (h1.ndim - 1) + (channels,))
  return jnp.where(from_h2, h2[None], h1[None])
