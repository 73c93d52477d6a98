"""Evaluation: probe accuracy over a whole split (each example counted once, sharded like
training) and disentanglement metrics on the codes."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from amr_jax import disentanglement
from amr_jax import parallel
from amr_jax.train_state import TrainState


def make_correct_count(probe_logits: Callable, mesh: Mesh, *,
                       over_seeds: Callable | None = None) -> Callable:
  """Jitted ``count(state, images, labels, weights) -> number of correct weighted examples``.

  ``over_seeds``, when given, maps the count over a leading seeds axis of the state (the images,
  labels and weights are shared), and the count then has that axis too.
  """

  def count(state: TrainState, images: jax.Array, labels: jax.Array, weights: jax.Array):
    correct = jnp.argmax(probe_logits(state, images), -1) == labels
    return jnp.sum(correct * weights)

  if over_seeds is not None:
    count = over_seeds(count)
  return parallel.jit_data_parallel(count, mesh, batch_args=(1, 2, 3), num_args=4)


def _padded_batches(mesh: Mesh, arrays: dict[str, np.ndarray], batch_size: int):
  """Global batches covering ``arrays`` (each indexed by example) in order, the last one padded
  by repeating the final example; each carries 'weight' (1, or 0 on padding). Every process
  supplies only its own rows, so this works for any number of devices and processes."""
  total = len(next(iter(arrays.values())))
  rows = parallel.local_rows(batch_size)
  for start in range(0, total, batch_size):
    positions = np.arange(start, start + batch_size)
    weights = (positions < total).astype(np.float32)
    positions = np.minimum(positions, total - 1)[rows]
    local = {name: values[positions] for name, values in arrays.items()}
    yield parallel.global_batch(mesh, {**local, "weight": weights[rows]})


def probe_accuracy(count: Callable, state: TrainState, mesh: Mesh, images: np.ndarray,
                   labels: np.ndarray, batch_size: int) -> np.ndarray:
  """Accuracy of the probe on (images, labels): shape () or (seeds,) as ``count`` returns. The
  last batch is padded with weight-0 rows, so every example counts exactly once whatever the
  number of devices and processes."""
  correct = [count(state, batch["image"], batch["label"], batch["weight"])
             for batch in _padded_batches(mesh, {"image": images, "label": labels}, batch_size)]
  return np.sum([parallel.to_host(c) for c in correct], axis=0) / len(labels)


def make_encode(code_fn: Callable, mesh: Mesh) -> Callable:
  """Jitted ``encode(state, images) -> codes`` (replicated), for metrics on the codes."""
  return parallel.jit_data_parallel(code_fn, mesh, batch_args=(1,), num_args=2)


def encode_all(encode: Callable, state: TrainState, mesh: Mesh, images: np.ndarray,
               batch_size: int) -> np.ndarray:
  """Codes of every image, batch by batch, the last batch padded (and the padding dropped)."""
  codes = [parallel.to_host(encode(state, batch["image"]))
           for batch in _padded_batches(mesh, {"image": images}, batch_size)]
  return np.concatenate(codes)[:len(images)].reshape(len(images), -1)


def disentanglement_scores(encode: Callable, state: TrainState, mesh: Mesh, render: Callable,
                           factor_sizes: tuple[int, ...], settings: Any, batch_size: int,
                           seed: int) -> dict[str, float]:
  """FactorVAE, beta-VAE and the AMR authors' FactorVAE variant on the encoder's codes.

  Args:
    render: factor indices (N, F) -> images (N, H, W, C) in [-1, 1].
    settings: ``config.disentanglement`` (num_votes, votes_batch, beta_vae_train,
      beta_vae_eval, beta_vae_batch).
  """
  def represent(factors: np.ndarray) -> np.ndarray:
    return encode_all(encode, state, mesh, render(factors), batch_size)

  factor_vae = disentanglement.factor_vae_metric(
      represent, factor_sizes, seed=seed, num_votes=settings.num_votes,
      batch_size=settings.votes_batch)
  authors = disentanglement.authors_factor_vae_metric(
      represent, factor_sizes, seed=seed, num_votes=settings.num_votes,
      batch_size=settings.votes_batch)
  beta_vae = disentanglement.beta_vae_metric(
      represent, factor_sizes, seed=seed, num_train=settings.beta_vae_train,
      num_eval=settings.beta_vae_eval, batch_size=settings.beta_vae_batch)
  return {"factor_vae_accuracy": float(factor_vae["factor_vae_accuracy"]),
          "factor_vae_active_dims": float(factor_vae["num_active_dims"]),
          "authors_factor_vae_accuracy": float(authors["authors_factor_vae_accuracy"]),
          "beta_vae_accuracy": float(beta_vae["beta_vae_accuracy"])}
