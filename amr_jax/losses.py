"""Loss terms of AMR as plain functions of arrays (means over the batch).

Every function returns a scalar; none of them holds parameters, so the train step composes them
exactly as the paper writes its objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

RECONSTRUCTION = ("l1", "l2", "bce")
GAN = ("bce", "lsgan")


def reconstruction(kind: str, prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Mean reconstruction error between ``prediction`` and ``target`` (same shape).

  'l1' and 'l2' compare values directly. 'bce' treats ``prediction`` as a logit and ``target``
  in [-1, 1] as the probability ``(target + 1) / 2`` (for near-binary images such as dSprites).
  """
  if kind == "l1":
    return jnp.mean(jnp.abs(prediction - target))
  if kind == "l2":
    return jnp.mean(jnp.square(prediction - target))
  if kind == "bce":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(prediction, (target + 1.0) / 2.0))
  raise ValueError(f"unknown reconstruction loss {kind!r}; allowed: {RECONSTRUCTION}")


def gan(kind: str, logits: jax.Array, real: bool) -> jax.Array:
  """GAN loss of discriminator ``logits`` (B,) against the label real (1) or fake (0).

  'bce' is the Jensen-Shannon GAN of the paper; 'lsgan' the least-squares GAN (Mao et al.).
  """
  target = jnp.full_like(logits, 1.0 if real else 0.0)
  if kind == "bce":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
  if kind == "lsgan":
    return jnp.mean(jnp.square(logits - target))
  raise ValueError(f"unknown GAN loss {kind!r}; allowed: {GAN}")


def discriminator_accuracy(logits: jax.Array, real: bool) -> jax.Array:
  """Fraction of ``logits`` on the right side of the decision boundary (0 for BCE logits)."""
  return jnp.mean((logits > 0) == real)


def classification(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Softmax cross-entropy and accuracy of ``logits`` (B, classes) against int ``labels`` (B,)."""
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, accuracy
