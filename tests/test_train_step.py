"""The train step: who is updated when, and where gradients stop (the objective's loss
functions called directly)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amr_jax import config as config_lib
from amr_jax import mixers
from amr_jax import model
from amr_jax import networks
from amr_jax import objective
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib
from tests import tolerances

BATCH = 8


def tiny_config(**overrides):
  config = config_lib.base_config()
  config.arch.width = 2
  config.g_every = 2
  config.beta = 0.5
  for name, value in overrides.items():  # a__b stands for the dotted field a.b
    config_lib.set_field(config, name.replace("__", "."), value)
  return config


def setup(config, num_attributes=0):
  nets = networks.build("acai32", image_channels=1, num_classes=10, width=config.arch.width,
                        latent_channels=config.arch.latent_channels,
                        variational=config.model == "beta_vae", num_attributes=num_attributes,
                        dtype=jnp.bfloat16 if config.arch.compute_dtype == "bfloat16" else None,
                        init=config.arch.init, input_conv_padding=config.arch.input_conv_padding,
                        spectral_input_conv=config.arch.spectral_input_conv,
                        spectral_power_iterations=config.arch.spectral_power_iterations)
  optimizers = train_state_lib.make_optimizers(config.optim)
  state = train_state_lib.create(nets, optimizers, jax.random.key(0), (32, 32, 1), (4, 4, 2),
                                 num_attributes)
  step = train_step_lib.make_train_step(config, nets, optimizers)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (BATCH, 32, 32, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)}
  if num_attributes:
    batch["attributes"] = jnp.asarray(rng.integers(0, 2, (BATCH, num_attributes)), jnp.float32)
  return nets, state, step, batch


def setting_of(config, nets):
  return objective.Setting.from_config(config, nets)


def draws_of(config, nets, state, batch, key, num_attributes=0):
  """The draws the step makes from ``key``."""
  return train_step_lib.draw(config, key, _code(nets, config, state, batch), num_attributes)


def generator_loss(config, nets, state, batch, key, generator=None, draws=None):
  """G's loss at ``state`` (``generator``: its parameters, by default the state's)."""
  attributes = batch["attributes"].shape[-1] if config.supervised.enabled else 0
  draws = draws_of(config, nets, state, batch, key, attributes) if draws is None else draws
  return objective.generator_loss(
      setting_of(config, nets), state.generator if generator is None else generator,
      state.discriminator, state.spectral, batch, draws)


def changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def amr():
  return setup(tiny_config())


def test_g_updates_when_told_d_and_probe_every_step(amr):
  _, state, step, batch = amr
  jitted = jax.jit(step, static_argnums=3)
  key = jax.random.key(1)
  history = [state]
  g_terms = {"g_loss", "gan_rec", "gan_mix", "consistency"}
  for i in range(4):
    state, metrics = jitted(state, batch, jax.random.fold_in(key, i), i % 2 == 0)
    history.append(state)
    assert float(metrics["g_updated"]) == (i % 2 == 0)
    # Without G's update the step skips G's terms through D (and logs none of them).
    assert g_terms <= set(metrics) if i % 2 == 0 else not g_terms & set(metrics)
    for name in ("d_loss", "probe_loss", "recon", *(g_terms if i % 2 == 0 else ())):
      assert np.isfinite(metrics[name]), name
  for i in range(4):
    before, after = history[i], history[i + 1]
    assert changed(before.generator, after.generator) == (i % 2 == 0), i
    assert changed(before.discriminator, after.discriminator), i
    assert changed(before.probe, after.probe), i
    assert changed(before.spectral, after.spectral), i  # power iteration advances in training
    assert int(after.step) == i + 1


def test_probe_loss_sends_no_gradient_into_encoder(amr):
  nets, state, _, batch = amr
  setting = setting_of(tiny_config(), nets)

  def through_encoder(generator):
    h = nets.encoder.apply({"params": generator["encoder"]}, batch["image"])
    return objective.probe_loss(setting, state.probe, h, batch["label"])[0]

  grads = jax.grad(through_encoder)(state.generator)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))
  # ... while the probe itself does learn from it.
  probe_grads = jax.grad(lambda p: objective.probe_loss(
      setting, p, jnp.ones((BATCH, 4, 4, 2)), batch["label"])[0])(state.probe)
  assert any(np.any(g != 0) for g in jax.tree.leaves(probe_grads))


def test_discriminator_loss_sends_no_gradient_into_generator(amr):
  nets, state, _, batch = amr
  config = tiny_config()
  setting = setting_of(config, nets)
  key = jax.random.key(2)

  def through_generator(generator):
    _, aux = generator_loss(config, nets, state, batch, key, generator=generator)
    return objective.discriminator_loss(setting, state.discriminator, aux.spectral, batch,
                                        aux.fakes)[0]

  grads = jax.grad(through_generator)(state.generator)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))

  # Negative control: the same loss from D's outputs on the fakes, not held, reaches G.
  def unheld(generator):
    _, aux = generator_loss(config, nets, state, batch, key, generator=generator)
    names = aux.fakes.names()
    out, _ = objective.judge(setting, state.discriminator, aux.spectral,
                             [batch["image"], *(getattr(aux.fakes, n) for n in names)])
    return objective.gan_discriminator_loss(setting, out, names, batch)[0]

  assert any(np.any(g != 0) for g in jax.tree.leaves(jax.grad(unheld)(state.generator)))


def test_generator_update_does_not_depend_on_labels(amr):
  _, state, step, batch = amr
  key = jax.random.key(3)
  other = dict(batch, label=(batch["label"] + 1) % 10)
  a, _ = jax.jit(step, static_argnums=3)(state, batch, key, True)
  b, _ = jax.jit(step, static_argnums=3)(state, other, key, True)
  chex.assert_trees_all_equal(a.generator, b.generator)
  chex.assert_trees_all_equal(a.discriminator, b.discriminator)
  assert changed(a.probe, b.probe)


def test_generator_loss_does_not_touch_spectral_state(amr):
  nets, state, _, batch = amr
  # No collection is mutable in G's loss: it would raise if D tried to update its spectral state.
  loss, aux = generator_loss(tiny_config(), nets, state, batch, jax.random.key(4))
  assert aux.fakes.names() == ["rec", "mix"]
  chex.assert_shape(aux.codes, (BATCH, 4, 4, 2))
  assert np.isfinite(loss)
  assert aux.spectral is state.spectral and aux.judged is None


@pytest.mark.parametrize("overrides", [
    dict(model="ae_gan", g_every=1),
    dict(mixer="bernoulli", k=3),
    dict(mixer="spatial", gan_loss="lsgan", recon_loss="l2"),
    dict(mixer="mixup_per_channel", recon_loss="bce", beta=0.0),
    dict(model="acai", g_every=1, recon_loss="l2"),
    dict(model="acai", acai__variant="amr_authors"),
    dict(model="beta_vae", g_every=1, recon_loss="bce"),
    dict(supervised__enabled=True, supervised__mask="sampled", g_every=1, data__name="celeb_a"),
    dict(arch__compute_dtype="bfloat16", g_every=1),
    # The authors' PyTorch model (config.AUTHORS_MODEL).
    dict(arch__init="authors", arch__input_conv_padding=1, arch__spectral_input_conv=False,
         arch__spectral_power_iterations=5, g_every=1),
])
def test_each_method_takes_a_step_with_finite_losses(overrides):
  config = tiny_config(**overrides)
  config_lib.validate(config, check_data=False)
  _, state, step, batch = setup(config, num_attributes=3 if config.supervised.enabled else 0)
  new_state, metrics = jax.jit(step, static_argnums=3)(state, batch, jax.random.key(5), True)
  assert all(np.isfinite(v) for v in jax.tree.leaves(metrics)), metrics
  assert ("gan_mix" in metrics) == (config.model == "amr")
  assert ("critic_mix" in metrics) == (config.model == "acai")
  assert ("kl" in metrics) == (config.model == "beta_vae")
  assert ("cls_sup" in metrics and "d_cls_real" in metrics) == config.supervised.enabled
  assert changed(state.generator, new_state.generator)
  # Mixed precision computes in bfloat16 but keeps float32 parameters and optimiser state.
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state) if leaf.dtype != jnp.int32} == {
      jnp.dtype(jnp.float32)}
  # The beta-VAE has no discriminator: it stays as it was.
  assert changed(state.discriminator, new_state.discriminator) == (config.model != "beta_vae")


@pytest.mark.parametrize("variant", ["berthelot", "amr_authors"])
def test_acai_critic_regresses_the_folded_alpha(variant):
  config = tiny_config(model="acai", g_every=1, acai__variant=variant)
  nets, state, step, batch = setup(config)
  key = jax.random.key(6)
  _, aux = generator_loss(config, nets, state, batch, key)
  # alpha is the mixup weight of source 0, drawn exactly as the mixer draws it.
  key_mix = jax.random.split(key, 3)[0]
  key_partners, key_weights = jax.random.split(key_mix)
  h = nets.encoder.apply({"params": state.generator["encoder"]}, batch["image"])
  _, weights = mixers.mixup(key_weights, mixers.partners(key_partners, h, 2))
  np.testing.assert_allclose(aux.alpha, weights[0].reshape(-1))
  folded = np.minimum(aux.alpha, 1 - aux.alpha)
  assert folded.max() <= 0.5

  critic = lambda images: nets.discriminator.apply(
      {"params": state.discriminator, networks.SPECTRAL: state.spectral}, images,
      update_stats=False)
  loss, (_, metrics) = objective.critic_loss(setting_of(config, nets), state.discriminator,
                                             aux.spectral, batch, aux.fakes, aux.alpha)
  np.testing.assert_allclose(metrics["critic_target_mean"], folded.mean(), rtol=1e-6)
  # Recompute the critic's loss by hand from the reference's formulas. (The spectral state used
  # here is the pre-update one; with update_stats=True the normalisation moves a little.)
  x, rec, mix = batch["image"], aux.fakes.rec, aux.fakes.mix
  if variant == "berthelot":
    blend = objective.ACAI_GAMMA * x + (1 - objective.ACAI_GAMMA) * rec
    expected = np.mean((critic(mix) - folded) ** 2) + np.mean(critic(blend) ** 2)
  else:
    bce = lambda logits, target: np.mean(optax.sigmoid_binary_cross_entropy(logits, target))
    expected = bce(critic(x), 0.0) + bce(critic(rec), 0.0) + bce(critic(mix), 2 * folded)
  np.testing.assert_allclose(loss, expected, rtol=2e-2)


@pytest.mark.parametrize("mask_kind", ["soft", "sampled"])
def test_supervised_mixer_mask_shape_and_range(mask_kind):
  config = tiny_config(supervised__enabled=True, supervised__mask=mask_kind, g_every=1)
  nets, state, _, batch = setup(config, num_attributes=3)
  _, aux = generator_loss(config, nets, state, batch, jax.random.key(7))
  mask, y_mix = np.asarray(aux.mask), np.asarray(aux.y_mix)
  chex.assert_shape(mask, (BATCH, aux.codes.shape[-1]))  # one entry per example and channel
  assert mask.min() >= 0 and mask.max() <= 1
  if mask_kind == "sampled":
    assert set(np.unique(mask)) <= {0.0, 1.0}
  else:
    assert 0 < mask.min() and mask.max() < 1
  chex.assert_shape(y_mix, (BATCH, 3))
  assert set(np.unique(y_mix)) <= {0.0, 1.0}  # each attribute comes from one of the pair
  chex.assert_shape(aux.fakes.sup, batch["image"].shape)
  # The mixer is part of G: G's loss reaches its parameters.
  grads = jax.grad(lambda g: generator_loss(config, nets, state, batch, jax.random.key(7),
                                            generator=g)[0])(state.generator)
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["mixer"]))


# ---- the step's random draws as an argument (train_step.Draws)


def _code(nets, config, state, batch):
  return model.encode(nets, config, state.generator["encoder"], batch["image"])


@pytest.mark.parametrize("overrides,update_generator", [
    (dict(), True),  # G's step through the shared D forward
    (dict(), False),  # a D-only step
    (dict(model="acai", g_every=1), True),
    (dict(mixer="bernoulli", k=3, g_every=1), True),
    (dict(model="beta_vae", g_every=1, recon_loss="bce"), True),
    (dict(supervised__enabled=True, supervised__mask="sampled", g_every=1,
          data__name="celeb_a"), True),
])
def test_step_with_its_keys_draws_is_the_step_with_the_key(overrides, update_generator):
  config = tiny_config(**overrides)
  config_lib.validate(config, check_data=False)
  attributes = 3 if config.supervised.enabled else 0
  nets, state, step, batch = setup(config, num_attributes=attributes)
  key = jax.random.key(21)
  draws = train_step_lib.draw(config, key, _code(nets, config, state, batch), attributes)
  mixing = config.model in ("amr", "acai")
  latent = (BATCH, 4, 4, 2)
  if mixing:
    chex.assert_shape(draws.permutations, (config.k - 1, BATCH))
    chex.assert_shape(draws.weights, (config.k, BATCH, 1, 1, 2) if config.mixer == "bernoulli"
                      else (config.k, BATCH, 1, 1, 1))
  if config.model == "beta_vae":
    chex.assert_shape(draws.noise, latent)
  if config.supervised.enabled:
    chex.assert_shape([draws.sup_permutation, draws.sup_pick, draws.sup_uniform],
                      [(BATCH,), (BATCH, attributes), (BATCH, 2)])
  used = {"permutations": mixing, "weights": mixing, "noise": config.model == "beta_vae",
          "sup_permutation": config.supervised.enabled, "sup_pick": config.supervised.enabled,
          "sup_uniform": config.supervised.enabled}
  assert {name: value is not None for name, value in draws._asdict().items()} == used

  jitted = jax.jit(step, static_argnums=3)
  with_key = jitted(state, batch, key, update_generator)
  given = jitted(state, batch, None, update_generator, draws)
  # Bit for bit: the step draws exactly what draw() draws from its key.
  for a, b in zip(jax.tree.leaves(with_key), jax.tree.leaves(given)):
    np.testing.assert_array_equal(a, b)

  # Negative control: other given draws (every used field changed) give another state.
  other = {}
  if mixing:
    other["permutations"] = jnp.roll(draws.permutations, 1, axis=-1)
    other["weights"] = draws.weights[::-1]
  if config.model == "beta_vae":
    other["noise"] = -draws.noise
  if config.supervised.enabled:
    other.update(sup_permutation=jnp.roll(draws.sup_permutation, 1),
                 sup_pick=~draws.sup_pick, sup_uniform=1.0 - draws.sup_uniform)
  for name, value in other.items():
    changed_state, _ = jitted(state, batch, None, update_generator,
                              draws._replace(**{name: value}))
    assert changed(with_key[0], changed_state), name


def test_draw_derives_every_draw_from_the_key_as_the_step_always_has():
  # The key's use is the contract the loop's results rest on (resuming bit for bit, seeds):
  # split(key, 3) -> (mix, supervised, noise); mix -> (partners, weights); partners -> k-1.
  config = tiny_config(k=3, mixer="bernoulli")
  key = jax.random.key(8)
  code = jax.ShapeDtypeStruct((BATCH, 4, 4, 2), jnp.float32)
  draws = train_step_lib.draw(config, key, code)
  key_partners, key_weights = jax.random.split(jax.random.split(key, 3)[0])
  perms = [jax.random.permutation(sub, BATCH) for sub in jax.random.split(key_partners, 2)]
  np.testing.assert_array_equal(draws.permutations, np.stack(perms))
  np.testing.assert_array_equal(
      draws.weights, mixers.bernoulli(key_weights, jnp.zeros((3,) + code.shape))[1])
  other = train_step_lib.draw(config, jax.random.key(9), code)  # negative control
  assert not np.array_equal(other.permutations, draws.permutations)


def test_given_alpha_is_the_acai_critics_alpha():
  # Draws from elsewhere (e.g. the authors' code: a permutation and alpha ~ U(0, 1) per example).
  config = tiny_config(model="acai", g_every=1)
  nets, state, _, batch = setup(config)
  rng = np.random.default_rng(2)
  alpha = rng.uniform(size=BATCH).astype(np.float32)
  perm = rng.permutation(BATCH)
  draws = train_step_lib.Draws(
      permutations=jnp.asarray(perm[None]),
      weights=jnp.asarray(np.stack([alpha, 1 - alpha]).reshape(2, BATCH, 1, 1, 1)))
  _, aux = generator_loss(config, nets, state, batch, None, draws=draws)
  np.testing.assert_array_equal(aux.alpha, alpha)
  h = np.asarray(aux.codes)
  mix = alpha[:, None, None, None] * h + (1 - alpha[:, None, None, None]) * h[perm]
  decoded = model.decode(nets, config, state.generator["decoder"], jnp.asarray(mix))
  tolerances.assert_close(aux.fakes.mix, decoded)
  tolerances.assert_differs(aux.fakes.mix, aux.fakes.rec)  # negative control


def test_given_draws_of_the_wrong_shape_fail_naming_the_field():
  config = tiny_config()
  nets, state, step, batch = setup(config)
  draws = train_step_lib.draw(config, jax.random.key(0), _code(nets, config, state, batch))
  with pytest.raises(ValueError, match=r"draws.permutations must have shape \(1, 8\)"):
    step(state, batch, None, True, draws._replace(permutations=draws.permutations[:, :4]))
  with pytest.raises(ValueError, match="draws.noise must be None"):
    step(state, batch, None, True, draws._replace(noise=jnp.zeros((BATCH, 4, 4, 2))))
  with pytest.raises(ValueError, match="needs a key, or draws"):
    step(state, batch, None, True)
  # G's schedule is static: the loop says which step it is.
  with pytest.raises(TypeError, match="update_generator must be a Python bool"):
    step(state, batch, jax.random.key(0), None)
  with pytest.raises(TypeError, match="update_generator must be a Python bool"):
    step(state, batch, jax.random.key(0), jnp.asarray(True))


# ---- one D forward serving G's terms and D's loss on G's steps


def _g_step_parts(config, key):
  """(shared, separate): G's update and D's loss, gradient and new spectral state on a G step,
  through the step's shared D forward and through G's and D's own forwards."""
  nets, state, _, batch = setup(config)
  setting, optimizers = setting_of(config, nets), train_state_lib.make_optimizers(config.optim)
  draws = draws_of(config, nets, state, batch, key)
  (generator, _, g_loss, _), d_step = train_step_lib._shared_update(  # pylint: disable=protected-access
      setting, optimizers, state, batch, draws)
  generator2, _, g_loss2, aux2 = train_step_lib._generator_update(  # pylint: disable=protected-access
      setting, optimizers, state, batch, draws)
  d_step2 = train_step_lib._discriminator_gradients(  # pylint: disable=protected-access
      setting, state, batch, aux2)
  part = lambda g, loss, d: {"generator": g, "g_loss": loss, "d_loss": d.loss,
                             "d_grads": d.grads, "spectral": d.spectral}
  return part(generator, g_loss, d_step), part(generator2, g_loss2, d_step2)


def test_shared_d_forward_equals_g_and_d_forwards_of_their_own():
  """x's rows of D's forward run apart from the fakes' (G's backward skips them): G's update,
  D's loss, gradient and spectral state equal those of G's forward and D's own forward."""
  config = tolerances.kink_free(tiny_config(g_every=1))
  config_lib.validate(config, check_data=False)
  shared, separate = _g_step_parts(config, jax.random.key(5))
  tolerances.assert_close(shared, separate)
  other, _ = _g_step_parts(config, jax.random.key(6))  # negative control: other draws
  tolerances.assert_differs(other, separate)
