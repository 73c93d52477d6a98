"""Linear evaluation on frozen codes: a fresh linear classifier fitted to convergence.

The ``probe`` evaluator reports the probe that trains inside the train step, one Adam step per
batch at the generator's learning rate: it measures the codes *and* how far that probe has got.
This evaluator separates the two. It encodes the training split with the current encoder, fits a
multinomial logistic regression on the standardised codes (lbfgs, to convergence), picks its
L2 strength on the validation split and reports validation and test accuracy there: the usual
"linear evaluation" of a representation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from amr_jax.evaluators import common
from amr_jax.train_state import TrainState

# Inverse L2 strengths tried (sklearn's C); the one with the best validation accuracy is kept.
INVERSE_L2 = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def fit_linear_probe(train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
                     test: tuple[np.ndarray, np.ndarray], *,
                     inverse_l2: Sequence[float] = INVERSE_L2,
                     max_iter: int = 1000, seed: int = 0) -> dict[str, float]:
  """Fits a linear classifier on frozen features and scores it.

  Args:
    train, valid, test: (features (N, D), labels (N,) int) of each split.
    inverse_l2: the values of sklearn's ``C`` tried; the best on ``valid`` is kept (the first of
      equals).
    max_iter: most lbfgs iterations per fit.
    seed: the classifier's ``random_state``.

  Returns:
    ``{"frozen_probe_valid_acc", "frozen_probe_test_acc", "frozen_probe_train_acc",
    "frozen_probe_inverse_l2"}`` at the chosen C.

  Features are standardised with the training split's per-dimension mean and std (a constant
  dimension is left unscaled), so the result does not depend on the codes' scale.
  """
  from sklearn.linear_model import LogisticRegression  # a slow import; only this metric needs it

  (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = train, valid, test
  mean, std = train_x.mean(axis=0), train_x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  scale = lambda x: (np.asarray(x, np.float64) - mean) / std
  train_x, valid_x, test_x = scale(train_x), scale(valid_x), scale(test_x)
  best = None
  for c in inverse_l2:
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(train_x, train_y)
    valid_acc = float(np.mean(model.predict(valid_x) == valid_y))
    if best is None or valid_acc > best[0]:
      best = valid_acc, c, model
  valid_acc, c, model = best
  return {"frozen_probe_valid_acc": valid_acc,
          "frozen_probe_test_acc": float(np.mean(model.predict(test_x) == test_y)),
          "frozen_probe_train_acc": float(np.mean(model.predict(train_x) == train_y)),
          "frozen_probe_inverse_l2": float(c)}


class Evaluator(common.Evaluator):
  """Metrics: frozen_probe_valid_acc, frozen_probe_test_acc, frozen_probe_train_acc,
  frozen_probe_inverse_l2 (per seed).

  Options: ``num_train``, the training examples fitted on (the split's first ones; fewer if the
  split is smaller), and ``max_iter``, lbfgs's most iterations per fit.
  """
  OPTIONS = {"num_train": 50_000, "max_iter": 1000}

  def __init__(self, context: common.Context, **options: Any):
    super().__init__(context, **options)
    self._encode = common.make_encode(context)

  def scores(self, state: TrainState) -> dict[str, float]:
    """The metrics of one seed's ``state`` (no seeds axis)."""
    ctx = self.context
    dataset, batch_size = ctx.dataset, ctx.config.eval_batch_size

    def split(s, limit=None):
      images = s.images if limit is None else s.images[:limit]
      codes = common.encode_all(self._encode, state, ctx.mesh, images, batch_size)
      return codes, np.asarray(s.labels[:len(codes)])

    return fit_linear_probe(split(dataset.train, self.options["num_train"]),
                            split(dataset.valid), split(dataset.test),
                            max_iter=self.options["max_iter"])

  def evaluate(self, state: TrainState, step: int) -> common.Evaluation:
    del step
    per_seed = [self.scores(self.context.select(state, i)) for i in range(self.context.num_seeds)]
    return common.Evaluation(metrics={k: [s[k] for s in per_seed] for k in per_seed[0]})
