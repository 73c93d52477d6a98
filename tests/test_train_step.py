"""The train step: who is updated when, and where gradients stop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import config as config_lib
from amr_jax import networks
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib

BATCH = 8


def tiny_config(**overrides):
  config = config_lib.base_config()
  config.arch.width = 2
  config.g_every = 2
  config.beta = 0.5
  for name, value in overrides.items():
    setattr(config, name, value)
  return config


def setup(config):
  nets = networks.build("acai32", image_channels=1, num_classes=10, width=config.arch.width,
                        latent_channels=config.arch.latent_channels)
  optimizers = train_state_lib.make_optimizers(config.optim)
  state = train_state_lib.create(nets, optimizers, jax.random.key(0), (32, 32, 1))
  step = train_step_lib.make_train_step(config, nets, optimizers)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (BATCH, 32, 32, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)}
  return nets, state, step, batch


def changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def amr():
  return setup(tiny_config())


def test_g_updates_every_g_every_steps_d_and_probe_every_step(amr):
  _, state, step, batch = amr
  jitted = jax.jit(step)
  key = jax.random.key(1)
  history = [state]
  for i in range(4):
    state, metrics = jitted(state, batch, jax.random.fold_in(key, i))
    history.append(state)
    assert float(metrics["g_updated"]) == (i % 2 == 0)
    for name in ("g_loss", "d_loss", "probe_loss", "recon", "gan_rec", "gan_mix", "consistency"):
      assert np.isfinite(metrics[name]), name
  for i in range(4):
    before, after = history[i], history[i + 1]
    assert changed(before.generator, after.generator) == (i % 2 == 0), i
    assert changed(before.discriminator, after.discriminator), i
    assert changed(before.probe, after.probe), i
    assert changed(before.spectral, after.spectral), i  # power iteration advances in training
    assert int(after.step) == i + 1


def test_probe_loss_sends_no_gradient_into_encoder(amr):
  nets, state, step, batch = amr

  def through_encoder(generator):
    h = nets.encoder.apply({"params": generator["encoder"]}, batch["image"])
    return step.probe_loss(state.probe, h, batch["label"])[0]

  grads = jax.grad(through_encoder)(state.generator)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))
  # ... while the probe itself does learn from it.
  probe_grads = jax.grad(lambda p: step.probe_loss(p, jnp.ones((BATCH, 4, 4, 2)),
                                                   batch["label"])[0])(state.probe)
  assert any(np.any(g != 0) for g in jax.tree.leaves(probe_grads))


def test_discriminator_loss_sends_no_gradient_into_generator(amr):
  nets, state, step, batch = amr
  key = jax.random.key(2)

  def through_generator(generator):
    _, (_, _, fakes) = step.generator_loss(generator, state, batch["image"], key)
    return step.discriminator_loss(state.discriminator, state, batch["image"], fakes)[0]

  grads = jax.grad(through_generator)(state.generator)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))


def test_generator_update_does_not_depend_on_labels(amr):
  _, state, step, batch = amr
  key = jax.random.key(3)
  other = dict(batch, label=(batch["label"] + 1) % 10)
  a, _ = jax.jit(step)(state, batch, key)
  b, _ = jax.jit(step)(state, other, key)
  chex.assert_trees_all_equal(a.generator, b.generator)
  chex.assert_trees_all_equal(a.discriminator, b.discriminator)
  assert changed(a.probe, b.probe)


def test_generator_loss_does_not_touch_spectral_state(amr):
  _, state, step, batch = amr
  # No collection is mutable in G's loss: it would raise if D tried to update its spectral state.
  loss, (terms, h, fakes) = step.generator_loss(state.generator, state, batch["image"],
                                                jax.random.key(4))
  assert set(fakes) == {"rec", "mix"}
  chex.assert_shape(h, (BATCH, 4, 4, 2))
  assert np.isfinite(loss)


@pytest.mark.parametrize("overrides", [
    dict(model="ae_gan", g_every=1),
    dict(mixer="bernoulli", k=3),
    dict(mixer="spatial", gan_loss="lsgan", recon_loss="l2"),
    dict(mixer="mixup_per_channel", recon_loss="bce", beta=0.0),
])
def test_variants_run_and_are_finite(overrides):
  _, state, step, batch = setup(tiny_config(**overrides))
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(5))
  assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
  assert ("gan_mix" in metrics) == (overrides.get("model", "amr") == "amr")
  assert changed(state.generator, new_state.generator)
