"""The linear probe's accuracy on the validation and test splits, and the best so far.

The probe trains inside the train step on the codes (gradients stopped at the encoder); this
evaluator measures it over every example of each split once, sharded like training. It keeps, per
seed, the best validation accuracy so far with the test accuracy and step where it was reached
(saved with each checkpoint): the number the paper's tables report.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from amr_jax import model
from amr_jax import parallel
from amr_jax.evaluators import common
from amr_jax.train_state import TrainState

_BEST = ("best_valid_probe_acc", "test_probe_acc_at_best", "best_step")


def make_correct_count(probe_logits: Callable, mesh: Mesh, *,
                       per_seed: Callable | None = None) -> Callable:
  """Jitted ``count(state, images, labels, weights) -> number of correct weighted examples``.

  ``per_seed``, when given, maps the count over a leading seeds axis of the state (the images,
  labels and weights are shared), and the count then has that axis too.
  """

  def count(state: TrainState, images: jax.Array, labels: jax.Array, weights: jax.Array):
    correct = jnp.argmax(probe_logits(state, images), -1) == labels
    return jnp.sum(correct * weights)

  if per_seed is not None:
    count = per_seed(count, shared=(1, 2, 3))
  return parallel.jit_data_parallel(count, mesh, batch_args=(1, 2, 3), num_args=4)


def probe_accuracy(count: Callable, state: TrainState, mesh: Mesh, images: np.ndarray,
                   labels: np.ndarray, batch_size: int) -> np.ndarray:
  """Accuracy of the probe on (images, labels): shape () or (seeds,) as ``count`` returns. The
  last batch is padded with weight-0 rows, so every example counts exactly once whatever the
  number of devices and processes."""
  correct = [count(state, batch["image"], batch["label"], batch["weight"])
             for batch in common.padded_batches(mesh, {"image": images, "label": labels},
                                                batch_size)]
  return np.sum([parallel.to_host(c) for c in correct], axis=0) / len(labels)


class Evaluator(common.Evaluator):
  """Metrics: valid_probe_acc, test_probe_acc, best_valid_probe_acc, test_probe_acc_at_best,
  best_step."""

  def __init__(self, context: common.Context, **options: Any):
    super().__init__(context, **options)
    logits = functools.partial(model.probe_logits, context.nets, context.config)
    self._count = make_correct_count(
        logits, context.mesh, per_seed=context.per_seed if context.num_seeds > 1 else None)
    n = context.num_seeds
    self._best = {"best_valid_probe_acc": [-1.0] * n, "test_probe_acc_at_best": [-1.0] * n,
                  "best_step": [-1] * n}

  def _accuracy(self, state: TrainState, split) -> np.ndarray:
    return np.atleast_1d(probe_accuracy(self._count, state, self.context.mesh, split.images,
                                        split.labels, self.context.config.eval_batch_size))

  def evaluate(self, state: TrainState, step: int) -> common.Evaluation:
    valid = self._accuracy(state, self.context.dataset.valid)
    test = self._accuracy(state, self.context.dataset.test)
    for i in range(self.context.num_seeds):
      if valid[i] > self._best["best_valid_probe_acc"][i]:
        self._best["best_valid_probe_acc"][i] = float(valid[i])
        self._best["test_probe_acc_at_best"][i] = float(test[i])
        self._best["best_step"][i] = step
    return common.Evaluation(metrics={
        "valid_probe_acc": valid.tolist(), "test_probe_acc": test.tolist(),
        **{k: list(v) for k, v in self._best.items()}})

  def meta(self) -> dict[str, Any]:
    return {k: list(v) for k, v in self._best.items()}

  def restore(self, meta: dict[str, Any]) -> None:
    self._best.update({k: list(meta[k]) for k in _BEST if k in meta})
