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


# ---------------------------------------------------------------------------- the authors' model


def _normalised_layers(variables) -> set[str]:
  """Names of the layers (in ``params``) whose kernels the spectral state normalises."""
  return {name.split("/")[0] for stats in variables[networks.SPECTRAL].values() for name in stats}


def test_authors_init_matches_their_initializer_and_pytorch_defaults():
  """init='authors' (reference.md): G's kernels ~ N(0, 1/(1.04*out*in*kh)), G's norm scales
  ~ N(0, 1/1.04) with random signs, zero biases; D's normalised convs and the probe keep
  PyTorch's default U(+-1/sqrt(fan_in)) for kernel and bias; D's input conv is the authors'."""
  nets = networks.build("acai32", image_channels=1, num_classes=10, init="authors",
                        spectral_input_conv=False)
  plain = networks.build("acai32", image_channels=1, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 1))
  enc = nets.encoder.init(jax.random.key(0), x)["params"]
  enc_plain = plain.encoder.init(jax.random.key(0), x)["params"]
  scales = []
  for path, value in flatten_dict(enc).items():
    value = np.asarray(value)
    if path[-1] == "kernel" and value.size >= 2000:  # enough values for a 10% std estimate
      kh, _, cin, cout = value.shape
      expected = 1 / np.sqrt(1.04 * cout * cin * kh)
      assert abs(value.std() / expected - 1) < 0.1, (path, value.std(), expected)
      # Negative control: Flax's lecun_normal, std 1/sqrt(kh*kw*in), is sqrt(0.35*out) x larger.
      if cout >= 16:
        assert np.asarray(flatten_dict(enc_plain)[path]).std() > 2 * expected, path
    elif path[-1] == "scale":
      scales.append(value)
    elif path[-1] == "bias":
      assert not value.any(), path
  scales = np.concatenate(scales)
  assert abs(scales.std() / (1 / np.sqrt(1.04)) - 1) < 0.15 and (scales < 0).mean() > 0.3

  disc_vars = nets.discriminator.init(jax.random.key(2), x, update_stats=False)
  spectral_layers = _normalised_layers(disc_vars)
  assert len(spectral_layers) == 8  # all but the input conv
  for layer in spectral_layers:
    # The bias is drawn from PyTorch's default. (The kernel is too, but Flax's SpectralNorm
    # stores it divided by its first sigma estimate at init, whatever the draw.)
    kernel, bias = (np.asarray(disc_vars["params"][layer][k]) for k in ("kernel", "bias"))
    bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))
    assert 0.2 * bound < np.abs(bias).max() <= bound, layer
  # The unnormalised input conv gets the authors' Initializer: zero bias.
  assert not np.asarray(disc_vars["params"]["Conv_0"]["bias"]).any()

  h = nets.encoder.apply({"params": enc}, x)
  probe = nets.probe.init(jax.random.key(3), h)["params"]
  bound = 1 / np.sqrt(h[0].size)
  for leaf in jax.tree.leaves(probe):
    assert 0.5 * bound < np.abs(leaf).max() <= bound


@pytest.mark.equivalence
def test_input_conv_padding_keeps_shapes_and_changes_the_output():
  """input_conv_padding=1 (the authors' 32 -> 34 pixels) has the same parameters and output
  shapes, and computes something else from the same parameters."""
  x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 1))
  same = networks.build("acai32", image_channels=1, num_classes=10, width=4)
  padded = networks.build("acai32", image_channels=1, num_classes=10, width=4,
                          input_conv_padding=1)
  for name in ("encoder", "discriminator"):
    kwargs = {"update_stats": False} if name == "discriminator" else {}
    variables = getattr(same, name).init(jax.random.key(0), x, **kwargs)
    chex.assert_trees_all_equal_shapes(
        variables, getattr(padded, name).init(jax.random.key(0), x, **kwargs))
    out_same = getattr(same, name).apply(variables, x, **kwargs)
    out_padded = getattr(padded, name).apply(variables, x, **kwargs)
    chex.assert_equal_shape((out_same, out_padded))
    tolerances.assert_differs(out_padded, out_same)


def test_spectral_input_conv_false_leaves_only_the_input_conv_unnormalised():
  x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 1))
  normalised = networks.Discriminator32(width=4).init(jax.random.key(0), x, update_stats=False)
  authors = networks.Discriminator32(width=4, spectral_input=False).init(
      jax.random.key(0), x, update_stats=False)
  assert _normalised_layers(normalised) - _normalised_layers(authors) == {"Conv_0"}
  assert authors["params"]["Conv_0"]["kernel"].shape == (1, 1, 1, 4)
  # Unnormalised, the input conv's scale reaches the logits (normalised, it would not: see
  # test_spectral_norm_removes_kernel_scale).
  disc = networks.Discriminator32(width=4, spectral_input=False)
  scaled = jax.tree_util.tree_map_with_path(
      lambda path, p: 3.0 * p if path[0].key == "Conv_0" else p, authors["params"])
  logits = disc.apply(authors, x, update_stats=False)
  tolerances.assert_differs(
      disc.apply({**authors, "params": scaled}, x, update_stats=False), logits)


def test_more_power_iterations_estimate_sigma_better():
  x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 1))
  variables = networks.Discriminator32(width=4).init(jax.random.key(0), x, update_stats=False)
  errors = {}
  for steps in (1, 5):
    disc = networks.Discriminator32(width=4, power_iterations=steps)
    _, updates = disc.apply(variables, x, update_stats=True, mutable=[networks.SPECTRAL])
    total = 0.0
    for stats in updates[networks.SPECTRAL].values():
      (name,) = [k for k in stats if k.endswith("/sigma")]
      kernel = np.asarray(variables["params"][name.split("/")[0]]["kernel"])
      true_sigma = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
      total += abs(float(stats[name]) / true_sigma - 1)
    errors[steps] = total
  assert errors[5] < 0.5 * errors[1], errors


# ---------------------------------------------------------------------------- sigma's gradient
def _dense_spectral_loss(start_u, backward_u=None):
  """A spectrally-normalised Dense layer's loss, from u = start_u, optionally differentiated at
  the u, v one power-iteration step from backward_u reaches (networks.SPECTRAL_BACKWARD)."""
  layer = networks.SpectralNorm(networks.nn.Dense(3, use_bias=False),
                                collection_name=networks.SPECTRAL)
  x = jax.random.normal(jax.random.key(2), (4, 5))
  kernel = jax.random.normal(jax.random.key(3), (5, 3))

  def state(u):
    return {"layer_instance/kernel/u": u, "layer_instance/kernel/sigma": jnp.ones(())}

  def loss(kernel):
    variables = {"params": {"layer_instance": {"kernel": kernel}},
                 networks.SPECTRAL: state(start_u)}
    if backward_u is not None:
      variables[networks.SPECTRAL_BACKWARD] = state(backward_u)
    y, new = layer.apply(variables, x, update_stats=True, mutable=[networks.SPECTRAL])
    return jnp.sum(jnp.sin(y)), new[networks.SPECTRAL]["layer_instance/kernel/u"]

  return loss, kernel, x


def _unit(v):
  return v / jnp.linalg.norm(v)


def test_spectral_backward_differentiates_sigma_at_the_given_state():
  """With SPECTRAL_BACKWARD the forward is Flax's SpectralNorm bit for bit, and the gradient is
  the chain rule through W / sigma with d sigma / dW = v' u'^T, where (u', v') is one power step
  from the collection's u (the authors' in-place u, v): checked against that formula by hand."""
  start = jax.random.normal(jax.random.key(4), (1, 3))
  other = jax.random.normal(jax.random.key(5), (1, 3))
  own_loss, kernel, x = _dense_spectral_loss(start)
  loss, _, _ = _dense_spectral_loss(start, backward_u=other)
  (value, u_new), grad = jax.value_and_grad(loss, has_aux=True)(kernel)
  (own_value, own_u), own_grad = jax.value_and_grad(own_loss, has_aux=True)(kernel)
  assert value == own_value and bool(jnp.all(u_new == own_u))
  # By hand: sigma from this call's power step; its derivative from the step from `other`.
  v = _unit(start @ kernel.T)
  sigma = (v @ kernel @ _unit(v @ kernel).T)[0, 0]
  v_last = _unit(other @ kernel.T)
  u_last = _unit(v_last @ kernel)
  upstream = jax.grad(lambda w: jnp.sum(jnp.sin(x @ w)))(kernel / sigma)
  expected = upstream / sigma - jnp.sum(upstream * kernel) / sigma**2 * (v_last.T @ u_last)
  tolerances.assert_close(grad, expected)
  # Given this call's own start, it is Flax's gradient; another start is not (negative control).
  same, _, _ = _dense_spectral_loss(start, backward_u=start)
  tolerances.assert_close(jax.grad(same, has_aux=True)(kernel)[0], own_grad)
  tolerances.assert_differs(grad, own_grad)


def test_spectral_backward_needs_update_stats():
  layer = networks.SpectralNorm(networks.nn.Dense(3), collection_name=networks.SPECTRAL)
  x = jnp.ones((1, 2))
  variables = layer.init(jax.random.key(0), x, update_stats=False)
  with pytest.raises(ValueError, match="update_stats=True"):
    layer.apply({**variables, networks.SPECTRAL_BACKWARD: variables[networks.SPECTRAL]}, x,
                update_stats=False)
