"""Tests for amr_jax.networks: shapes, parameter counts, spectral-norm state, presets."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from amr_jax import networks
from tests import tolerances

# Tiny models: compile time dominates, not the arithmetic.
jax.config.update("jax_disable_most_optimizations", True)

BATCH = 2


def _count(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def _abstract_init(module, *args, **kwargs):
  # eval_shape: parameter shapes without running any initialiser; args are ShapeDtypeStructs.
  return jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)


# ---------------------------------------------------------------------------- shapes


def test_acai32_shapes():
  nets = networks.build("acai32", image_channels=3, num_classes=10, width=4, latent_channels=2)
  x = jnp.zeros((BATCH, 32, 32, 3))
  k_enc, k_dec, k_disc, k_probe = jax.random.split(jax.random.key(0), 4)

  enc_vars = nets.encoder.init(k_enc, x)
  h = nets.encoder.apply(enc_vars, x)
  chex.assert_shape(h, (BATCH, 4, 4, 2))
  assert h.shape[1:] == networks.latent_shape("acai32", latent_channels=2)

  dec_vars = nets.decoder.init(k_dec, h)
  x_rec = nets.decoder.apply(dec_vars, h)
  chex.assert_shape(x_rec, (BATCH, 32, 32, 3))

  disc_vars = nets.discriminator.init(k_disc, x, update_stats=False)
  logits = nets.discriminator.apply(disc_vars, x, update_stats=False)
  chex.assert_shape(logits, (BATCH,))

  probe_vars = nets.probe.init(k_probe, h)
  chex.assert_shape(nets.probe.apply(probe_vars, h), (BATCH, 10))
  chex.assert_tree_all_finite((h, x_rec, logits))


def test_dsprites64_shapes():
  nets = networks.build("dsprites64", image_channels=1, num_classes=3, latent_dim=5)
  x = jnp.zeros((BATCH, 64, 64, 1))
  k_enc, k_dec, k_disc, k_probe = jax.random.split(jax.random.key(0), 4)

  enc_vars = nets.encoder.init(k_enc, x)
  h = nets.encoder.apply(enc_vars, x)
  chex.assert_shape(h, (BATCH, 5))
  assert h.shape[1:] == networks.latent_shape("dsprites64", latent_dim=5)

  dec_vars = nets.decoder.init(k_dec, h)
  chex.assert_shape(nets.decoder.apply(dec_vars, h), (BATCH, 64, 64, 1))

  disc_vars = nets.discriminator.init(k_disc, x, update_stats=False)
  chex.assert_shape(nets.discriminator.apply(disc_vars, x, update_stats=False), (BATCH,))

  probe_vars = nets.probe.init(k_probe, h)
  chex.assert_shape(nets.probe.apply(probe_vars, h), (BATCH, 3))


def test_probe_flattens_feature_maps():
  h = jnp.ones((BATCH, 4, 4, 2))
  variables = networks.Probe(7).init(jax.random.key(0), h)
  chex.assert_shape(variables["params"]["Dense_0"]["kernel"], (32, 7))


def test_bfloat16_compute_keeps_float32_params():
  enc = networks.Encoder32(width=4, dtype=jnp.bfloat16)
  x = jnp.zeros((BATCH, 32, 32, 1))
  variables = enc.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  assert enc.apply(variables, x).dtype == jnp.bfloat16


# ---------------------------------------------------------------------------- parameter counts


def test_acai32_parameter_counts_match_the_authors():
  # The authors' 32x32 model at dim 32 (width 16, 2 code channels, 1 image channel):
  # G (enc+dec) about 227k, D about 150k parameters.
  nets = networks.build("acai32", image_channels=1, num_classes=10, width=16, latent_channels=2)
  x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
  h = jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32)
  n_gen = (_count(_abstract_init(nets.encoder, x)["params"])
           + _count(_abstract_init(nets.decoder, h)["params"]))
  n_disc = _count(_abstract_init(nets.discriminator, x, update_stats=False)["params"])
  assert 220_000 <= n_gen <= 235_000, n_gen
  assert 140_000 <= n_disc <= 160_000, n_disc


# ---------------------------------------------------------------------------- collections


@pytest.mark.parametrize("arch,size", [("acai32", 32), ("dsprites64", 64)])
def test_encoder_has_only_params(arch, size):
  nets = networks.build(arch, image_channels=1, num_classes=2, width=4)
  variables = _abstract_init(nets.encoder, jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
  assert set(variables.keys()) == {"params"}


@pytest.mark.equivalence
@pytest.mark.parametrize("arch,size", [("acai32", 32), ("dsprites64", 64)])
def test_discriminator_spectral_state(arch, size):
  nets = networks.build(arch, image_channels=1, num_classes=2, width=4)
  disc = nets.discriminator
  x = jax.random.normal(jax.random.key(1), (BATCH, size, size, 1))
  variables = disc.init(jax.random.key(0), x, update_stats=False)
  assert set(variables.keys()) == {"params", networks.SPECTRAL}
  assert jax.tree_util.tree_leaves(variables[networks.SPECTRAL])

  # Training: one power-iteration step moves every u away from its random start. (sigma need
  # not move on this first step: Flax's init stores the kernel already divided by its sigma
  # estimate from that same u, so the first estimate is 1, its initial value.)
  logits, updates = disc.apply(variables, x, update_stats=True, mutable=[networks.SPECTRAL])
  chex.assert_shape(logits, (BATCH,))
  assert set(updates.keys()) == {networks.SPECTRAL}
  state, new_state = variables[networks.SPECTRAL], updates[networks.SPECTRAL]
  chex.assert_trees_all_equal_structs(new_state, state)
  for layer, stats in state.items():
    for name, value in stats.items():
      if name.endswith("/u"):
        assert not np.allclose(value, new_state[layer][name]), (layer, name)

  # Evaluation: the state is frozen ...
  _, frozen = disc.apply(variables, x, update_stats=False, mutable=[networks.SPECTRAL])
  chex.assert_trees_all_equal(frozen[networks.SPECTRAL], variables[networks.SPECTRAL])
  # ... so nothing needs to be mutable, and the logits match the training pass (same weights,
  # same u; only the stored state differs).
  eval_logits = disc.apply(variables, x, update_stats=False)
  tolerances.assert_close(eval_logits, logits)
  # Negative control: another input fails the same check.
  tolerances.assert_differs(disc.apply(variables, -x, update_stats=False), logits)


def test_discriminator_update_without_mutable_fails():
  disc = networks.Discriminator32(width=4)
  x = jnp.zeros((1, 32, 32, 1))
  variables = disc.init(jax.random.key(0), x, update_stats=False)
  with pytest.raises(Exception, match="immutable"):
    disc.apply(variables, x, update_stats=True)


# ---------------------------------------------------------------------------- presets


def test_build_rejects_unknown_arch():
  with pytest.raises(ValueError, match="acai32.*dsprites64"):
    networks.build("resnet", image_channels=1, num_classes=10)
  with pytest.raises(ValueError, match="acai32.*dsprites64"):
    networks.latent_shape("resnet")


def test_presets_are_consistent():
  assert set(networks.IMAGE_SIZE) == set(networks.ARCHITECTURES)
  kwargs = dict(image_channels=1, num_classes=10, latent_channels=16, latent_dim=7)
  assert networks.latent_shape("acai32", **kwargs) == (4, 4, 16)
  assert networks.latent_shape("dsprites64", **kwargs) == (7,)
  nets = networks.build("acai32", **kwargs)
  assert isinstance(nets, networks.Networks)
  assert isinstance(nets.discriminator, networks.Discriminator32)


@pytest.mark.equivalence
def test_spectral_norm_removes_kernel_scale():
  # D sees W / sigma(W): scaling every kernel by 3 leaves the logits unchanged, and the updated
  # sigma estimates are 3 times the unscaled ones.
  disc = networks.Discriminator32(width=4)
  x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 1))
  variables = disc.init(jax.random.key(0), x, update_stats=False)
  scaled = {
      "params": jax.tree_util.tree_map_with_path(
          lambda path, p: 3.0 * p if path[-1].key == "kernel" else p, variables["params"]),
      networks.SPECTRAL: variables[networks.SPECTRAL],
  }
  logits, updates = disc.apply(variables, x, update_stats=True, mutable=[networks.SPECTRAL])
  logits3, updates3 = disc.apply(scaled, x, update_stats=True, mutable=[networks.SPECTRAL])
  tolerances.assert_close(logits3, logits)
  # Negative control: spectral norm removes a kernel's scale, not its sign.
  flipped = {
      "params": jax.tree_util.tree_map_with_path(
          lambda path, p: -3.0 * p if path[-1].key == "kernel" else p, variables["params"]),
      networks.SPECTRAL: variables[networks.SPECTRAL],
  }
  tolerances.assert_differs(
      disc.apply(flipped, x, update_stats=True, mutable=[networks.SPECTRAL])[0], logits)
  sigmas, sigmas3 = (
      {k: v for k, v in flatten_dict(u[networks.SPECTRAL]).items() if k[-1].endswith("/sigma")}
      for u in (updates, updates3))
  assert sigmas
  for name, sigma in sigmas.items():  # each layer's sigma is its own group
    tolerances.assert_close(sigmas3[name], 3.0 * sigma)
