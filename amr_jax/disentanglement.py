"""Disentanglement metrics on ground-truth factors (dSprites, table 4 of the paper).

Every metric takes a representation function of ground-truth factor *indices*, never images::

    codes = represent(factors)

- ``factors``: int64 array of shape ``(N, F)``; column ``j`` holds indices in
  ``[0, factor_sizes[j])``. For dSprites ``factor_sizes = (3, 6, 40, 32, 32)`` (shape, scale,
  orientation, x, y; the constant colour factor is left out).
- ``codes``: float array of shape ``(N, D)``; ``D`` need not equal ``F``. Codes of shape
  ``(N, *features)`` (e.g. NHWC feature maps) are flattened to ``(N, prod(features))``.

So the module does not depend on the data pipeline: an image encoder becomes a ``represent`` by
composing it with a lookup of the images of those factors, and the tests use synthetic encoders.
``represent`` is called on at most ``chunk_size`` rows at a time, to bound memory.

All randomness comes from ``np.random.default_rng(seed)``: the same seed gives the same result,
whatever ``chunk_size`` is. Ground-truth factors are sampled uniformly and independently, which
is the distribution of dSprites (every combination appears exactly once).

Metrics:

- :func:`factor_vae_metric`: Kim & Mnih (2018), as implemented in disentanglement_lib.
- :func:`beta_vae_metric`: Higgins et al. (2017), as implemented in disentanglement_lib
  (``compute_beta_vae_sklearn``), with standardised features.
- :func:`authors_factor_vae_metric`: the variant of the FactorVAE metric that the AMR authors used
  for table 4 (``dsprite_disentanglement_fv`` in their ``tools.py``), including its quirks; its
  maximum is ``(F - 1) / F``, 0.8 on dSprites.

This module depends only on numpy (and scikit-learn for the beta-VAE metric's classifier).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Represent = Callable[[np.ndarray], np.ndarray]

__all__ = [
    "Represent",
    "factor_vae_metric",
    "beta_vae_metric",
    "authors_factor_vae_metric",
]


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------


def _check_sizes(factor_sizes: Sequence[int], min_factors: int = 1) -> np.ndarray:
  sizes = np.asarray(factor_sizes)
  if sizes.ndim != 1 or len(sizes) < min_factors:
    raise ValueError(f"factor_sizes must be a sequence of at least {min_factors} ints; got "
                     f"{factor_sizes!r}")
  if not np.issubdtype(sizes.dtype, np.integer) or np.any(sizes < 1):
    raise ValueError(f"factor_sizes must be positive ints; got {factor_sizes!r}")
  return sizes.astype(np.int64)


def _check_positive(**kwargs: int) -> None:
  for name, value in kwargs.items():
    if int(value) != value or value < 1:
      raise ValueError(f"{name} must be a positive int; got {value!r}")


def _sample_factors(rng: np.random.Generator, sizes: np.ndarray, n: int) -> np.ndarray:
  """``n`` independent uniform factor rows: int64 array of shape ``(n, F)``."""
  return rng.integers(0, sizes, size=(n, len(sizes)), dtype=np.int64)


def _represent(represent: Represent, factors: np.ndarray, chunk_size: int) -> np.ndarray:
  """``represent`` applied to ``factors`` (N, F) in chunks of at most ``chunk_size`` rows.

  Returns float64 codes of shape (N, D), trailing axes flattened. Raises ``ValueError`` on a wrong
  number of rows, on codes without a feature axis, and on non-finite codes (a diverged encoder
  should fail loudly, not score at random).
  """
  chunks = []
  for start in range(0, len(factors), chunk_size):
    rows = factors[start:start + chunk_size]
    codes = np.asarray(represent(rows))
    if codes.ndim < 2 or codes.shape[0] != len(rows):
      raise ValueError(f"represent must map factors of shape (N, F) to codes of shape (N, D); "
                       f"got {rows.shape} -> {codes.shape}")
    chunks.append(codes.reshape(len(rows), -1).astype(np.float64))
  codes = np.concatenate(chunks, axis=0)
  if codes.shape[1] == 0:
    raise ValueError(f"represent returned codes with no dimensions: shape {codes.shape}")
  if not np.all(np.isfinite(codes)):
    raise ValueError("represent returned non-finite codes")
  return codes


def _varying(variances: np.ndarray, means: np.ndarray) -> np.ndarray:
  """Mask (D,) of dimensions that are not constant: a constant c has variance 0 up to float64
  rounding (about (1e-16 c)^2, e.g. 3e-33 for c = 1/3), so the std must exceed 1e-9 |mean|."""
  return variances > np.square(1e-9 * np.abs(means))


def _fixed_factor_batches(represent: Represent, rng: np.random.Generator, sizes: np.ndarray,
                          fixed: np.ndarray, batch_size: int, chunk_size: int,
                          ddof: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-vote statistics of codes of batches that share one factor.

  For vote ``v``: a value of factor ``fixed[v]`` is drawn uniformly, then ``batch_size`` factor
  rows with that factor at that value and the other factors uniform.

  Args:
    fixed: int array of shape (V,), the factor fixed in each vote.

  Returns:
    ``(means, variances)``, each of shape (V, D): the per-dimension mean and variance (with
    ``ddof``) of the codes of each vote's batch.
  """
  votes_per_call = max(1, chunk_size // batch_size)
  means, variances = [], []
  for start in range(0, len(fixed), votes_per_call):
    group = fixed[start:start + votes_per_call]
    rows = []
    for k in group:
      batch = _sample_factors(rng, sizes, batch_size)
      batch[:, k] = rng.integers(0, sizes[k])
      rows.append(batch)
    codes = _represent(represent, np.concatenate(rows, axis=0), chunk_size)
    codes = codes.reshape(len(group), batch_size, -1)
    means.append(codes.mean(axis=1))
    variances.append(codes.var(axis=1, ddof=ddof))
  return np.concatenate(means, axis=0), np.concatenate(variances, axis=0)


# ------------------------------------------------------------------------------------------------
# FactorVAE metric (Kim & Mnih 2018, as in disentanglement_lib)
# ------------------------------------------------------------------------------------------------


def _factor_vae_votes(represent: Represent, rng: np.random.Generator, sizes: np.ndarray,
                      considered: np.ndarray, num_votes: int, batch_size: int,
                      global_variances: np.ndarray, active: np.ndarray,
                      chunk_size: int) -> np.ndarray:
  """Vote counts of shape (F, D): entry (k, d) counts votes that fixed factor k and whose
  argmin-normalised-variance dimension was d (only active dimensions can be voted for)."""
  fixed = rng.choice(considered, size=num_votes)
  _, local = _fixed_factor_batches(represent, rng, sizes, fixed, batch_size, chunk_size, ddof=1)
  active_dims = np.flatnonzero(active)
  argmin = active_dims[np.argmin(local[:, active_dims] / global_variances[active_dims], axis=1)]
  votes = np.zeros((len(sizes), len(global_variances)), dtype=np.int64)
  np.add.at(votes, (fixed, argmin), 1)
  return votes


def factor_vae_metric(represent: Represent, factor_sizes: Sequence[int], *, seed: int,
                      num_votes: int = 800, batch_size: int = 800,
                      num_variance_samples: int = 10000, factors: Sequence[int] | None = None,
                      prune_threshold: float = 0.05, chunk_size: int = 4096) -> dict[str, float]:
  """FactorVAE disentanglement metric (Kim & Mnih 2018), following disentanglement_lib.

  1. Global variances: the per-dimension variance (ddof=1) of the codes of
     ``num_variance_samples`` uniform factor rows.
  2. Pruning: dimension d is active when ``sqrt(var_d) >= prune_threshold`` and d is not
     constant (std above 1e-9 times its mean's magnitude, which float64 rounding of a constant
     stays below). As in disentanglement_lib, the threshold is on the *standard deviation*; the
     second test (absent there) keeps constant dimensions out when ``prune_threshold == 0``.
     The threshold is absolute, so codes on a tiny scale can be pruned entirely.
  3. Votes: ``num_votes`` training votes, then ``num_votes // 2`` evaluation votes (the ratio of
     disentanglement_lib's ``num_train``/``num_eval``). Each vote draws a factor k uniformly from
     ``factors``, then ``batch_size`` rows with factor k at one uniform value and the others
     uniform; its dimension is ``argmin_d var_d(batch) / global var_d`` over active d
     (dividing the variance by the global variance is the same as dividing the codes by their
     global std). The vote is the pair (dimension, k).
  4. Classifier: the majority vote, dimension d -> the factor with most training votes for d
     (ties: the lowest factor index; a dimension never voted for maps to factor 0).
     Accuracy = fraction of votes whose factor is the classifier's output for their dimension.

  A representation whose every factor has its own dimension scores 1.0, whatever the order,
  scale and offset of its dimensions and whatever extra constant dimensions it has.

  Args:
    represent: factors (N, F) int -> codes (N, D) float; see the module docstring.
    factor_sizes: number of values of each of the F factors.
    seed: seed of ``np.random.default_rng``, the only randomness.
    num_votes: training votes; evaluation uses ``max(1, num_votes // 2)`` more.
    batch_size: rows per vote (at least 2, as variances use ddof=1).
    num_variance_samples: rows for the global variances (at least 2).
    factors: indices of the factors that votes may fix; default all.
    prune_threshold: minimum global standard deviation of an active dimension.
    chunk_size: most rows passed to ``represent`` at once.

  Returns:
    ``{"factor_vae_accuracy": evaluation accuracy, "train_accuracy": training accuracy,
    "num_active_dims": number of active dimensions}``; accuracies are 0.0 when no dimension is
    active. (disentanglement_lib reports ``len`` of its boolean mask, i.e. D, as
    ``num_active_dims``; this reports the count of active dimensions.)
  """
  sizes = _check_sizes(factor_sizes)
  _check_positive(num_votes=num_votes, batch_size=batch_size,
                  num_variance_samples=num_variance_samples, chunk_size=chunk_size)
  if batch_size < 2 or num_variance_samples < 2:
    raise ValueError("batch_size and num_variance_samples must be at least 2 (variances use "
                     f"ddof=1); got {batch_size} and {num_variance_samples}")
  if factors is None:
    considered = np.arange(len(sizes))
  else:
    considered = np.unique(np.asarray(factors, dtype=np.int64))
    if considered.size == 0 or considered.min() < 0 or considered.max() >= len(sizes):
      raise ValueError(f"factors must be a non-empty subset of range({len(sizes)}); "
                       f"got {factors!r}")
  rng = np.random.default_rng(seed)
  codes = _represent(represent, _sample_factors(rng, sizes, num_variance_samples), chunk_size)
  global_variances = codes.var(axis=0, ddof=1)
  active = ((np.sqrt(global_variances) >= prune_threshold)
            & _varying(global_variances, codes.mean(axis=0)))
  num_active = int(active.sum())
  if num_active == 0:
    return {"factor_vae_accuracy": 0.0, "train_accuracy": 0.0, "num_active_dims": 0}

  def vote(n: int) -> np.ndarray:
    return _factor_vae_votes(represent, rng, sizes, considered, n, batch_size, global_variances,
                             active, chunk_size)

  train_votes = vote(num_votes)
  classifier = np.argmax(train_votes, axis=0)  # (D,): dimension -> factor
  dims = np.arange(train_votes.shape[1])
  train_accuracy = train_votes[classifier, dims].sum() / train_votes.sum()
  eval_votes = vote(max(1, num_votes // 2))
  eval_accuracy = eval_votes[classifier, dims].sum() / eval_votes.sum()
  return {"factor_vae_accuracy": float(eval_accuracy), "train_accuracy": float(train_accuracy),
          "num_active_dims": num_active}


# ------------------------------------------------------------------------------------------------
# beta-VAE metric (Higgins et al. 2017, as in disentanglement_lib)
# ------------------------------------------------------------------------------------------------


def _beta_vae_points(represent: Represent, rng: np.random.Generator, sizes: np.ndarray,
                     num_points: int, batch_size: int,
                     chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Features (num_points, D) float and labels (num_points,) int of the beta-VAE metric."""
  labels = rng.integers(0, len(sizes), size=num_points)
  points_per_call = max(1, chunk_size // (2 * batch_size))
  features = []
  for start in range(0, num_points, points_per_call):
    group = labels[start:start + points_per_call]
    rows = []
    for k in group:
      first = _sample_factors(rng, sizes, batch_size)
      second = _sample_factors(rng, sizes, batch_size)
      second[:, k] = first[:, k]
      rows += [first, second]
    codes = _represent(represent, np.concatenate(rows, axis=0), chunk_size)
    codes = codes.reshape(len(group), 2, batch_size, -1)
    features.append(np.abs(codes[:, 0] - codes[:, 1]).mean(axis=1))
  return np.concatenate(features, axis=0), labels


def beta_vae_metric(represent: Represent, factor_sizes: Sequence[int], *, seed: int,
                    num_train: int = 10000, num_eval: int = 5000, batch_size: int = 64,
                    chunk_size: int = 4096, max_iter: int = 1000) -> dict[str, float]:
  """beta-VAE disentanglement metric (Higgins et al. 2017), following disentanglement_lib.

  Each point draws a factor k uniformly, then ``batch_size`` pairs of uniform factor rows whose
  factor k is equal within each pair; its feature is ``mean over pairs of |z1 - z2|`` (shape
  (D,)) and its label is k. A multinomial ``sklearn.linear_model.LogisticRegression`` (lbfgs,
  default C=1, ``random_state=seed``) is fit on ``num_train`` points and scored on ``num_eval``
  fresh points.

  One deviation: features are standardised with the training points' per-dimension mean and std
  (a constant feature is left unscaled) before the fit. disentanglement_lib and the authors' code
  fit raw features; a linear classifier can represent the same rules either way, but on raw
  features lbfgs needs many more iterations (often stopping unconverged at sklearn's default
  100), and C=1 regularises differently depending on the scale of each code dimension. With
  standardisation the result is invariant to rescaling and offsetting code dimensions. A
  representation whose every factor has its own dimension scores 1.0 (the fixed factor's
  feature is exactly 0).

  Args:
    represent: factors (N, F) int -> codes (N, D) float; see the module docstring.
    factor_sizes: number of values of each of the F >= 2 factors.
    seed: seed of ``np.random.default_rng`` and of the classifier.
    num_train: training points; num_eval: evaluation points.
    batch_size: pairs per point.
    chunk_size: most rows passed to ``represent`` at once.
    max_iter: most lbfgs iterations.

  Returns:
    ``{"beta_vae_accuracy": evaluation accuracy, "train_accuracy": training accuracy}``.
  """
  from sklearn.linear_model import LogisticRegression  # a slow import; only this metric needs it

  sizes = _check_sizes(factor_sizes, min_factors=2)
  _check_positive(num_train=num_train, num_eval=num_eval, batch_size=batch_size,
                  chunk_size=chunk_size, max_iter=max_iter)
  rng = np.random.default_rng(seed)
  train_x, train_y = _beta_vae_points(represent, rng, sizes, num_train, batch_size, chunk_size)
  eval_x, eval_y = _beta_vae_points(represent, rng, sizes, num_eval, batch_size, chunk_size)
  if np.unique(train_y).size < 2:  # too few points for a classifier: predict the one label
    train_pred, eval_pred = np.full_like(train_y, train_y[0]), np.full_like(eval_y, train_y[0])
  else:
    # Standardise with training statistics: lbfgs converges in far fewer iterations, and the
    # result no longer depends on the scale of each code dimension.
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    train_x, eval_x = (train_x - mean) / std, (eval_x - mean) / std
    model = LogisticRegression(random_state=seed, max_iter=max_iter)
    model.fit(train_x, train_y)
    train_pred, eval_pred = model.predict(train_x), model.predict(eval_x)
  return {"beta_vae_accuracy": float(np.mean(eval_pred == eval_y)),
          "train_accuracy": float(np.mean(train_pred == train_y))}


# ------------------------------------------------------------------------------------------------
# The AMR authors' variant of the FactorVAE metric (table 4)
# ------------------------------------------------------------------------------------------------


def authors_factor_vae_metric(represent: Represent, factor_sizes: Sequence[int], *, seed: int,
                              num_votes: int = 800, batch_size: int = 800,
                              chunk_size: int = 4096) -> dict[str, float]:
  """The AMR authors' variant of the FactorVAE metric, as in their ``dsprite_disentanglement_fv``.

  Exact definition (F factors, D code dimensions):

  1. Votes: ``n = num_votes // F`` votes per factor, for every factor k in turn (not drawn at
     random), ``V = n * F`` in all; 160 per factor on dSprites. Each vote takes ``batch_size``
     rows with factor k at one uniform value and the other factors uniform.
  2. Normalisation: codes are divided by their per-dimension std (ddof=0) over all the ``V *
     batch_size`` rows of all votes pooled (no separate sample, no pruning). Dimension d of vote
     v is scored ``var_d(vote v) / pooled var_d``, both with ddof=0.
  3. The vote's dimension is the argmin of that score over d.
  4. Score: for each factor j in ``0 .. F-2``, the number of votes of factor j whose dimension is
     the most common dimension among votes of factor j; the sum is divided by V.

  The last factor (y position on dSprites) is never counted (their loop is
  ``for j in range(ys.max())``), so its votes count as wrong: a representation with one dimension
  per factor gets n votes right for each of F-1 factors, ``n * (F - 1) / (n * F) = (F - 1) / F``
  exactly, 0.8 on dSprites. Step 4 is the per-factor mode count of their code, which is more
  lenient than the majority-vote classifier of :func:`factor_vae_metric` (dimension -> factor):
  two factors whose votes go to the same dimension are both counted right, so even a
  one-dimensional code scores (F - 1) / F. There is no held-out evaluation: votes are scored on
  themselves, as in their code.

  One deviation: their code divides by a zero std (NaN) for a dimension that is constant over all
  rows, which makes argmin return the first such dimension; here constant dimensions (std at
  most 1e-9 times the mean's magnitude, i.e. zero up to rounding) are left out of the argmin,
  and 0.0 is returned if every dimension is constant.

  Args:
    represent: factors (N, F) int -> codes (N, D) float; see the module docstring.
    factor_sizes: number of values of each of the F >= 2 factors.
    seed: seed of ``np.random.default_rng``, the only randomness (theirs was unseeded).
    num_votes: total votes; ``num_votes // F`` per factor (at least F).
    batch_size: rows per vote (at least 2).
    chunk_size: most rows passed to ``represent`` at once.

  Returns:
    ``{"authors_factor_vae_accuracy": the score above (max (F-1)/F),
    "all_factors_accuracy": the same count over all F factors (what their code would give
    without skipping the last one; max 1.0)}``.
  """
  sizes = _check_sizes(factor_sizes, min_factors=2)
  _check_positive(num_votes=num_votes, batch_size=batch_size, chunk_size=chunk_size)
  num_factors = len(sizes)
  per_factor = num_votes // num_factors
  if per_factor < 1 or batch_size < 2:
    raise ValueError(f"need num_votes >= F = {num_factors} and batch_size >= 2; got "
                     f"num_votes={num_votes}, batch_size={batch_size}")
  rng = np.random.default_rng(seed)
  fixed = np.repeat(np.arange(num_factors), per_factor)
  means, variances = _fixed_factor_batches(represent, rng, sizes, fixed, batch_size, chunk_size,
                                           ddof=0)
  # Equal-size groups: pooled variance = mean within-vote variance + variance of vote means.
  pooled = variances.mean(axis=0) + means.var(axis=0)
  varying = _varying(pooled, means.mean(axis=0))
  if not varying.any():
    return {"authors_factor_vae_accuracy": 0.0, "all_factors_accuracy": 0.0}
  scores = np.where(varying, variances / np.where(varying, pooled, 1.0), np.inf)
  argmin = np.argmin(scores, axis=1).reshape(num_factors, per_factor)
  mode_counts = np.array([np.bincount(row).max() for row in argmin])
  total = num_factors * per_factor
  return {"authors_factor_vae_accuracy": float(mode_counts[:-1].sum() / total),
          "all_factors_accuracy": float(mode_counts.sum() / total)}
