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

The randomness is exposed for code that must feed given draws (tests against another
implementation, research code): each mixer is ``combine(hs, sample_<name>(key, hs.shape,
hs.dtype))``, where the sampler draws the weights from the shape alone (:func:`get_sampler`),
and :func:`partners` is ``stack_partners(h, permutations(key, B, k))``. Calling the pieces with
the same key gives bit-for-bit the mixer's and :func:`partners`'s results.

This module depends only on jax, so it can be copied into other projects.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Mixer = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
# sampler(key, shape of hs (k, B, *features), dtype) -> weights (k, B, *s) as the mixer returns.
Sampler = Callable[..., jax.Array]

__all__ = [
    "Mixer",
    "Sampler",
    "partners",
    "permutations",
    "stack_partners",
    "combine",
    "mixup",
    "mixup_per_channel",
    "bernoulli",
    "spatial",
    "sample_mixup",
    "sample_mixup_per_channel",
    "sample_bernoulli",
    "sample_spatial",
    "get",
    "get_sampler",
    "names",
    "interpolate",
    "interpolate_channels",
]


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
  """(k, B, features) of the sources' shape (k, B, *features), checked."""
  shape = tuple(shape)
  if len(shape) < 3:
    raise ValueError(
        f"hs must have shape (k, B, *features) with at least one feature axis; got shape "
        f"{shape}")
  k = shape[0]
  if k < 2:
    raise ValueError(f"a mix needs k >= 2 sources; got k={k} (hs.shape={shape})")
  return k, shape[1], shape[2:]


def combine(hs: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mixes sources with given weights: ``(sum(weights * hs, axis=0), weights)``.

  Args:
    hs: shape ``(k, B, *features)``.
    weights: shape broadcasting against ``hs`` (as a sampler returns them); cast to hs's dtype.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and the weights, as a mixer returns them.
  """
  _check_shape(hs.shape)
  weights = weights.astype(hs.dtype)
  if weights.ndim != hs.ndim or any(w not in (1, n) for w, n in zip(weights.shape, hs.shape)):
    raise ValueError(f"weights of shape {weights.shape} do not broadcast against sources of "
                     f"shape {hs.shape}")
  return jnp.sum(weights * hs, axis=0), weights


def _simplex_weights(key: jax.Array, k: int, shape: tuple[int, ...], dtype) -> jax.Array:
  """Points on the (k-1)-simplex, shape (k, *shape): U(0,1) for k=2, Dirichlet(1..1) above."""
  if k == 2:
    alpha = jax.random.uniform(key, shape, dtype=dtype)
    return jnp.stack([alpha, 1.0 - alpha])
  w = jax.random.dirichlet(key, jnp.ones((k,), dtype), shape=shape, dtype=dtype)
  return jnp.moveaxis(w, -1, 0)


def permutations(key: jax.Array, batch: int, k: int) -> jax.Array:
  """The draws of :func:`partners`: ``k - 1`` independent uniform permutations of the batch.

  Args:
    key: random key.
    batch: batch size ``B``.
    k: number of sources, ``k >= 2``.

  Returns:
    int32 indices of shape ``(k - 1, B)``; row ``i`` is the order of source ``i + 1``.
  """
  if k < 2:
    raise ValueError(f"partners needs k >= 2 sources; got k={k}")
  return jnp.stack([jax.random.permutation(sub, batch) for sub in jax.random.split(key, k - 1)])


def stack_partners(h: jax.Array, perms: jax.Array) -> jax.Array:
  """Stacks a batch with given re-orderings of itself.

  Args:
    h: shape ``(B, *features)``.
    perms: integer indices of shape ``(k - 1, B)``, each row a permutation of ``range(B)``
      (as :func:`permutations` draws them, or as another implementation drew them).

  Returns:
    ``hs`` of shape ``(k, B, *features)``: ``hs[0] == h`` and ``hs[i] == h[perms[i - 1]]``.
  """
  if perms.ndim != 2 or perms.shape[1] != h.shape[0]:
    raise ValueError(f"perms must have shape (k - 1, B) with B={h.shape[0]}; got {perms.shape}")
  return jnp.stack([h] + [h[p] for p in perms])


def partners(key: jax.Array, h: jax.Array, k: int) -> jax.Array:
  """Stacks a batch with ``k - 1`` random re-orderings of itself.

  Args:
    key: random key.
    h: shape ``(B, *features)``.
    k: number of sources, ``k >= 2``.

  Returns:
    ``hs`` of shape ``(k, B, *features)``: ``hs[0] == h`` and ``hs[i] == h[perm_i]`` for
    independent uniform permutations ``perm_i`` of the batch (an example may meet itself);
    ``stack_partners(h, permutations(key, B, k))``.
  """
  return stack_partners(h, permutations(key, h.shape[0], k))


def sample_mixup(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """The weights :func:`mixup` draws for sources of ``shape`` ``(k, B, *features)``.

  Returns:
    shape ``(k, B, 1, ..., 1)``: ``[alpha, 1 - alpha]`` with ``alpha ~ U(0, 1)`` per example for
    k=2, ``Dirichlet(1, ..., 1)`` per example for k>2.
  """
  k, batch, features = _check_shape(shape)
  w = _simplex_weights(key, k, (batch,), dtype)
  return w.reshape((k, batch) + (1,) * len(features))


def mixup(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Convex combination of the sources, one point on the simplex per example.

  k=2: ``alpha ~ U(0, 1)`` per example, ``mixed = alpha*hs[0] + (1-alpha)*hs[1]``.
  k>2: weights ``~ Dirichlet(1, ..., 1)`` per example (Eq. 6 of the paper).
  ``combine(hs, sample_mixup(key, hs.shape, hs.dtype))``.

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and ``weights`` of shape ``(k, B, 1, ..., 1)``.
  """
  return combine(hs, sample_mixup(key, hs.shape, hs.dtype))


def sample_mixup_per_channel(key: jax.Array, shape: tuple[int, ...],
                             dtype=jnp.float32) -> jax.Array:
  """The weights :func:`mixup_per_channel` draws for sources of ``shape`` ``(k, B, *features)``.

  Returns:
    shape ``(k, B, 1, ..., 1, C)``: a point of the simplex per example and channel (k=2:
    ``[alpha, 1 - alpha]``, ``alpha ~ U(0, 1)``; k>2: ``Dirichlet(1, ..., 1)``).
  """
  k, batch, features = _check_shape(shape)
  channels = features[-1]
  w = _simplex_weights(key, k, (batch, channels), dtype)
  return w.reshape((k, batch) + (1,) * (len(features) - 1) + (channels,))


def mixup_per_channel(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Like :func:`mixup`, with a separate simplex point per example and channel.

  ``combine(hs, sample_mixup_per_channel(key, hs.shape, hs.dtype))``.

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``, channels last.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and ``weights`` of shape ``(k, B, 1, ..., 1, C)``:
    constant over the spatial axes.
  """
  return combine(hs, sample_mixup_per_channel(key, hs.shape, hs.dtype))


def sample_bernoulli(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """The one-hot weights :func:`bernoulli` draws for sources of ``shape`` ``(k, B, *features)``.

  Returns:
    shape ``(k, B, 1, ..., 1, C)``, values in {0, 1}: k=2, ``[m, 1 - m]`` with ``m ~ Bern(p)``
    per example and channel and one ``p ~ U(0, 1)`` per call; k>2, a uniform choice of source
    per example and channel.
  """
  k, batch, features = _check_shape(shape)
  mask_shape = (batch,) + (1,) * (len(features) - 1) + (features[-1],)
  if k == 2:
    key_p, key_m = jax.random.split(key)
    p = jax.random.uniform(key_p, (), dtype=dtype)
    m = jax.random.bernoulli(key_m, p, mask_shape).astype(dtype)
    return jnp.stack([m, 1.0 - m])
  choice = jax.random.randint(key, mask_shape, 0, k)
  return jnp.moveaxis(jax.nn.one_hot(choice, k, dtype=dtype), -1, 0)


def bernoulli(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Crossover of whole channels (Bernoulli mixup, Eq. 5 of the paper).

  k=2: one ``p ~ U(0, 1)`` per call (i.e. per minibatch), then a mask ``m ~ Bern(p)`` per example
  and channel, constant over the spatial axes; ``mixed = m*hs[0] + (1-m)*hs[1]``.
  k>2: each channel of each example comes from one source chosen uniformly among the k.
  ``combine(hs, sample_bernoulli(key, hs.shape, hs.dtype))``.

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``, channels last.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and one-hot ``weights`` (values in {0, 1}) of shape
    ``(k, B, 1, ..., 1, C)``.
  """
  return combine(hs, sample_bernoulli(key, hs.shape, hs.dtype))


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


def sample_spatial(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """The one-hot weights :func:`spatial` draws for sources of ``shape`` ``(k, B, *features)``.

  Returns:
    shape ``(k, B, H, W, 1)`` (feature maps) or ``(k, B, D)`` (flat vectors), values in {0, 1}:
    which source each cell of each example comes from.
  """
  k, batch, features = _check_shape(shape)
  region = features[:-1] if len(features) > 1 else features
  owner = jnp.zeros((batch,) + region, jnp.int32)  # which source each cell comes from
  for source, sub in enumerate(jax.random.split(key, k - 1), start=1):
    owner = jnp.where(_box_mask(sub, batch, region), source, owner)
  w = jnp.moveaxis(jax.nn.one_hot(owner, k, dtype=dtype), -1, 0)
  return w[..., None] if len(features) > 1 else w


def spatial(key: jax.Array, hs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """CutMix in feature space: a rectangular region of the code comes from another source.

  Proposed in the paper's discussion. For feature maps ``(H, W, C)`` the region is a rectangle of
  the spatial grid, all channels together; for flat vectors ``(D,)`` it is a contiguous block of
  features. The region's area fraction ~ U(0, 1) and its position is uniform, per example.
  k>2: starting from source 0, the region of each source 1..k-1 is pasted on top in turn.
  ``combine(hs, sample_spatial(key, hs.shape, hs.dtype))``.

  Args:
    key: random key.
    hs: shape ``(k, B, *features)``, channels last.

  Returns:
    ``mixed`` of shape ``(B, *features)`` and one-hot ``weights`` of shape ``(k, B, H, W, 1)``
    (feature maps) or ``(k, B, D)`` (flat vectors).
  """
  return combine(hs, sample_spatial(key, hs.shape, hs.dtype))


_MIXERS: dict[str, Mixer] = {
    "mixup": mixup,
    "mixup_per_channel": mixup_per_channel,
    "bernoulli": bernoulli,
    "spatial": spatial,
}
_SAMPLERS: dict[str, Sampler] = {
    "mixup": sample_mixup,
    "mixup_per_channel": sample_mixup_per_channel,
    "bernoulli": sample_bernoulli,
    "spatial": sample_spatial,
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


def get_sampler(name: str) -> Sampler:
  """Returns the sampler of the mixer called ``name``: ``sample(key, hs_shape, dtype) ->
  weights``, so that ``get(name)(key, hs) == combine(hs, sample(key, hs.shape, hs.dtype))``."""
  get(name)  # the same error for an unknown name
  return _SAMPLERS[name]


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
