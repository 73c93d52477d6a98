"""Property tests of amr_jax.mixers: the contract in its docstrings and docs/reference.md.

Statistical tests use fixed seeds, so they are deterministic; their tolerances are set at several
standard errors (or a chi-square quantile at 1e-4), so they would also pass for almost any other
seed. Where a test could pass vacuously, a negative control checks that it rejects a wrong
sampler.
"""

import functools

import jax

jax.config.update("jax_disable_most_optimizations", True)

import chex  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from amr_jax import mixers  # noqa: E402
from tests import tolerances  # noqa: E402

ALL = ("mixup", "mixup_per_channel", "bernoulli", "spatial")
BINARY = ("bernoulli", "spatial")
SIMPLEX = ("mixup", "mixup_per_channel")
KS = (2, 3, 8)
B = 5
FEATURES = {"nhwc": (4, 4, 3), "flat": (3,)}  # equal C and D: fewer shapes to compile


def _sources(layout, k):
  rng = np.random.default_rng(100 * k + len(FEATURES[layout]))
  return rng.standard_normal((k, B) + FEATURES[layout]).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _mix(name, layout, k, seed=0):
  """(hs, mixed, weights) as numpy arrays; cached so several properties share one call."""
  hs = _sources(layout, k)
  mixed, w = mixers.get(name)(jax.random.key(seed), jnp.asarray(hs))
  return hs, np.asarray(mixed), np.asarray(w)


def _expected_weight_shape(name, k, features):
  ones = (1,) * (len(features) - 1)
  if name == "mixup":
    return (k, B) + (1,) * len(features)
  if name in ("mixup_per_channel", "bernoulli"):
    return (k, B) + ones + features[-1:]
  # spatial: a region of the spatial grid, all channels together; flat: per feature.
  return (k, B) + (features[:-1] + (1,) if len(features) > 1 else features)


grid = pytest.mark.parametrize("k", KS)
layouts = pytest.mark.parametrize("layout", tuple(FEATURES))
every_mixer = pytest.mark.parametrize("name", ALL)


# ---- shapes, simplex


@every_mixer
@layouts
@grid
def test_shapes_and_mixed_is_weighted_sum(name, layout, k):
  hs, mixed, w = _mix(name, layout, k)
  chex.assert_shape(mixed, (B,) + FEATURES[layout])
  assert mixed.dtype == hs.dtype
  assert w.ndim == hs.ndim and w.shape[:2] == (k, B)
  assert all(s in (1, f) for s, f in zip(w.shape[2:], FEATURES[layout])), w.shape
  assert np.broadcast_shapes(w.shape, hs.shape) == hs.shape
  np.testing.assert_allclose(mixed, np.sum(w * hs, axis=0), rtol=1e-5, atol=1e-6)


@every_mixer
@layouts
@grid
def test_weight_shape_encodes_constancy(name, layout, k):
  # A 1 in the weights' shape means "constant along that axis": mixup over all feature axes,
  # mixup_per_channel and bernoulli over the spatial axes, spatial over the channel axis.
  _, _, w = _mix(name, layout, k)
  chex.assert_shape(w, _expected_weight_shape(name, k, FEATURES[layout]))


@every_mixer
@layouts
@grid
def test_weights_on_simplex(name, layout, k):
  _, _, w = _mix(name, layout, k)
  assert np.all(w >= 0)
  np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", BINARY)
@layouts
@grid
def test_binary_mixers_have_one_hot_weights(name, layout, k):
  _, _, w = _mix(name, layout, k)
  assert set(np.unique(w)) <= {0.0, 1.0}
  np.testing.assert_array_equal(w.sum(axis=0), 1.0)


# ---- bernoulli, k=2


def _shared_p_chi2(mask):
  """Chi-square statistic and threshold for "rows of ``mask`` (B, C) are iid Bern(p), one p".

  Under one shared p, the number of ones per row is Binomial(C, p) with p estimated by the mask's
  mean; per-example p's would give an over-dispersed (wider) count distribution.
  """
  batch, channels = mask.shape
  p = mask.mean()
  counts = np.bincount(mask.sum(axis=1).astype(int), minlength=channels + 1)
  expected = batch * stats.binom.pmf(np.arange(channels + 1), channels, p)
  # Merge sparse bins (expected < 5) into their neighbours, scanning from both tails inwards.
  obs_bins, exp_bins, o, e = [], [], 0.0, 0.0
  for ob, ex in zip(counts, expected):
    o, e = o + ob, e + ex
    if e >= 5:
      obs_bins.append(o)
      exp_bins.append(e)
      o, e = 0.0, 0.0
  obs_bins[-1] += o
  exp_bins[-1] += e
  obs_bins, exp_bins = np.array(obs_bins), np.array(exp_bins)
  stat = np.sum((obs_bins - exp_bins) ** 2 / exp_bins)
  dof = max(len(obs_bins) - 2, 1)  # one constraint (total) plus one estimated parameter (p)
  return stat, stats.chi2.ppf(1 - 1e-4, dof)


def test_bernoulli_k2_draws_one_p_per_minibatch():
  calls, batch, channels = 24, 4096, 8
  hs = jnp.zeros((2, batch, channels))
  keys = jax.random.split(jax.random.key(7), calls)
  masks = np.asarray(jax.jit(jax.vmap(lambda kk: mixers.bernoulli(kk, hs)[1][0]))(keys))
  call_means = masks.mean(axis=(1, 2))
  # Across calls, p ~ U(0, 1): the per-call means spread over (0, 1) (std of U(0,1) is 0.29).
  # A per-example p would make every call's mean ~0.5 with std ~0.005.
  assert call_means.std() > 0.2, call_means
  assert call_means.min() < 0.25 and call_means.max() > 0.75, call_means
  # Within a call, the per-example counts are Binomial(C, p_call): one p shared by the batch.
  tested = 0
  for mask in masks:
    if 0.05 < mask.mean() < 0.95:
      stat, limit = _shared_p_chi2(mask)
      assert stat < limit, (mask.mean(), stat, limit)
      tested += 1
  assert tested >= 15


def test_shared_p_check_rejects_per_example_p():
  # Negative control: the check above has the power to see a per-example p.
  rng = np.random.default_rng(0)
  p = rng.uniform(size=(4096, 1))
  mask = (rng.uniform(size=(4096, 8)) < p).astype(np.float32)
  stat, limit = _shared_p_chi2(mask)
  assert stat > 10 * limit


# ---- weight laws


def _many_weights(name, k, draws):
  """Source weights of >= ``draws`` examples (or example-channels), shape (k, n).

  Repeats the small calls of the shape tests with new keys rather than one large call: the
  Dirichlet sampler takes seconds to compile per shape, and eager calls reuse the compiled one.
  """
  hs = jnp.zeros((k, B if k > 2 else draws) + FEATURES["flat"])  # k=2 draws no Dirichlet
  mixer = mixers.get(name)
  per_call = int(np.prod(mixer(jax.random.key(0), hs)[1].shape[1:]))
  keys = jax.random.split(jax.random.key(4), -(-draws // per_call))
  return np.concatenate([np.asarray(mixer(kk, hs)[1]).reshape(k, -1) for kk in keys], axis=1)


@pytest.mark.parametrize("name", SIMPLEX)
def test_simplex_k2_alpha_is_uniform(name):
  alpha = _many_weights(name, 2, 2000)[0]
  assert abs(alpha.mean() - 0.5) < 5 * np.sqrt(1 / 12 / alpha.size)
  assert abs(alpha.var() - 1 / 12) < 0.008  # std error of the variance ~0.0017
  assert stats.kstest(alpha, "uniform").pvalue > 1e-4


@pytest.mark.parametrize("name", SIMPLEX)
@pytest.mark.parametrize("k", (3, 8))
def test_simplex_weights_are_flat_dirichlet(name, k):
  w = _many_weights(name, k, 1000)
  n = w.shape[1]
  # Dirichlet(1, ..., 1): each weight ~ Beta(1, k-1), mean 1/k, variance (k-1) / (k^2 (k+1)).
  marginal = stats.beta(1, k - 1)
  mean, var, _, kurt = marginal.stats("mvsk")
  np.testing.assert_allclose(w.mean(axis=1), mean, atol=5 * np.sqrt(var / n))
  np.testing.assert_allclose(w.var(axis=1), var, rtol=5 * np.sqrt((kurt + 2) / n))
  for source in w:
    assert stats.kstest(source, marginal.cdf).pvalue > 1e-4


@pytest.mark.parametrize("k", (3, 8))
def test_bernoulli_multi_source_choice_is_uniform(k):
  n, channels = 1000, 4
  _, w = mixers.bernoulli(jax.random.key(5), jnp.zeros((k, n, channels)))
  counts = np.asarray(w).sum(axis=(1, 2))
  assert counts.sum() == n * channels
  assert stats.chisquare(counts).pvalue > 1e-4, counts / (n * channels)
  assert counts.min() > 0  # every source, the last one included, is used


# ---- spatial


def _is_contiguous(row):
  idx = np.flatnonzero(row)
  return idx.size == 0 or idx[-1] - idx[0] + 1 == idx.size


def test_spatial_region_is_a_box_of_mean_area_half():
  n, size = 2000, 16
  _, w = mixers.spatial(jax.random.key(6), jnp.zeros((2, n, size, size, 1)))
  box = np.asarray(w)[1, ..., 0] > 0.5  # cells from source 1, (n, H, W)
  rows, cols = box.any(axis=2), box.any(axis=1)
  np.testing.assert_array_equal(box, rows[:, :, None] & cols[:, None, :])  # a product set...
  assert all(_is_contiguous(r) for r in rows) and all(_is_contiguous(c) for c in cols)  # ...of runs
  area = box.mean(axis=(1, 2))
  assert abs(area.mean() - 0.5) < 0.03  # area fraction ~ U(0, 1); std error ~0.0065
  assert area.min() < 0.05 and area.max() > 0.95
  assert box.any(axis=0).all()  # every cell can be covered: the position varies over the grid


def test_spatial_flat_region_is_a_contiguous_block():
  n, dim = 2000, 64
  _, w = mixers.spatial(jax.random.key(8), jnp.zeros((2, n, dim)))
  block = np.asarray(w)[1] > 0.5
  assert all(_is_contiguous(r) for r in block)
  assert abs(block.mean() - 0.5) < 0.03
  assert block.any(axis=0).all()


# ---- partners


def _recover_perm(h, hs_i):
  """The index array p with hs_i == h[p], for rows of h that are all distinct."""
  flat_h, flat_s = h.reshape(len(h), -1), hs_i.reshape(len(hs_i), -1)
  match = np.all(flat_s[:, None, :] == flat_h[None, :, :], axis=-1)  # (B, B)
  assert np.all(match.sum(axis=1) == 1)
  return match.argmax(axis=1)


@pytest.mark.parametrize("features", ((2, 2, 3), (5,)))
def test_partners_are_permutations_of_the_batch(features):
  batch, k = 16, 4
  h = np.random.default_rng(0).standard_normal((batch,) + features).astype(np.float32)
  hs = np.asarray(mixers.partners(jax.random.key(9), jnp.asarray(h), k))
  chex.assert_shape(hs, (k, batch) + features)
  np.testing.assert_array_equal(hs[0], h)
  perms = [_recover_perm(h, hs[i]) for i in range(1, k)]
  for p in perms:  # multiset equality: every row of h appears exactly once
    np.testing.assert_array_equal(np.sort(p), np.arange(batch))
  for i in range(len(perms)):
    for j in range(i + 1, len(perms)):
      assert not np.array_equal(perms[i], perms[j])  # independent permutations per source
  assert not all(np.array_equal(p, np.arange(batch)) for p in perms)


def test_partners_with_one_key_permute_any_array_alike():
  # The README's manifold-mixup snippet relies on this to pair labels with their codes.
  batch = 16
  key = jax.random.key(10)
  h = jnp.arange(batch * 3, dtype=jnp.float32).reshape(batch, 3)
  labels = jax.nn.one_hot(jnp.arange(batch) % 4, 4)
  hs, ys = mixers.partners(key, h, 4), mixers.partners(key, labels, 4)
  for i in range(4):
    p = _recover_perm(np.asarray(h), np.asarray(hs[i]))
    np.testing.assert_array_equal(ys[i], labels[p])


# ---- the randomness as data: samplers, permutations, combine


@every_mixer
@layouts
@grid
def test_mixer_is_its_sampler_then_combine(name, layout, k):
  hs, mixed, w = _mix(name, layout, k)
  key = jax.random.key(0)  # the key _mix used
  sampled = mixers.get_sampler(name)(key, hs.shape, hs.dtype)
  chex.assert_shape(sampled, w.shape)
  np.testing.assert_array_equal(sampled, w)  # the same draws, bit for bit
  again, w_again = mixers.combine(jnp.asarray(hs), sampled)
  np.testing.assert_array_equal(again, mixed)
  np.testing.assert_array_equal(w_again, w)
  # Negative control: other given weights (another key's) give another mix.
  other = mixers.get_sampler(name)(jax.random.key(1), hs.shape, hs.dtype)
  assert not np.array_equal(mixers.combine(jnp.asarray(hs), other)[0], mixed)


def test_combine_takes_weights_from_elsewhere():
  # E.g. another implementation's alpha (B,) for k=2: weights [alpha, 1 - alpha], per example.
  hs = _sources("nhwc", 2)
  alpha = np.random.default_rng(3).uniform(size=B).astype(np.float32)
  w = np.stack([alpha, 1 - alpha]).reshape(2, B, 1, 1, 1)
  mixed, _ = mixers.combine(jnp.asarray(hs), jnp.asarray(w))
  expected = alpha[:, None, None, None] * hs[0] + (1 - alpha[:, None, None, None]) * hs[1]
  tolerances.assert_close(mixed, expected)
  with pytest.raises(ValueError, match="do not broadcast"):
    mixers.combine(jnp.asarray(hs), jnp.ones((2, B + 1, 1, 1, 1)))


@pytest.mark.parametrize("k", (2, 5))
def test_partners_are_stack_partners_of_permutations(k):
  h = jnp.asarray(_sources("nhwc", 2)[0])
  key = jax.random.key(4)
  perms = mixers.permutations(key, B, k)
  chex.assert_shape(perms, (k - 1, B))
  assert jnp.issubdtype(perms.dtype, jnp.integer)
  for p in np.asarray(perms):
    np.testing.assert_array_equal(np.sort(p), np.arange(B))
  np.testing.assert_array_equal(mixers.stack_partners(h, perms), mixers.partners(key, h, k))
  # Given permutations are used as given (and others give other partners).
  given = jnp.asarray(np.stack([np.roll(np.arange(B), i + 1) for i in range(k - 1)]))
  hs = mixers.stack_partners(h, given)
  for i in range(k - 1):
    np.testing.assert_array_equal(hs[i + 1], np.asarray(h)[np.asarray(given[i])])
  assert not np.array_equal(hs, mixers.partners(key, h, k))
  with pytest.raises(ValueError, match="perms must have shape"):
    mixers.stack_partners(h, given[:, :-1])


def test_get_sampler_unknown_name_lists_allowed_mixers():
  with pytest.raises(ValueError, match="unknown mixer 'cutout'; allowed: mixup"):
    mixers.get_sampler("cutout")


# ---- determinism, transforms


@every_mixer
@pytest.mark.parametrize("layout,k", (("nhwc", 3), ("flat", 2)))
def test_same_key_same_mix_and_different_keys_differ(name, layout, k):
  hs, mixed, w = _mix(name, layout, k)
  again, w_again = mixers.get(name)(jax.random.key(0), jnp.asarray(hs))
  np.testing.assert_array_equal(again, mixed)
  np.testing.assert_array_equal(w_again, w)
  _, _, w_other = _mix(name, layout, k, seed=1)
  assert not np.array_equal(w_other, w)


@pytest.mark.equivalence
@every_mixer
@pytest.mark.parametrize("layout,k", (("nhwc", 3), ("flat", 2)))
def test_jit_matches_eager(name, layout, k):
  hs, mixed, w = _mix(name, layout, k)
  mixed_j, w_j = jax.jit(mixers.get(name))(jax.random.key(0), jnp.asarray(hs))
  tolerances.assert_close((mixed_j, w_j), (mixed, w))
  # Negative control: another key's mix fails the same check.
  tolerances.assert_differs(jax.jit(mixers.get(name))(jax.random.key(1), jnp.asarray(hs)),
                            (mixed, w))


@pytest.mark.equivalence
@every_mixer
@pytest.mark.parametrize("layout,k", (("nhwc", 3), ("flat", 2)))
def test_vmap_matches_per_slice_calls(name, layout, k):
  mixer = mixers.get(name)
  keys = jax.random.split(jax.random.key(11), 3)
  hs = jnp.stack([jnp.asarray(_sources(layout, k)) * (i + 1) for i in range(3)])
  mixed_v, w_v = jax.vmap(mixer)(keys, hs)
  for i in range(3):
    mixed_i, w_i = mixer(keys[i], hs[i])
    tolerances.assert_close((mixed_v[i], w_v[i]), (mixed_i, w_i))
    # Negative control: the next slice fails the same check.
    tolerances.assert_differs((mixed_v[(i + 1) % 3], w_v[(i + 1) % 3]), (mixed_i, w_i))


@every_mixer
@pytest.mark.parametrize("layout,k", (("nhwc", 3), ("flat", 2)))
def test_grad_wrt_sources_is_weights_times_cotangent(name, layout, k):
  hs, _, w = _mix(name, layout, k)
  cot = np.random.default_rng(1).standard_normal((B,) + FEATURES[layout]).astype(np.float32)
  mixer = mixers.get(name)
  g = jax.grad(lambda s: jnp.sum(mixer(jax.random.key(0), s)[0] * cot))(jnp.asarray(hs))
  np.testing.assert_allclose(g, np.broadcast_to(w, hs.shape) * cot[None], rtol=1e-6, atol=1e-6)


# ---- registry, errors


def test_get_and_names():
  assert set(mixers.names()) == set(ALL)
  for name in ALL:
    assert mixers.get(name) is getattr(mixers, name)


def test_get_unknown_name_lists_allowed_mixers():
  with pytest.raises(ValueError) as err:
    mixers.get("nope")
  for name in ALL:
    assert name in str(err.value)
  assert "nope" in str(err.value)


@every_mixer
def test_fewer_than_two_sources_raise(name):
  with pytest.raises(ValueError, match="k >= 2"):
    mixers.get(name)(jax.random.key(0), jnp.zeros((1, B, 4, 4, 3)))


@every_mixer
def test_sources_without_feature_axis_raise(name):
  with pytest.raises(ValueError):
    mixers.get(name)(jax.random.key(0), jnp.zeros((2, B)))


def test_partners_needs_two_sources():
  with pytest.raises(ValueError):
    mixers.partners(jax.random.key(0), jnp.zeros((B, 3)), 1)


# ---- interpolation


def test_interpolate_is_a_linear_path():
  rng = np.random.default_rng(2)
  h1, h2 = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
  path = np.asarray(mixers.interpolate(jnp.asarray(h1), jnp.asarray(h2), 5))
  chex.assert_shape(path, (5, 2, 3, 3))
  np.testing.assert_array_equal(path[0], h1)
  np.testing.assert_array_equal(path[-1], h2)
  np.testing.assert_allclose(path[2], (h1 + h2) / 2, rtol=1e-6, atol=1e-6)
  for i, a in enumerate(np.linspace(0, 1, 5)):
    np.testing.assert_allclose(path[i], (1 - a) * h1 + a * h2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num", (2, 4, 10))
def test_interpolate_channels_swaps_a_growing_prefix(num):
  channels = 6
  rng = np.random.default_rng(3)
  h1 = -1 - rng.uniform(size=(2, 3, 3, channels)).astype(np.float32)  # negative
  h2 = 1 + rng.uniform(size=(2, 3, 3, channels)).astype(np.float32)  # positive: told apart
  path = np.asarray(mixers.interpolate_channels(jnp.asarray(h1), jnp.asarray(h2), num))
  chex.assert_shape(path, (num, 2, 3, 3, channels))
  np.testing.assert_array_equal(path[0], h1)
  np.testing.assert_array_equal(path[-1], h2)
  from_h2 = path > 0
  assert np.all(np.where(from_h2, path == h2, path == h1))  # every entry is copied, not mixed
  per_channel = from_h2.reshape(num, -1, channels)
  assert np.all(per_channel == per_channel[:, :1])  # whole channels are swapped
  taken = per_channel[:, 0]  # (num, C)
  counts = taken.sum(axis=1)
  for row, n in zip(taken, counts):
    np.testing.assert_array_equal(row, np.arange(channels) < n)  # fixed order: a prefix
  assert np.all(np.diff(counts) >= 0) and counts[0] == 0 and counts[-1] == channels
