"""Tests of amr_jax.disentanglement on synthetic encoders of the ground-truth factors.

Encoders map factor indices (N, F) straight to codes, so these run in seconds without dSprites.
Every metric is seeded, so the tests are deterministic; the statistical thresholds (random
encoder below 0.45, chance being 1/F = 0.2; a half-entangled encoder between 0.45 and 0.95, its
expected score being 0.8) sit many standard errors from the expected values for the vote counts
used, so they would hold for almost any seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from amr_jax import disentanglement as dis

DSPRITES = (3, 6, 40, 32, 32)  # shape, scale, orientation, x, y
# Small but statistically meaningful settings (defaults are 800 votes of 800 rows, etc.).
FV = dict(num_votes=100, batch_size=64, num_variance_samples=2000)
BV = dict(num_train=300, num_eval=150, batch_size=32)
AU = dict(num_votes=200, batch_size=100)


def true_factors(factors: np.ndarray) -> np.ndarray:
  """The ideal encoder: codes (N, F) are the factor indices."""
  return factors.astype(np.float64)


def transformed(factors: np.ndarray) -> np.ndarray:
  """True factors, dimensions permuted, scaled by different positive constants and offset, with
  two constant (collapsed) dimensions interleaved: codes (N, 7), float64."""
  scales = np.array([0.5, 3.0, 0.1, 7.0, 1.3])  # 0.1 * factor of size 40: std 1.15
  offsets = np.array([10.0, -4.0, 0.5, 100.0, 0.0])
  codes = factors[:, [3, 0, 4, 2, 1]] * scales + offsets
  n = len(factors)
  # Constants that float64 rounding gives a tiny nonzero variance (1/3: about 3e-33).
  return np.concatenate([codes[:, :2], np.full((n, 1), 1 / 3), codes[:, 2:],
                         np.full((n, 1), 123.456)], axis=1)


def random_encoder(dim: int = 10, seed: int = 1) -> dis.Represent:
  """Codes (N, dim) independent of the factors, from a seeded rng."""
  rng = np.random.default_rng(seed)
  return lambda factors: rng.normal(size=(len(factors), dim))


def half_entangled(factors: np.ndarray) -> np.ndarray:
  """Factors 0-2 in their own dimensions, x and y (both of size 32) summed into one: (N, 4)."""
  return np.stack([factors[:, 0], factors[:, 1], factors[:, 2],
                   factors[:, 3] + factors[:, 4]], axis=1).astype(np.float64)


@pytest.mark.parametrize("encoder", [true_factors, transformed], ids=["identity", "transformed"])
def test_disentangled_encoder_scores_one(encoder):
  fv = dis.factor_vae_metric(encoder, DSPRITES, seed=0, **FV)
  assert fv["factor_vae_accuracy"] == 1.0 and fv["train_accuracy"] == 1.0
  assert fv["num_active_dims"] == 5  # the constant dimensions are pruned
  bv = dis.beta_vae_metric(encoder, DSPRITES, seed=0, **BV)
  assert bv == {"beta_vae_accuracy": 1.0, "train_accuracy": 1.0}


@pytest.mark.parametrize("encoder", [true_factors, transformed], ids=["identity", "transformed"])
def test_authors_variant_maximum_is_exactly_four_fifths(encoder):
  result = dis.authors_factor_vae_metric(encoder, DSPRITES, seed=0, **AU)
  assert result == {"authors_factor_vae_accuracy": 0.8, "all_factors_accuracy": 1.0}


def test_authors_variant_at_their_settings():
  # 800 votes (160 per factor), 800 rows each, as in the paper; also votes not divisible by F.
  assert dis.authors_factor_vae_metric(true_factors, DSPRITES, seed=3)[
      "authors_factor_vae_accuracy"] == 0.8
  result = dis.authors_factor_vae_metric(true_factors, DSPRITES, seed=3, num_votes=103,
                                         batch_size=50)
  assert result["authors_factor_vae_accuracy"] == 0.8
  # F - 1 of F in general.
  assert dis.authors_factor_vae_metric(true_factors, (4, 5, 6), seed=0, **AU)[
      "authors_factor_vae_accuracy"] == pytest.approx(2 / 3, abs=0)


def test_random_encoder_scores_near_chance():
  fv = dis.factor_vae_metric(random_encoder(), DSPRITES, seed=0, num_votes=200, batch_size=64,
                             num_variance_samples=2000)
  assert fv["factor_vae_accuracy"] < 0.45
  assert fv["num_active_dims"] == 10
  bv = dis.beta_vae_metric(random_encoder(), DSPRITES, seed=0, **BV)
  assert bv["beta_vae_accuracy"] < 0.45
  au = dis.authors_factor_vae_metric(random_encoder(), DSPRITES, seed=0, **AU)
  assert au["authors_factor_vae_accuracy"] < 0.45


def test_partially_disentangled_encoder_scores_strictly_between():
  # x and y votes both pick the summed dimension, and their beta-VAE features are identically
  # distributed, so both metrics expect 3/5 + 1/5 = 0.8.
  fv = dis.factor_vae_metric(half_entangled, DSPRITES, seed=0, num_votes=200, batch_size=64,
                             num_variance_samples=2000)
  assert 0.45 < fv["factor_vae_accuracy"] < 0.95
  assert fv["num_active_dims"] == 4
  bv = dis.beta_vae_metric(half_entangled, DSPRITES, seed=0, **BV)
  assert 0.45 < bv["beta_vae_accuracy"] < 0.95


def test_factors_subset():
  # Without y, the summed dimension is x's alone: perfect over the factors considered.
  fv = dis.factor_vae_metric(half_entangled, DSPRITES, seed=0, factors=(0, 1, 2, 3), **FV)
  assert fv["factor_vae_accuracy"] == 1.0
  with pytest.raises(ValueError, match="subset"):
    dis.factor_vae_metric(true_factors, DSPRITES, seed=0, factors=(0, 5), **FV)


def test_authors_variant_counts_per_factor_modes():
  # Their score counts, per factor, the votes for its most common dimension, so a code with one
  # dimension (every vote for dimension 0) reaches the maximum; the majority-vote classifier of
  # the FactorVAE metric does not.
  only_shape = lambda factors: factors[:, :1].astype(np.float64)
  au = dis.authors_factor_vae_metric(only_shape, DSPRITES, seed=0, **AU)
  assert au["authors_factor_vae_accuracy"] == 0.8
  fv = dis.factor_vae_metric(only_shape, DSPRITES, seed=0, num_votes=200, batch_size=64)
  assert fv["factor_vae_accuracy"] < 0.45


def test_prune_threshold_is_on_standard_deviation():
  # Shape scaled by 0.1: std 0.082 >= 0.05 (kept), variance 0.0067 < 0.05.
  small = lambda factors: factors * np.array([0.1, 1, 1, 1, 1])
  assert dis.factor_vae_metric(small, DSPRITES, seed=0, **FV)["num_active_dims"] == 5
  # Scaled by 0.01 (std 0.008), it is pruned, so shape votes can no longer be right.
  tiny = lambda factors: factors * np.array([0.01, 1, 1, 1, 1])
  fv = dis.factor_vae_metric(tiny, DSPRITES, seed=0, **FV)
  assert fv["num_active_dims"] == 4 and fv["factor_vae_accuracy"] < 1.0
  fv = dis.factor_vae_metric(tiny, DSPRITES, seed=0, prune_threshold=0.0, **FV)
  assert fv["num_active_dims"] == 5 and fv["factor_vae_accuracy"] == 1.0
  # Without a threshold, constant dimensions are still pruned (rounding is not variation).
  fv = dis.factor_vae_metric(transformed, DSPRITES, seed=0, prune_threshold=0.0, **FV)
  assert fv["num_active_dims"] == 5 and fv["factor_vae_accuracy"] == 1.0


def test_constant_representation():
  constant = lambda factors: np.ones((len(factors), 3))
  assert dis.factor_vae_metric(constant, DSPRITES, seed=0, prune_threshold=0.0, **FV) == {
      "factor_vae_accuracy": 0.0, "train_accuracy": 0.0, "num_active_dims": 0}
  assert dis.authors_factor_vae_metric(constant, DSPRITES, seed=0, **AU) == {
      "authors_factor_vae_accuracy": 0.0, "all_factors_accuracy": 0.0}
  assert dis.beta_vae_metric(constant, DSPRITES, seed=0, **BV)["beta_vae_accuracy"] < 0.45


def test_seeded_determinism():
  for seed in (0, 1, 2):
    assert dis.factor_vae_metric(transformed, DSPRITES, seed=seed, **FV)[
        "factor_vae_accuracy"] == 1.0
    assert dis.authors_factor_vae_metric(transformed, DSPRITES, seed=seed, **AU)[
        "authors_factor_vae_accuracy"] == 0.8
  assert dis.beta_vae_metric(transformed, DSPRITES, seed=5, **BV)["beta_vae_accuracy"] == 1.0
  # Same seed, same result (the random encoder is rebuilt so its own rng restarts too).
  runs = [(dis.factor_vae_metric(random_encoder(), DSPRITES, seed=seed, **FV),
           dis.beta_vae_metric(random_encoder(), DSPRITES, seed=seed, **BV),
           dis.authors_factor_vae_metric(random_encoder(), DSPRITES, seed=seed, **AU))
          for seed in (7, 7, 8)]
  assert runs[0] == runs[1]
  assert runs[0] != runs[2]


def test_chunking_bounds_calls_and_does_not_change_results():
  sizes = []

  def spy(factors: np.ndarray) -> np.ndarray:
    sizes.append(len(factors))
    return half_entangled(factors)

  for metric, kwargs in ((dis.factor_vae_metric, FV), (dis.beta_vae_metric, BV),
                         (dis.authors_factor_vae_metric, AU)):
    sizes.clear()
    chunked = metric(spy, DSPRITES, seed=4, chunk_size=50, **kwargs)
    assert max(sizes) <= 50
    assert chunked == metric(half_entangled, DSPRITES, seed=4, **kwargs)


def test_codes_with_feature_axes_are_flattened():
  as_maps = lambda factors: true_factors(factors).reshape(len(factors), 1, 1, 5).astype(np.float32)
  assert dis.factor_vae_metric(as_maps, DSPRITES, seed=0, **FV)["factor_vae_accuracy"] == 1.0


def test_invalid_inputs():
  with pytest.raises(ValueError, match="factor_sizes"):
    dis.factor_vae_metric(true_factors, (3, 0), seed=0, **FV)
  with pytest.raises(ValueError, match="factor_sizes"):
    dis.beta_vae_metric(true_factors, (3,), seed=0, **BV)
  with pytest.raises(ValueError, match="shape"):
    dis.factor_vae_metric(lambda f: np.zeros(len(f)), DSPRITES, seed=0, **FV)
  with pytest.raises(ValueError, match="non-finite"):
    dis.authors_factor_vae_metric(lambda f: np.full(f.shape, np.nan), DSPRITES, seed=0, **AU)
  with pytest.raises(ValueError, match="num_votes"):
    dis.authors_factor_vae_metric(true_factors, DSPRITES, seed=0, num_votes=4)
