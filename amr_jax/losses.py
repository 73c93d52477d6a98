"""Loss terms of AMR as plain functions of arrays (means over the batch).

Every function returns a scalar; none of them holds parameters, so the train step composes them
exactly as the paper writes its objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

RECONSTRUCTION = ("l1", "l2", "bce")
GAN = ("bce", "bce_clamped", "lsgan")
# PyTorch's BCELoss clamps each log at -100 and divides its backward by max(p (1 - p), 1e-12).
_LOG_FLOOR = -100.0
_TORCH_BCE_EPSILON = 1e-12


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

  'bce' is the Jensen-Shannon GAN of the paper; 'bce_clamped' the same loss as the authors'
  PyTorch code computes it (:func:`bce_clamped`); 'lsgan' the least-squares GAN (Mao et al.).
  """
  target = jnp.full_like(logits, 1.0 if real else 0.0)
  if kind == "bce":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
  if kind == "bce_clamped":
    return bce_clamped(logits, target)
  if kind == "lsgan":
    return jnp.mean(jnp.square(logits - target))
  raise ValueError(f"unknown GAN loss {kind!r}; allowed: {GAN}")


def bce_clamped(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean binary cross-entropy as PyTorch's ``nn.BCELoss()(torch.sigmoid(logits), targets)``.

  The authors' discriminator ends in a sigmoid and their loss is BCE on the probability ``p``:
  ``-mean(t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))``. Its gradient is theirs too:
  PyTorch's BCE backward ``(p - t) / max(p (1 - p), 1e-12)`` times the sigmoid's ``p (1 - p)``,
  which is 0 where ``p`` rounds to 1 in float32 (logits above ~17) or to 0 (below ~-104), and
  shrinks below logits of ~-28 (where ``p (1 - p) < 1e-12``); optax's
  ``sigmoid_binary_cross_entropy`` keeps ``sigmoid(logits) - t`` there.

  Args:
    logits: D's logits, any shape.
    targets: probabilities of "1", the shape of ``logits`` (or broadcasting to it).

  Returns:
    The scalar mean over every element.
  """
  return _bce_clamped(logits, jnp.broadcast_to(targets, logits.shape).astype(logits.dtype))


@jax.custom_vjp
def _bce_clamped(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return _bce_clamped_forward(logits, targets)[0]


def _bce_clamped_forward(logits, targets):
  p = jax.nn.sigmoid(logits)
  log_p = jnp.maximum(jnp.log(p), _LOG_FLOOR)
  log_not_p = jnp.maximum(jnp.log1p(-p), _LOG_FLOOR)
  loss = -jnp.mean(targets * log_p + (1.0 - targets) * log_not_p)
  return loss, (p, targets, log_p, log_not_p)


def _bce_clamped_backward(residuals, g):
  p, targets, log_p, log_not_p = residuals
  scale = g / p.size  # the mean's backward
  # BCELoss's backward, then the sigmoid's, in PyTorch's order of operations.
  grad_p = scale * (p - targets) / jnp.maximum((1.0 - p) * p, _TORCH_BCE_EPSILON)
  grad_logits = grad_p * (1.0 - p) * p
  grad_targets = scale * (log_not_p - log_p)
  return grad_logits, grad_targets


_bce_clamped.defvjp(_bce_clamped_forward, _bce_clamped_backward)


def discriminator_accuracy(logits: jax.Array, real: bool) -> jax.Array:
  """Fraction of ``logits`` on the right side of the decision boundary (0 for BCE logits)."""
  return jnp.mean((logits > 0) == real)


def classification(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Softmax cross-entropy and accuracy of ``logits`` (B, classes) against int ``labels`` (B,)."""
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, accuracy
