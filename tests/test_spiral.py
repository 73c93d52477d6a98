"""Tests for the appendix toy: the spiral data, the 'mlp2d' networks, the mix evaluation, the
picture and the config (experiments/configs/spiral.py)."""

from __future__ import annotations

import importlib.util
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from amr_jax import config as config_lib
from amr_jax import data as data_lib
from amr_jax import networks
from amr_jax import spiral
from amr_jax.data import spiral as spiral_data

_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs",
                            "spiral.py")


def _spiral_config_module():
  spec = importlib.util.spec_from_file_location("spiral_config", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _normals(t: np.ndarray) -> np.ndarray:
  """Unit normals (N, 2) of the clean curve at t (N,), from a central difference."""
  eps = 1e-6
  tangent = spiral_data.curve(t + eps) - spiral_data.curve(t - eps)
  tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
  return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


# ---------------------------------------------------------------------------- data


def test_make_spiral_shapes_determinism_and_prefix():
  points, t = spiral_data.make_spiral(500, seed=3)
  assert points.shape == (500, 2) and points.dtype == np.float32
  assert t.shape == (500,) and t.dtype == np.float32
  assert np.all((t >= 0) & (t <= 1))
  assert np.all(np.abs(points) < 1.2)
  again, t_again = spiral_data.make_spiral(500, seed=3)
  np.testing.assert_array_equal(points, again)
  np.testing.assert_array_equal(t, t_again)
  other, _ = spiral_data.make_spiral(500, seed=4)
  assert not np.allclose(points, other)
  prefix, t_prefix = spiral_data.make_spiral(200, seed=3)
  np.testing.assert_array_equal(prefix, points[:200])
  np.testing.assert_array_equal(t_prefix, t[:200])
  clean, t_clean = spiral_data.make_spiral(100, seed=3, noise=0.0)
  np.testing.assert_allclose(clean, spiral_data.curve(t_clean), atol=1e-6)


def test_load_spiral_splits_labels_and_seeds():
  data_lib.check_available("spiral")
  ds = data_lib.load("spiral", seed=0, image_size=2)
  assert (len(ds.train), len(ds.valid), len(ds.test)) == (10_000, 2_000, 2_000)
  assert ds.num_classes == 4 and ds.image_channels == 2
  for split in (ds.train, ds.valid, ds.test):
    assert split.images.shape == (len(split), 2) and split.images.dtype == np.float32
    assert split.labels.dtype == np.int32
  # Labels are the quarters of the curve: balanced, and ordered along it (radius grows with t).
  counts = np.bincount(ds.train.labels, minlength=4)
  assert counts.min() > 2_200 and counts.max() < 2_800
  radius = np.linalg.norm(ds.train.images, axis=1)
  means = [radius[ds.train.labels == c].mean() for c in range(4)]
  assert means == sorted(means)

  same = data_lib.load("spiral", seed=0, image_size=2)
  np.testing.assert_array_equal(ds.train.images, same.train.images)
  other = data_lib.load("spiral", seed=1, image_size=2)
  assert not np.allclose(ds.train.images, other.train.images)
  assert not np.allclose(ds.valid.images, other.valid.images)
  np.testing.assert_array_equal(ds.test.images, other.test.images)  # fixed, like a test split

  small = data_lib.load("spiral", seed=0, image_size=2, num_valid=100, num_train=300)
  assert (len(small.train), len(small.valid)) == (300, 100)
  np.testing.assert_array_equal(small.train.images, ds.train.images[:300])
  np.testing.assert_array_equal(small.valid.images, ds.valid.images[:100])


def test_load_spiral_rejects_image_sizes():
  with pytest.raises(ValueError, match="point dimension"):
    data_lib.load("spiral", seed=0, image_size=32)


# ---------------------------------------------------------------------------- distances


def test_distance_is_zero_on_the_curve_and_grows_off_it():
  t = np.linspace(0.0, 1.0, 997)
  clean = spiral_data.curve(t)
  assert spiral.distance_to_spiral(clean).max() < 1e-5
  normals = _normals(t[1:-1])
  previous = np.zeros(len(t) - 2)
  # Half the gap between turns is ~0.18: up to there the nearest point stays the foot.
  for delta in (0.01, 0.05, 0.1):
    moved = clean[1:-1] + delta * normals
    distance = spiral.distance_to_spiral(moved)
    np.testing.assert_allclose(distance, delta, rtol=0.02)
    assert np.all(distance > previous)
    previous = distance


def test_distance_chunking_and_non_finite():
  points, _ = spiral_data.make_spiral(300, seed=0, noise=0.3)
  full = spiral.distance_to_spiral(points, chunk_size=1_000)
  np.testing.assert_allclose(spiral.distance_to_spiral(points, chunk_size=7), full)
  # Brute force over a 5x denser sampling, for a few points (vertices only: error < 1e-4).
  dense = spiral_data.curve(np.linspace(0, 1, 100_001))
  brute = [np.min(np.linalg.norm(dense - p, axis=1)) for p in points[:40].astype(np.float64)]
  np.testing.assert_allclose(full[:40], brute, atol=1e-4)
  assert np.all(full[:40] <= np.asarray(brute) + 1e-6)  # segments only ever get closer
  assert np.isinf(spiral.distance_to_spiral(np.array([[np.nan, 0.0], [0.0, 0.0]]))[0])


def test_mix_statistics():
  t = np.linspace(0.05, 0.95, 400)
  clean = spiral_data.curve(t)
  stats = spiral.mix_statistics(clean, tolerance=0.05)
  assert set(stats) == {"mean_distance", "fraction_within_tolerance"}
  assert stats["mean_distance"] < 1e-5 and stats["fraction_within_tolerance"] == 1.0
  half = clean.copy()
  half[::2] += 0.1 * _normals(t[::2])
  stats = spiral.mix_statistics(half, tolerance=0.05)
  assert stats["fraction_within_tolerance"] == 0.5
  assert abs(stats["mean_distance"] - 0.05) < 2e-3


def test_evaluate_mixes_on_and_off_the_manifold():
  t = np.linspace(0.0, 1.0, 512, dtype=np.float32)
  points = spiral_data.curve(t).astype(np.float32)
  key = jax.random.key(0)

  def curve_jnp(h):  # decoder that maps a 1-D code (the curve parameter) onto the curve
    theta = spiral_data.THETA_MIN + h[:, 0] * (spiral_data.THETA_MAX - spiral_data.THETA_MIN)
    r = theta / spiral_data.THETA_MAX
    return jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)], axis=1)

  # An "ideal" autoencoder: codes are t, so every mix of codes decodes onto the curve.
  stats, mixes = spiral.evaluate_mixes(
      points, key, encode_fn=lambda x: jnp.asarray(t)[:, None], decode_fn=jax.jit(curve_jnp),
      tolerance=0.01)
  assert mixes.shape == (512, 2) and mixes.dtype == np.float32
  assert stats["fraction_within_tolerance"] == 1.0
  # The identity: mixes are chords between points, mostly off the curve.
  stats, mixes = spiral.evaluate_mixes(points, key, encode_fn=jax.jit(lambda x: x),
                                       decode_fn=jax.jit(lambda h: h), tolerance=0.01)
  assert stats["fraction_within_tolerance"] < 0.5
  # A fixed key gives the same mixes, and an int seed is the key made from it.
  _, again = spiral.evaluate_mixes(points, key, encode_fn=lambda x: x, decode_fn=lambda h: h)
  np.testing.assert_array_equal(mixes, again)
  _, seeded = spiral.evaluate_mixes(points, 0, encode_fn=lambda x: x, decode_fn=lambda h: h)
  np.testing.assert_array_equal(mixes, seeded)
  # k=3 and another mixer run too.
  _, mixes3 = spiral.evaluate_mixes(points, key, encode_fn=lambda x: x, decode_fn=lambda h: h,
                                    k=3, mixer="bernoulli")
  assert mixes3.shape == (512, 2)


# ---------------------------------------------------------------------------- networks


def test_mlp2d_networks():
  assert networks.IMAGE_SIZE["mlp2d"] == 2 and "mlp2d" in networks.ARCHITECTURES
  assert networks.latent_shape("mlp2d", latent_dim=3) == (3,)
  nets = networks.build("mlp2d", image_channels=2, num_classes=4, width=16, latent_dim=3)
  assert isinstance(nets.encoder, networks.MLPEncoder2D)
  assert isinstance(nets.decoder, networks.MLPDecoder2D)
  assert isinstance(nets.discriminator, networks.MLPDiscriminator2D)
  x = jnp.linspace(-1.0, 1.0, 10).reshape(5, 2)
  k_enc, k_dec, k_disc, k_probe = jax.random.split(jax.random.key(0), 4)
  enc_vars = nets.encoder.init(k_enc, x)
  assert set(enc_vars) == {"params"}
  h = nets.encoder.apply(enc_vars, x)
  chex.assert_shape(h, (5, 3))
  x_rec = nets.decoder.apply(nets.decoder.init(k_dec, h), h)
  chex.assert_shape(x_rec, (5, 2))
  probe_vars = nets.probe.init(k_probe, h)
  chex.assert_shape(nets.probe.apply(probe_vars, h), (5, 4))

  disc_vars = nets.discriminator.init(k_disc, x, update_stats=False)
  assert set(disc_vars) == {"params", networks.SPECTRAL}
  # Every dense layer (3 hidden + the logit) is spectrally normalised.
  assert len(disc_vars[networks.SPECTRAL]) == 4
  logits = nets.discriminator.apply(disc_vars, x, update_stats=False)
  chex.assert_shape(logits, (5,))
  assert logits.dtype == jnp.float32
  logits, updated = nets.discriminator.apply(disc_vars, x, update_stats=True,
                                             mutable=[networks.SPECTRAL])
  chex.assert_shape(logits, (5,))
  assert set(updated) == {networks.SPECTRAL}
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), disc_vars[networks.SPECTRAL],
                         updated[networks.SPECTRAL])
  assert any(jax.tree.leaves(changed))
  chex.assert_tree_all_finite((h, x_rec, logits))
  with pytest.raises(ValueError, match=r"\(B, D\)"):
    nets.encoder.apply(enc_vars, jnp.zeros((2, 2, 2, 1)))


# ---------------------------------------------------------------------------- picture, config


def test_plot_writes_a_png(tmp_path):
  data, _ = spiral_data.make_spiral(300, seed=0)
  mixes = np.concatenate([data[:50] * 0.5, [[5.0, 5.0], [np.nan, 0.0]]])
  path = spiral.plot(str(tmp_path / "sub" / "spiral.png"), data, mixes, data[:20],
                     title="test", size=200)
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (200, 200)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
  assert np.any((pixels[:, 0] > 200) & (pixels[:, 1] < 80))  # red mixes
  assert np.any((pixels[:, 2] > 200) & (pixels[:, 0] < 80))  # blue reconstructions


def test_spiral_config_validates_and_parses_its_argument():
  module = _spiral_config_module()
  config = module.get_config()
  config_lib.validate(config, num_devices=1)
  assert (config.arch.name, config.data.name, config.data.image_size) == ("mlp2d", "spiral", 2)
  assert config.beta == 0.0 and config.recon_loss == "l2" and config.batch_size == 128
  config = module.get_config("beta=0.1,lamb=5")
  config_lib.validate(config, num_devices=1)
  assert config.beta == 0.1 and config.lamb == 5.0
  with pytest.raises(ValueError, match="not allowed"):
    module.get_config("gamma=1")
  with pytest.raises(ValueError, match="not a number"):
    module.get_config("beta=x")


def test_spiral_config_trains_and_its_mixes_evaluate(tmp_path):
  # A few steps of the real train step on spiral batches, then the evaluation train.py runs.
  from amr_jax import model  # pylint: disable=g-import-not-at-top
  from amr_jax import train_state as train_state_lib  # pylint: disable=g-import-not-at-top
  from amr_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top

  config = _spiral_config_module().get_config("beta=0.1")
  config.batch_size = 16
  ds = data_lib.load("spiral", seed=0, image_size=2, num_train=64, num_valid=16)
  nets = networks.build("mlp2d", image_channels=ds.image_channels, num_classes=ds.num_classes,
                        width=8, latent_dim=config.arch.latent_dim)
  optimizers = train_state_lib.make_optimizers(config.optim)
  state = train_state_lib.create(nets, optimizers, jax.random.key(0), (2,),
                                 networks.latent_shape("mlp2d", latent_dim=config.arch.latent_dim))
  step = jax.jit(train_step_lib.make_train_step(config, nets, optimizers), static_argnums=3)
  for i in range(2):
    idx = data_lib.batch_indices(config.seed, i, len(ds.train), config.batch_size)
    batch = {"image": ds.train.images[idx], "label": ds.train.labels[idx]}
    state, metrics = step(state, batch, jax.random.key(i), i % config.g_every == 0)
  assert np.isfinite(float(metrics["consistency"]))

  encode = jax.jit(lambda s, x: model.encode(nets, config, s.generator["encoder"], x))
  decode = jax.jit(lambda s, h: model.decode(nets, config, s.generator["decoder"], h))
  stats, mixes = spiral.evaluate_mixes(
      ds.train.images, jax.random.key(1), encode_fn=lambda x: encode(state, x),
      decode_fn=lambda h: decode(state, h), k=config.k, mixer=config.mixer)
  assert mixes.shape == (64, 2)
  assert 0.0 <= stats["fraction_within_tolerance"] <= 1.0 and stats["mean_distance"] >= 0.0
  assert os.path.exists(spiral.plot(str(tmp_path / "mixes.png"), ds.train.images, mixes))
