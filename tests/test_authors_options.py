"""The options that reproduce the authors' iteration exactly: D called once per loss term
(``discriminator_calls='per_term'``), D's backward at the last call's u, v
(``spectral_backward='last_call'``), their GAN loss (``gan_loss='bce_clamped'``), and
``AUTHORS_EXACT``, which sets all three on top of their model."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amr_jax import config as config_lib
from amr_jax import losses
from amr_jax import mixers
from amr_jax import networks
from amr_jax import objective
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib
from tests import tolerances
from tests.test_train_step import setup, tiny_config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bce_clamped.npz")
# D's calls in one authors' iteration: G's side, then D's loss (models/swapgan.py, acai_f3.py).
CALLS = {"amr": 5, "ae_gan": 4, "acai": 4}


def authors_config(model="amr", **overrides):
  """The tiny config with the authors' iteration: D per term, their loss, beta 0 as theirs."""
  fields = dict(discriminator_calls="per_term", gan_loss="bce_clamped", beta=0.0, model=model)
  if model == "acai":
    fields.update(acai__variant="amr_authors", g_every=1)
  return tiny_config(**{**fields, **overrides})


def apply_d(nets, params, spectral, images):
  """One training forward of D: (logits, the spectral state it leaves)."""
  out, new = nets.discriminator.apply({"params": params, networks.SPECTRAL: spectral}, images,
                                      update_stats=True, mutable=[networks.SPECTRAL])
  return out, new[networks.SPECTRAL]


def after_calls(nets, state, images, calls):
  """The spectral state after ``calls`` forwards of D from ``state``'s."""
  spectral = state.spectral
  for _ in range(calls):
    _, spectral = apply_d(nets, state.discriminator, spectral, images)
  return spectral


def authors_iteration(config, nets, optimizers, state, batch, draws, update_generator):
  """The authors' iteration written out as their train_on_instance reads, D applied once per
  term with its spectral state threaded through every call. Returns (the state after it, its
  metrics)."""
  model, x, d_params = config.model, batch["image"], state.discriminator
  gan = functools.partial(losses.gan, config.gan_loss)

  def generator_side(generator):
    h = nets.encoder.apply({"params": generator["encoder"]}, x)
    rec = nets.decoder.apply({"params": generator["decoder"]}, h)
    mix = None
    if model != "ae_gan":
      h_mix, _ = mixers.combine(mixers.stack_partners(h, draws.permutations), draws.weights)
      mix = nets.decoder.apply({"params": generator["decoder"]}, h_mix)
    terms = {"recon": losses.reconstruction(config.recon_loss, rec, x)}
    total = config.lamb * terms["recon"]
    spectral = state.spectral
    if model == "acai":
      critic, spectral = apply_d(nets, d_params, spectral, mix)
      terms["critic_mix"] = losses.bce_clamped(critic, jnp.zeros_like(critic))
      total += config.acai.advweight * terms["critic_mix"]
    else:
      logits_rec, spectral = apply_d(nets, d_params, spectral, rec)
      # AE+GAN: their --disable_mix judges a mix it leaves out of G's loss; amr_jax's AE+GAN
      # draws none, and the power iteration does not depend on the images.
      logits_mix, spectral = apply_d(nets, d_params, spectral, rec if mix is None else mix)
      terms["gan_rec"] = gan(logits_rec, True)
      total += terms["gan_rec"]
      if model == "amr":
        terms["gan_mix"] = gan(logits_mix, True)
        total += terms["gan_mix"]
    return total, (terms, spectral, rec, mix)

  (_, (terms, spectral, rec, mix)), g_grads = jax.value_and_grad(
      generator_side, has_aux=True)(state.generator)
  new_state = state.replace(step=state.step + 1)
  if update_generator:
    updates, opt = optimizers.generator.update(g_grads, state.generator_opt, state.generator)
    new_state = new_state.replace(generator=optax.apply_updates(state.generator, updates),
                                  generator_opt=opt)
  else:
    terms = {"recon": terms["recon"]}

  def discriminator_side(params):
    out_real, s = apply_d(nets, params, spectral, x)
    out_rec, s = apply_d(nets, params, s, rec)
    if model == "acai":
      out_mix, s = apply_d(nets, params, s, mix)
      alpha = draws.weights[0].reshape(-1)
      loss = (losses.bce_clamped(out_real, jnp.zeros_like(out_real))
              + losses.bce_clamped(out_rec, jnp.zeros_like(out_rec))
              + losses.bce_clamped(out_mix, 2.0 * jnp.minimum(alpha, 1.0 - alpha)))
      return loss, s
    loss = gan(out_real, True) + gan(out_rec, False)
    if model == "amr":
      out_mix, s = apply_d(nets, params, s, mix)
      loss += gan(out_mix, False)
    return loss, s

  (d_loss, spectral), d_grads = jax.value_and_grad(discriminator_side, has_aux=True)(d_params)
  updates, opt = optimizers.discriminator.update(d_grads, state.discriminator_opt, d_params)
  new_state = new_state.replace(discriminator=optax.apply_updates(d_params, updates),
                                discriminator_opt=opt, spectral=spectral)
  return new_state, {"d_loss": d_loss, **terms}


def compared(actual, expected):
  """(actual, expected) as compared: D's gradient through Adam's moments, not D's parameters. On
  Adam's first step every parameter moves by lr * sign(gradient), so a component within rounding
  of 0 (measured: ~1e-4 of the largest, also between this step's own G-step and D-only programs)
  moves by 2 lr either way. The probe is not the subject: it trains the same way under both."""
  keep = dict(discriminator=expected.discriminator, probe=expected.probe,
              probe_opt=expected.probe_opt)
  return actual.replace(**keep), expected


def with_calls(config, calls):
  other = config.copy_and_resolve_references()
  other.discriminator_calls = calls
  return other


def code_of(nets, state, batch):
  return nets.encoder.apply({"params": state.generator["encoder"]}, batch["image"])


@pytest.mark.parametrize("model", ["amr", "ae_gan", "acai"])
@pytest.mark.parametrize("update_generator", [True, False])
def test_per_term_is_the_authors_sequence_of_discriminator_calls(model, update_generator):
  config = authors_config(model)
  config_lib.validate(config, check_data=False)
  nets, state, step, batch = setup(config)
  draws = train_step_lib.draw(config, jax.random.key(5), code_of(nets, state, batch))
  new_state, metrics = jax.jit(step, static_argnums=3)(state, batch, None, update_generator,
                                                       draws)
  optimizers = train_state_lib.make_optimizers(config.optim)
  expected, terms = jax.jit(functools.partial(authors_iteration, config, nets, optimizers),
                           static_argnums=3)(state, batch, draws, update_generator)
  tolerances.assert_close(*compared(new_state, expected))
  tolerances.assert_close({k: metrics[k] for k in terms}, terms)

  # The power iteration advanced exactly once per call of the authors' iteration.
  calls = CALLS[model]
  tolerances.assert_close(new_state.spectral, after_calls(nets, state, batch["image"], calls))
  for other in (calls - 1, calls + 1):  # negative controls: one call fewer, one more
    tolerances.assert_differs(new_state.spectral,
                              after_calls(nets, state, batch["image"], other))
  # Negative control: the batched step (one D forward per loss) is another iteration.
  batched = train_step_lib.make_train_step(with_calls(config, "batched"), nets, optimizers)
  batched_state, _ = jax.jit(batched, static_argnums=3)(state, batch, None, update_generator,
                                                        draws)
  tolerances.assert_differs(batched_state.spectral, new_state.spectral)


def converged(nets, state, images, iterations=500):
  """``state`` with D's power iteration run until its estimates stop moving."""
  advance = lambda _, spectral: apply_d(nets, state.discriminator, spectral, images[:1])[1]
  return state.replace(spectral=jax.jit(
      lambda spectral: jax.lax.fori_loop(0, iterations, advance, spectral))(state.spectral))


@pytest.mark.parametrize("update_generator", [True, False])
def test_per_term_is_batched_once_u_has_converged(update_generator):
  # One power iteration per call over the 5 calls, or 5 in one batched forward: the same u at
  # the end; the losses differ only while the 5 estimates of sigma differ (u not converged).
  config = authors_config("amr")
  nets, state, step, batch = setup(config)
  batched_config = with_calls(config, "batched")
  batched_config.arch.spectral_power_iterations = 5
  _, _, batched, _ = setup(batched_config)
  per_term, batched = (jax.jit(s, static_argnums=3) for s in (step, batched))
  key = jax.random.key(4)
  settled = converged(nets, state, batch["image"])
  tolerances.assert_close(*compared(per_term(settled, batch, key, update_generator)[0],
                                    batched(settled, batch, key, update_generator)[0]))
  # Negative control: from the initial, random u the five estimates differ by up to ~30%.
  tolerances.assert_differs(*compared(per_term(state, batch, key, update_generator)[0],
                                      batched(state, batch, key, update_generator)[0]))


@pytest.fixture(scope="module")
def torch_bce():
  with np.load(FIXTURE) as f:
    return {name: f[name] for name in f.files}


# Where torch's sigmoid is a float32 subnormal (logits in about (-88.7, -87.3); exp(-x) overflows
# below), XLA:CPU flushes it to 0: the loss of a "1" there is 100 (the clamp) instead of -logit,
# and both gradients are below 1e-26. Compared apart.
SUBNORMAL = (-88.7, -87.3)


def elementwise(kind, logits, target):
  """(loss, gradient) of each logit alone: ``losses.gan``'s mean over one element."""
  def one(logit):
    if kind == "bce_clamped":
      return losses.bce_clamped(logit[None], jnp.full((1,), target))
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logit[None], jnp.full((1,), target)))
  return jax.jit(jax.vmap(jax.value_and_grad(one)))(jnp.asarray(logits))


def test_bce_clamped_is_torchs_bce_loss_on_the_sigmoid(torch_bce):
  logits, regular = torch_bce["logits"], ~((torch_bce["logits"] > SUBNORMAL[0])
                                           & (torch_bce["logits"] < SUBNORMAL[1]))
  assert (~regular).sum() == 1  # -88
  for i, target in enumerate(torch_bce["targets"]):
    loss, grad = elementwise("bce_clamped", logits, float(target))
    np.testing.assert_allclose(loss[regular], torch_bce["loss_each"][i][regular],
                               rtol=tolerances.RTOL, atol=0)
    np.testing.assert_allclose(grad[regular], torch_bce["grad_each"][i][regular],
                               rtol=tolerances.RTOL, atol=0)
    assert 87 * target <= loss[~regular][0] <= 100 * target + 1e-6
    assert abs(grad[~regular][0]) < 1e-26
    # The mean over the logits (the loss as the train step calls it) and its gradient.
    mean_logits = jnp.asarray(torch_bce["mean_logits"])
    mean, mean_grad = jax.value_and_grad(losses.bce_clamped)(
        mean_logits, jnp.full(mean_logits.shape, target))
    np.testing.assert_allclose(mean, torch_bce["loss_mean"][i], rtol=tolerances.RTOL, atol=0)
    np.testing.assert_allclose(mean_grad, torch_bce["grad_mean"][i], rtol=tolerances.RTOL,
                               atol=0)
  # Theirs: no gradient where the sigmoid rounds to 1 (logits 17 and above), a shrunken one
  # below -27.6, where p (1 - p) < 1e-12.
  at = {float(v): j for j, v in enumerate(logits)}
  assert torch_bce["grad_each"][1][at[17.0]] == 0 and torch_bce["grad_each"][0][at[90.0]] == 0
  np.testing.assert_allclose(torch_bce["grad_each"][1][at[-30.0]], -0.0936, rtol=1e-3)

  # Negative control: the 'bce' loss (optax) keeps sigmoid(x) - t there and does not clamp.
  loss, grad = elementwise("bce", logits, 0.0)
  assert abs(grad[at[17.0]] - 1.0) < 1e-6 and abs(loss[at[90.0]] - 90.0) < 1e-4
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(grad[regular], torch_bce["grad_each"][0][regular],
                               rtol=tolerances.RTOL, atol=0)


def test_bce_clamped_is_bce_where_the_sigmoid_does_not_saturate():
  rng = np.random.default_rng(0)
  logits = np.linspace(-15, 15, 301).astype(np.float32)
  for target in (0.0, 1.0, float(rng.uniform())):
    clamped, clamped_grad = elementwise("bce_clamped", logits, target)
    plain, plain_grad = elementwise("bce", logits, target)
    # PyTorch's loss, and so bce_clamped, takes the log of the rounded probability: log(1 - p)
    # carries p's rounding (2^-24 near 1) relative to 1 - p (0.2 at logit 15); the gradient,
    # p - t, carries it absolutely.
    rounding = 2.0**-23 / (1.0 - 1.0 / (1.0 + np.exp(-logits.astype(np.float64))))
    assert np.all(np.abs(clamped - plain) <= rounding + 1e-6 * np.abs(plain))
    np.testing.assert_allclose(clamped_grad, plain_grad, rtol=1e-6, atol=2e-7)
  # Negative control: beyond the saturation the two part.
  clamped, clamped_grad = elementwise("bce_clamped", np.asarray([20.0], np.float32), 0.0)
  plain, plain_grad = elementwise("bce", np.asarray([20.0], np.float32), 0.0)
  assert abs(clamped[0] - plain[0]) > 50 and abs(clamped_grad[0] - plain_grad[0]) > 0.5


def test_bce_clamped_is_the_gan_loss_and_acais_critic_loss():
  logits = jnp.asarray([-3.0, 0.5, 20.0])
  for real in (True, False):
    np.testing.assert_array_equal(losses.gan("bce_clamped", logits, real),
                                  losses.bce_clamped(logits, jnp.full((3,), float(real))))
  # ACAI's 'amr_authors' critic under gan_loss='bce_clamped': no gradient from a saturated
  # logit; under 'bce' it has one (negative control).
  for gan_loss, saturated in (("bce_clamped", True), ("bce", False)):
    config = authors_config("acai", gan_loss=gan_loss)
    nets, state, _, batch = setup(config)
    setting = objective.Setting.from_config(config, nets)
    draws = train_step_lib.draw(config, jax.random.key(0), code_of(nets, state, batch))
    _, aux = objective.generator_loss(setting, state.generator, state.discriminator,
                                      state.spectral, batch, draws)
    # Scale D's last layer so every logit saturates towards "fake" (critic target 0 is "real").
    params = dict(state.discriminator)
    last = sorted(params)[-1]
    params[last] = {"kernel": params[last]["kernel"] * 0.0, "bias": params[last]["bias"] * 0.0
                    + 40.0}
    grads = jax.grad(lambda d: objective.critic_loss(setting, d, aux.spectral, batch, aux.fakes,
                                                     aux.alpha)[0])(params)
    assert (float(jnp.abs(grads[last]["bias"]).max()) == 0.0) == saturated, gan_loss


def test_authors_exact_is_the_authors_model_and_iteration():
  from experiments.configs import mnist, svhn  # pylint: disable=g-import-not-at-top
  assert config_lib.AUTHORS_EXACT == {**config_lib.AUTHORS_MODEL,
                                      "arch.spectral_power_iterations": 1,
                                      "discriminator_calls": "per_term",
                                      "spectral_backward": "last_call",
                                      "gan_loss": "bce_clamped"}
  for get_config, row in ((mnist.get_config, "mixup"), (svhn.get_config, "acai,dim=256")):
    config = get_config(f"{row},authors_exact")
    config_lib.validate(config, check_data=False)
    for field, value in config_lib.AUTHORS_EXACT.items():
      assert config_lib._get(config, field) == value, field
    plain = get_config(row)  # negative control: without the option, amr_jax's own iteration
    assert (plain.discriminator_calls, plain.spectral_backward, plain.gan_loss) == (
        "batched", "own_call", "bce")
  assert (config.acai.variant, config.acai.advweight, config.g_every) == ("amr_authors", 1.0, 5)
  assert (plain.acai.variant, plain.acai.advweight, plain.g_every) == ("berthelot", 0.5, 1)
  assert mnist.paper_number("mixup,authors_exact") == mnist.paper_number("mixup")
  with pytest.raises(ValueError, match="allowed: dim=N, train=N, authors, authors_exact$"):
    mnist.get_config("mixup,authors_exactly")


@pytest.mark.parametrize("edit, message", [
    (lambda c: setattr(c, "discriminator_calls", "each"),
     "config.discriminator_calls='each' is not allowed; allowed: 'batched', 'per_term'"),
    (lambda c: setattr(c, "gan_loss", "bce_clamp"),
     "config.gan_loss='bce_clamp' is not allowed; allowed: 'bce', 'bce_clamped', 'lsgan'"),
    (lambda c: setattr(c, "spectral_backward", "last"),
     "config.spectral_backward='last' is not allowed; allowed: 'own_call', 'last_call'"),
    (lambda c: setattr(c, "spectral_backward", "last_call"),
     "config.spectral_backward='last_call' is not allowed; allowed: 'own_call' unless "
     "discriminator_calls='per_term' (one D call per loss: its own is the last)"),
    (lambda c: c.update(model="beta_vae", discriminator_calls="per_term"),
     "config.discriminator_calls='per_term' is not allowed; allowed: 'batched' for "
     "model='beta_vae' (it has no D)"),
    (lambda c: c.update(discriminator_calls="per_term", data=dict(name="celeb_a"),
                        supervised=dict(enabled=True)),
     "config.discriminator_calls='per_term' is not allowed; allowed: 'batched' for supervised "
     "AMR (not implemented: the authors' code has no such model)"),
])
def test_bad_authors_options_fail_in_one_line_naming_the_field(config_error, edit, message):
  assert config_error(edit) == message


@pytest.mark.parametrize("model", ["amr", "ae_gan", "acai"])
def test_per_term_configs_are_valid(model):
  # The counterpart of the errors above: the models with a D take it.
  config_lib.validate(authors_config(model), check_data=False)
