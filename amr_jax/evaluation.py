"""Probe accuracy over a whole split, sharded like training, each example counted once."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from amr_jax import parallel
from amr_jax.train_state import TrainState


def make_correct_count(probe_logits: Callable, mesh: Mesh) -> Callable:
  """Jitted ``count(state, images, labels, weights) -> number of correct weighted examples``."""

  def count(state: TrainState, images: jax.Array, labels: jax.Array, weights: jax.Array):
    correct = jnp.argmax(probe_logits(state, images), -1) == labels
    return jnp.sum(correct * weights)

  return parallel.jit_data_parallel(count, mesh, batch_args=(1, 2, 3), num_args=4)


def probe_accuracy(count: Callable, state: TrainState, mesh: Mesh, images: np.ndarray,
                   labels: np.ndarray, batch_size: int) -> float:
  """Accuracy of the probe on (images, labels). The last batch is padded with weight-0 rows, so
  every example counts exactly once whatever the number of devices and processes."""
  total = len(labels)
  correct = []
  for start in range(0, total, batch_size):
    positions = np.arange(start, start + batch_size)
    weights = (positions < total).astype(np.float32)
    positions = np.minimum(positions, total - 1)
    rows = parallel.local_rows(batch_size)
    local = {"image": images[positions[rows]], "label": labels[positions[rows]],
             "weight": weights[rows]}
    batch = parallel.global_batch(mesh, local)
    correct.append(count(state, batch["image"], batch["label"], batch["weight"]))
  return float(sum(parallel.to_host(c) for c in correct)) / total
