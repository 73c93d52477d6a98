"""One training iteration: the discriminator, the probe and the generator in one function.

AMR's objective, as in the paper (Eq. 3, section 2.2 and the appendix), with
``mix = mixer(partners(h))`` and ``h = enc(x)``:

  G (enc+dec): lamb * recon(dec(h), x) + GAN(D(dec(h)) -> real) + GAN(D(dec(mix)) -> real)
               + beta * recon(enc(dec(mix)), mix)
  D:           GAN(D(x) -> real) + GAN(D(dec(h)) -> fake) + GAN(D(dec(mix)) -> fake)
  probe:       cross-entropy(probe(stop_gradient(h)), y)

Supervised AMR adds a learned, label-conditioned mix ``mix_sup = m * h + (1 - m) * h[perm]``
with ``m`` from the ClassMixer(y_mix):
  G: + GAN(D(dec(mix_sup)) -> real) + cls * BCE(D_cls(dec(mix_sup)), y_mix)
     + eps * mean((sum(m) - C/2)^2)
  D: + BCE(D_cls(x), y) + GAN(D(dec(mix_sup)) -> fake)

Baselines built on the same step: 'ae_gan' (no mix terms); 'acai' (Berthelot et al. 2019: a
critic regresses the folded mixing coefficient; see ``_acai_*``); 'beta_vae' (no D at all).

G's terms through D (and the consistency term) are computed only on the steps where G steps;
the others need from G only the codes and the decoded images D trains on. On G's steps of the
GAN models one D forward over [x, *fakes] serves both G's terms and D's loss (``shared_update``).

How D is called (``config.discriminator_calls``): 'batched' runs one D forward over all the images
of a loss, its spectral norm's power iteration advanced ``arch.spectral_power_iterations`` times
per forward. 'per_term' calls D as the authors' code does, once per loss term in their order,
each call advancing the power iteration from where the previous one left it and normalising with
its own estimate: G's side D(dec(h)), D(dec(mix)) (ACAI: D(dec(mix)) only), then D's side D(x),
D(dec(h)), D(dec(mix)), 5 calls per AMR iteration (AE+GAN 4: the authors' --disable_mix still
judges a mix on G's side, then leaves it out of G's loss; ACAI 4). G's side calls D also on the
steps where G does not step; what nothing uses there only advances the power iteration.
``spectral_backward='last_call'`` differentiates every sigma of D's loss at the u, v of its last
call, as the authors' backward finds them (their SpectralNorm overwrites u, v in place).

Randomness: everything random in a step (the partners' permutations, the mixer's weights or
masks, ACAI's alpha, the beta-VAE's noise, supervised AMR's draws) is a :class:`Draws`, drawn
from the step's key by :func:`draw`, or given: ``train_step(state, batch, key, draws=...)``
runs the step on draws from elsewhere (another implementation's, a test's).

Where gradients stop: D's loss sees the generated images as constants (``stop_gradient``), so it
sends nothing into G; G's loss differentiates through D but only G's parameters are updated, with
D's spectral-norm state frozen; the probe reads ``stop_gradient(h)``, so it never trains the
encoder.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from amr_jax import losses
from amr_jax import mixers
from amr_jax import networks as networks_lib
from amr_jax import train_state as train_state_lib
from amr_jax.train_state import TrainState

# 'image': (B, H, W, C) in [-1, 1]; 'label': (B,) int32; 'attributes': (B, A) {0,1} (supervised)
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
TrainStep = Callable[..., tuple[TrainState, Metrics]]

ACAI_GAMMA = 0.2  # ACAI's regulariser interpolates x and dec(h) with this weight on x
# The authors' order of D's calls on the decoded images (reconstructions, mixes, learned mixes).
FAKE_ORDER = ("rec", "mix", "sup")


class Draws(NamedTuple):
  """Every random draw of one train step; a model's unused fields are None.

  ``B`` is the batch size, ``code`` the shape of a code ``h`` (``(B, H', W', C)``), ``C`` its
  channels, ``A`` the number of attributes (supervised AMR).

  Attributes:
    permutations: 'amr' and 'acai': int32 ``(k - 1, B)``, the partners of the mix: source
      ``i + 1`` is ``h[permutations[i]]`` (:func:`mixers.stack_partners`).
    weights: 'amr' and 'acai': the mixer's weights ``(k, B, *s)`` as its sampler returns them
      (:func:`mixers.get_sampler`; e.g. mixup ``(k, B, 1, 1, 1)``, Bernoulli masks
      ``(k, B, 1, 1, C)``); ``mix = sum(weights * sources, axis=0)``. ACAI's alpha is
      ``weights[0]``.
    noise: 'beta_vae': float32 ``code``, standard normal: ``z = mean + exp(log_var / 2) * noise``
      (``vae_scale='std'``: ``z = mean + scale * noise``).
    sup_permutation: supervised AMR: int32 ``(B,)``, the partner of the learned mix.
    sup_pick: supervised AMR: bool ``(B, A)``, True where the mixed label takes the example's own
      attribute, False where its partner's (each ~ Bern(0.5)).
    sup_uniform: supervised AMR with ``supervised.mask='sampled'``: float32 ``(B, C)`` ~ U(0, 1);
      the sampled mask is ``sup_uniform < sigmoid(class_mixer(y_mix))``.
  """
  permutations: jax.Array | None = None
  weights: jax.Array | None = None
  noise: jax.Array | None = None
  sup_permutation: jax.Array | None = None
  sup_pick: jax.Array | None = None
  sup_uniform: jax.Array | None = None


def draw(config: ml_collections.ConfigDict, key: jax.Array, code: Any,
         num_attributes: int = 0) -> Draws:
  """The draws a train step makes from its ``key`` (pure: the same key, the same draws).

  ``train_step(state, batch, key)`` equals ``train_step(state, batch, key, draws=draw(config,
  key, h, A))`` bit for bit.

  Args:
    config: the step's validated config (model, mixer, k, supervised.*).
    key: the step's key.
    code: the codes ``h`` of the batch, or anything with their ``shape`` ``(B, *features)`` and
      ``dtype`` (e.g. ``jax.ShapeDtypeStruct``): the mixer's weights are drawn in that dtype.
    num_attributes: ``A``, the batch's attributes per example (supervised AMR only).

  Returns:
    :class:`Draws` with the fields the model uses.
  """
  model = config.model
  shape, batch = tuple(code.shape), code.shape[0]
  key_mix, key_sup, key_noise = jax.random.split(key, 3)
  out = {}
  if model == "beta_vae":
    out["noise"] = jax.random.normal(key_noise, shape)
  if model in ("amr", "acai"):
    key_partners, key_weights = jax.random.split(key_mix)
    out["permutations"] = mixers.permutations(key_partners, batch, config.k)
    out["weights"] = mixers.get_sampler(config.mixer)(key_weights, (config.k,) + shape,
                                                      code.dtype)
  if model == "amr" and config.supervised.enabled:
    if num_attributes < 1:
      raise ValueError(f"supervised AMR draws need num_attributes >= 1; got {num_attributes}")
    key_partners, key_labels, key_mask = jax.random.split(key_sup, 3)
    out["sup_permutation"] = mixers.permutations(key_partners, batch, 2)[0]
    out["sup_pick"] = jax.random.bernoulli(key_labels, 0.5, (batch, num_attributes))
    if config.supervised.mask == "sampled":
      out["sup_uniform"] = jax.random.uniform(key_mask, (batch, shape[-1]), jnp.float32)
  return Draws(**out)


def _check_draws(given: Draws, expected: Draws) -> None:
  """Raises ValueError naming the first field of ``given`` whose presence or shape differs."""
  if not isinstance(given, Draws):
    raise ValueError(f"draws must be a train_step.Draws; got {type(given).__name__}")
  for name, want, got in zip(Draws._fields, expected, given):
    if (want is None) != (got is None):
      raise ValueError(f"draws.{name} must be {'None' if want is None else 'given'} for this "
                       f"config; got {'None' if got is None else jnp.shape(got)}")
    if want is not None and tuple(jnp.shape(got)) != tuple(want.shape):
      raise ValueError(f"draws.{name} must have shape {tuple(want.shape)}; got "
                       f"{tuple(jnp.shape(got))}")


def to_image(decoded: jax.Array, recon_loss: str) -> jax.Array:
  """Maps the decoder's output to image space [-1, 1]: logits when trained with BCE."""
  if recon_loss == "bce":
    return 2.0 * jax.nn.sigmoid(decoded) - 1.0
  return decoded


def code(nets: networks_lib.Networks, config: ml_collections.ConfigDict, encoder_params,
         x: jax.Array) -> jax.Array:
  """The code the decoder and the probe see: enc(x), or the posterior mean for the beta-VAE."""
  h = nets.encoder.apply({"params": encoder_params}, x)
  if config.model == "beta_vae":
    h, _ = jnp.split(h, 2, axis=-1)
  return h


def _bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))


def make_train_step(config: ml_collections.ConfigDict, nets: networks_lib.Networks,
                    optimizers: train_state_lib.Optimizers) -> TrainStep:
  """Builds ``train_step(state, batch, key, update_generator=None, draws=None) -> (state,
  metrics)`` from a validated config (``draws``: see :class:`Draws` and :func:`draw`).

  Every choice in the config is static (Python), so the config never enters the jitted function.
  The caller jits the result (see ``amr_jax.parallel``) and derives ``key`` from the step.
  """
  model = config.model
  mixing = model in ("amr", "acai")
  supervised = model == "amr" and config.supervised.enabled
  uses_discriminator = model != "beta_vae"
  per_term = config.discriminator_calls == "per_term"
  # 'per_term': D's calls on G's side of the authors' iteration (see the module docstring).
  generator_side_calls = 1 if model == "acai" else 2
  mixers.get(config.mixer)  # an unknown mixer fails here, before anything is traced
  lamb, beta = float(config.lamb), float(config.beta)
  g_every = int(config.g_every)
  gan = lambda logits, real: losses.gan(config.gan_loss, logits, real)
  # ACAI's 'amr_authors' critic is a BCE as the authors compute it under 'bce_clamped'.
  acai_bce = losses.bce_clamped if config.gan_loss == "bce_clamped" else _bce

  def decode(generator, h):
    return to_image(nets.decoder.apply({"params": generator["decoder"]}, h), config.recon_loss)

  def discriminate(state, images, update_stats, backward=None):
    """D's outputs (logits (N,), or (logits, attribute logits)); with update_stats its power
    iteration advances and the new spectral state is returned. ``backward``: the spectral state
    whose next power-iteration step gives the u, v that sigma is differentiated at."""
    variables = {"params": state.discriminator, networks_lib.SPECTRAL: state.spectral}
    if backward is not None:
      variables[networks_lib.SPECTRAL_BACKWARD] = backward
    if not update_stats:
      return nets.discriminator.apply(variables, images, update_stats=False), state.spectral
    out, new_vars = nets.discriminator.apply(variables, images, update_stats=True,
                                             mutable=[networks_lib.SPECTRAL])
    return out, new_vars[networks_lib.SPECTRAL]

  def judge(state, groups, for_d_loss=False):
    """D's outputs on image groups (concatenated in order) and its new spectral state: one
    forward over all of them ('batched'), or one per group ('per_term'), each advancing the power
    iteration from the state the previous one left and normalising with its own estimate.
    ``for_d_loss`` with spectral_backward='last_call': every call's sigma is differentiated at
    the last call's u, v (the power iteration does not depend on the images: known in advance)."""
    if not per_term:
      return discriminate(state, jnp.concatenate(groups), update_stats=True)
    backward = None
    if for_d_loss and config.spectral_backward == "last_call":
      backward = advance_power_iteration(state, groups[0].shape[1:], len(groups) - 1)
    outs, spectral = [], state.spectral
    for images in groups:
      out, spectral = discriminate(state.replace(spectral=spectral), images, update_stats=True,
                                   backward=backward)
      outs.append(out)
    return jnp.concatenate(outs), spectral

  def advance_power_iteration(state, image_shape, calls):
    """The spectral state after ``calls`` D forwards whose outputs nothing uses ('per_term').
    The power iteration does not depend on the images, so D runs on one blank image and its
    output is dropped: under jit XLA removes the convolutions as dead code."""
    blank = jnp.zeros((1, *image_shape), jnp.float32)
    spectral = state.spectral
    for _ in range(calls):
      _, spectral = discriminate(state.replace(spectral=spectral), blank, update_stats=True)
    return spectral

  def split_outputs(out, names):
    """Splits D's outputs on a concatenation of image groups back into named groups."""
    logits, attributes = out if supervised else (out, None)
    logits = dict(zip(names, jnp.split(logits, len(names))))
    attributes = dict(zip(names, jnp.split(attributes, len(names)))) if supervised else None
    return logits, attributes

  def supervised_mix(generator, h, attributes, draws):
    """The learned mix of section 2.2: returns (mix_sup, y_mix, mask)."""
    h_partner = h[draws.sup_permutation]
    y_partner = attributes[draws.sup_permutation]  # the same partner
    # The conditioning label is itself a mix: each attribute from one of the two examples.
    y_mix = jnp.where(draws.sup_pick.astype(bool), attributes, y_partner).astype(jnp.float32)
    probability = jax.nn.sigmoid(nets.class_mixer.apply({"params": generator["mixer"]}, y_mix))
    if config.supervised.mask == "sampled":
      # jax.random.bernoulli(key, p) is uniform(key, p.shape, p.dtype) < p: the same sample.
      sample = (draws.sup_uniform < probability).astype(jnp.float32)
      mask = probability + jax.lax.stop_gradient(sample - probability)  # straight-through
    else:
      mask = probability
    m = mask.reshape((h.shape[0],) + (1,) * (h.ndim - 2) + (h.shape[-1],))
    return m * h + (1.0 - m) * h_partner, y_mix, mask

  def step_draws(key, h, batch, draws):
    """``draws`` checked against this config's, or drawn from ``key`` when None."""
    num_attributes = batch["attributes"].shape[-1] if supervised else 0
    if draws is None:
      return draw(config, key, h, num_attributes)
    _check_draws(draws, jax.eval_shape(
        lambda: draw(config, jax.random.key(0), h, num_attributes)))
    return draws

  def generator_loss(generator, state, batch, key, for_update=True, shared_d=False, draws=None):
    """G's loss. Returns (total, (terms, h, fakes, extras)); fakes are decoded images for D.

    ``for_update=False`` (a step where G does not step): only what D and the probe need, the
    codes and the decoded images, plus the reconstruction term; the terms through D and the
    consistency term are skipped (nothing would use them) and ``total`` is incomplete.
    ``shared_d`` (GAN models): D's forward also judges x and advances its spectral state, and
    ``extras['discriminator']`` hands (outputs, spectral state) on to D's loss (shared_update).
    ``draws``: the step's :class:`Draws`; None draws them from ``key``.
    With 'per_term' D calls, ``extras['spectral']`` is D's spectral state after G's side, where
    D's loss starts from."""
    x = batch["image"]
    raw = nets.encoder.apply({"params": generator["encoder"]}, x)
    terms, extras = {}, {}
    if model == "beta_vae":
      mean, spread = jnp.split(raw, 2, axis=-1)
      h = mean
      draws = step_draws(key, h, batch, draws)
      if config.vae_scale == "std":  # the authors': the Normal's scale, of either sign
        variance = jnp.square(spread)
        log_var = jnp.log(variance)
        z = mean + spread * draws.noise
      else:
        log_var = spread
        variance = jnp.exp(log_var)
        z = mean + jnp.exp(0.5 * log_var) * draws.noise
      x_rec_raw = nets.decoder.apply({"params": generator["decoder"]}, z)
      # Sums over pixels and code dimensions (mean over the batch): the scale beta-VAE's beta
      # is defined on.
      pixels = x[0].size
      terms["recon"] = losses.reconstruction(config.recon_loss, x_rec_raw, x) * pixels
      terms["kl"] = jnp.mean(jnp.sum(
          0.5 * (variance + mean**2 - 1.0 - log_var), axis=tuple(range(1, mean.ndim))))
      total = terms["recon"] + config.kl_weight * terms["kl"]
      return total, (terms, h, {}, extras)

    h = raw
    draws = step_draws(key, h, batch, draws)
    x_rec_raw = nets.decoder.apply({"params": generator["decoder"]}, h)
    terms["recon"] = losses.reconstruction(config.recon_loss, x_rec_raw, x)
    total = lamb * terms["recon"]
    fakes = {"rec": to_image(x_rec_raw, config.recon_loss)}
    if mixing:
      h_mix, weights = mixers.combine(mixers.stack_partners(h, draws.permutations),
                                      draws.weights)
      fakes["mix"] = decode(generator, h_mix)
      extras["alpha"] = weights[0].reshape(-1)  # weight of source 0 (ACAI's coefficient)
    if supervised:
      h_sup, y_mix, mask = supervised_mix(generator, h, batch["attributes"], draws)
      fakes["sup"] = decode(generator, h_sup)
      extras["y_mix"], extras["mask"] = y_mix, mask
      channels = mask.shape[-1]
      terms["mask"] = jnp.mean(jnp.square(jnp.sum(mask, axis=-1) - channels / 2))
      total += config.supervised.mask_eps * terms["mask"]

    if not for_update:
      if per_term:
        extras["spectral"] = advance_power_iteration(state, x.shape[1:], generator_side_calls)
      return total, (terms, h, fakes, extras)
    if model == "acai":
      # The autoencoder wants the critic to see no interpolation in its decoded mixes.
      if per_term:
        critic, extras["spectral"] = judge(state, [fakes["mix"]])
      else:
        critic, _ = discriminate(state, fakes["mix"], update_stats=False)
      if config.acai.variant == "berthelot":
        terms["critic_mix"] = jnp.mean(jnp.square(critic))
      else:  # the AMR authors' variant: BCE towards target 0 ("real")
        terms["critic_mix"] = acai_bce(critic, jnp.zeros_like(critic))
      total += config.acai.advweight * terms["critic_mix"]
    else:
      # D judges the fakes with its current parameters and frozen spectral state; only G learns.
      # (Its power iteration starts from the stored state either way: the same normalised
      # weights whether or not the new state is kept.)
      names = ["real", *fakes] if shared_d else list(fakes)
      if per_term:
        out, spectral = judge(state, list(fakes.values()))
        # The authors' AE+GAN judges a mix too (unused): its call only advances the state.
        extras["spectral"] = advance_power_iteration(
            state.replace(spectral=spectral), x.shape[1:], generator_side_calls - len(fakes))
      else:
        images = jnp.concatenate(([x] if shared_d else []) + list(fakes.values()))
        out, spectral = discriminate(state, images, update_stats=shared_d)
      if shared_d:
        extras["discriminator"] = (out, spectral)
      logits, attributes = split_outputs(out, names)
      terms["gan_rec"] = gan(logits["rec"], True)
      total += terms["gan_rec"]
      if mixing:
        terms["gan_mix"] = gan(logits["mix"], True)
        total += terms["gan_mix"]
      if supervised:
        terms["gan_sup"] = gan(logits["sup"], True)
        terms["cls_sup"] = _bce(attributes["sup"], extras["y_mix"])
        total += terms["gan_sup"] + config.supervised.cls_weight * terms["cls_sup"]

    if mixing and beta > 0:
      # Consistency: re-encoding a decoded mix should give the mix back (the mix is the target).
      h_again = nets.encoder.apply({"params": generator["encoder"]}, fakes["mix"])
      terms["consistency"] = losses.reconstruction(config.consistency_loss, h_again,
                                                   jax.lax.stop_gradient(h_mix))
      total += beta * terms["consistency"]
    return total, (terms, h, fakes, extras)

  def discriminator_loss(discriminator, state, batch, fakes, extras):
    """D's loss on real images and G's outputs, held fixed. Returns (loss, (spectral, metrics))."""
    state = state.replace(discriminator=discriminator)
    if per_term:
      state = state.replace(spectral=extras["spectral"])  # where G's side left it
    x = batch["image"]
    fakes = {name: jax.lax.stop_gradient(f) for name, f in fakes.items()}  # never reaches G
    if model == "acai":
      return _acai_critic_loss(state, x, fakes, jax.lax.stop_gradient(extras["alpha"]))
    # Through value_and_grad's aux the fakes come back with their names sorted; 'per_term' calls
    # D in the authors' order, where the order moves the power iteration between calls.
    names = [n for n in FAKE_ORDER if n in fakes] if per_term else list(fakes)
    out, spectral = judge(state, [x, *(fakes[n] for n in names)], for_d_loss=True)
    loss, metrics = gan_discriminator_loss(out, names, batch)
    return loss, (spectral, metrics)

  def gan_discriminator_loss(out, fake_names, batch):
    """D's GAN loss from its outputs on [x, *fakes]: real -> real, every fake -> fake."""
    logits, attributes = split_outputs(out, ["real", *fake_names])
    loss = gan(logits["real"], True) + sum(gan(logits[n], False) for n in fake_names)
    metrics = {
        "d_acc_real": losses.discriminator_accuracy(logits["real"], True),
        "d_acc_fake": jnp.mean(jnp.stack(
            [losses.discriminator_accuracy(logits[n], False) for n in fake_names])),
    }
    if supervised:
      metrics["d_cls_real"] = _bce(attributes["real"], batch["attributes"].astype(jnp.float32))
      loss += metrics["d_cls_real"]
    return loss, metrics

  def _acai_critic_loss(state, x, fakes, alpha):
    """ACAI's critic: regress the folded mixing coefficient of decoded mixes, and 0 on a blend of
    real images and their reconstructions (the regulariser)."""
    folded = jnp.minimum(alpha, 1.0 - alpha)  # in [0, 0.5]: distance to the nearest endpoint
    if config.acai.variant == "berthelot":
      blend = ACAI_GAMMA * x + (1.0 - ACAI_GAMMA) * fakes["rec"]
      out, spectral = judge(state, [fakes["mix"], blend], for_d_loss=True)
      critic_mix, critic_blend = jnp.split(out, 2)
      loss = jnp.mean(jnp.square(critic_mix - folded)) + jnp.mean(jnp.square(critic_blend))
    else:  # the AMR authors' variant: BCE, targets 0 for x and dec(h), 2*min(a, 1-a) for mixes
      out, spectral = judge(state, [x, fakes["rec"], fakes["mix"]], for_d_loss=True)
      critic_real, critic_rec, critic_mix = jnp.split(out, 3)
      loss = (acai_bce(critic_real, jnp.zeros_like(critic_real))
              + acai_bce(critic_rec, jnp.zeros_like(critic_rec))
              + acai_bce(critic_mix, 2.0 * folded))
    return loss, (spectral, {"critic_target_mean": jnp.mean(folded)})

  def probe_loss(probe, h, labels):
    # The probe measures the codes; stop_gradient keeps it from shaping them.
    logits = nets.probe.apply({"params": probe}, jax.lax.stop_gradient(h))
    return losses.classification(logits, labels)

  def generator_update(state, batch, key, draws):
    (loss, aux), grads = jax.value_and_grad(generator_loss, has_aux=True)(
        state.generator, state, batch, key, draws=draws)
    updates, opt = optimizers.generator.update(grads, state.generator_opt, state.generator)
    return optax.apply_updates(state.generator, updates), opt, loss, aux

  def shared_update(state, batch, key, draws):
    """G's and D's gradients on a G step from one D forward over [x, *fakes]: G's loss reads
    its outputs on the fakes (D's parameters held), D's loss all of them (the fakes held). The
    same as generator_update followed by discriminator_loss's gradient, one D forward over the
    decoded images fewer. Returns G's update as generator_update does and D's (loss, grads,
    spectral state, metrics)."""
    def both_losses(generator, discriminator):
      g_loss, (terms, h, fakes, extras) = generator_loss(
          generator, state.replace(discriminator=discriminator), batch, key, shared_d=True,
          draws=draws)
      out, spectral = extras.pop("discriminator")
      d_loss, d_metrics = gan_discriminator_loss(out, list(fakes), batch)
      return (g_loss, d_loss), ((terms, h, fakes, extras), spectral, d_metrics)

    (g_loss, d_loss), backward, (aux, spectral, d_metrics) = jax.vjp(
        both_losses, state.generator, state.discriminator, has_aux=True)
    one, zero = jnp.ones_like(g_loss), jnp.zeros_like(g_loss)
    g_grads, _ = backward((one, zero))  # G's loss; its gradient for D is never used (dead code)
    _, d_grads = backward((zero, one))  # D's loss; its gradient for G is never used
    updates, opt = optimizers.generator.update(g_grads, state.generator_opt, state.generator)
    return ((optax.apply_updates(state.generator, updates), opt, g_loss, aux),
            (d_loss, d_grads, spectral, d_metrics))

  def generator_forward_only(state, batch, key, draws, for_update=False):
    loss, aux = generator_loss(state.generator, state, batch, key, for_update=for_update,
                               draws=draws)
    return state.generator, state.generator_opt, loss, aux

  def train_step(state: TrainState, batch: Batch, key: jax.Array | None,
                 update_generator: bool | None = None,
                 draws: Draws | None = None) -> tuple[TrainState, Metrics]:
    # ``draws``: the step's random draws (see Draws); None draws them from ``key`` (draw()),
    # given, ``key`` is not used.
    if key is None and draws is None:
      raise ValueError("train_step needs a key, or draws to use instead")
    # Generator: every g_every-th step (counting from 0) it takes a gradient step; in between
    # it only runs forward to produce the images D trains on. The training loop says which
    # (``update_generator``, static: one compiled step per case); left None, a ``lax.cond`` on
    # the step decides, which XLA:CPU runs about 3x slower than either branch alone.
    if update_generator is None and g_every == 1:
      update_generator = True
    # On steps where G does not step, its loss terms through D are not computed (a D forward
    # over the decoded images saved) and not logged: G's terms are means over G's steps.
    # On G's steps of the GAN models, G's terms and D's loss share D's forward (shared_update),
    # unless D is called once per term.
    shared = update_generator is True and model in ("amr", "ae_gan") and not per_term
    if shared:
      g_updated = jnp.asarray(True)
      (generator, generator_opt, g_loss, aux), d_step = shared_update(state, batch, key, draws)
    elif update_generator is None:
      # Both branches of a cond return the same structure: here the full loss is computed.
      g_updated = state.step % g_every == 0
      generator, generator_opt, g_loss, aux = jax.lax.cond(
          g_updated, generator_update,
          functools.partial(generator_forward_only, for_update=True), state, batch, key, draws)
    else:
      g_updated = jnp.asarray(update_generator)
      generator, generator_opt, g_loss, aux = (
          generator_update if update_generator else generator_forward_only)(
              state, batch, key, draws)
    terms, h, fakes, extras = aux
    metrics = {"g_updated": g_updated.astype(jnp.float32), **terms}
    if update_generator is not False:
      metrics["g_loss"] = g_loss
    new_state = state.replace(step=state.step + 1, generator=generator,
                              generator_opt=generator_opt)

    # Discriminator (or ACAI's critic): real x against G's outputs, held fixed.
    if uses_discriminator:
      if shared:
        d_loss, d_grads, spectral, d_metrics = d_step
      else:
        (d_loss, (spectral, d_metrics)), d_grads = jax.value_and_grad(
            discriminator_loss, has_aux=True)(state.discriminator, state, batch, fakes, extras)
      d_updates, discriminator_opt = optimizers.discriminator.update(
          d_grads, state.discriminator_opt, state.discriminator)
      new_state = new_state.replace(
          discriminator=optax.apply_updates(state.discriminator, d_updates),
          discriminator_opt=discriminator_opt, spectral=spectral)
      metrics.update(d_loss=d_loss, **d_metrics)

    # Probe: a linear classifier on the bottleneck, which it must not shape.
    (p_loss, p_acc), p_grads = jax.value_and_grad(probe_loss, has_aux=True)(
        state.probe, h, batch["label"])
    p_updates, probe_opt = optimizers.probe.update(p_grads, state.probe_opt, state.probe)
    new_state = new_state.replace(probe=optax.apply_updates(state.probe, p_updates),
                                  probe_opt=probe_opt)
    metrics.update(probe_loss=p_loss, probe_acc=p_acc)
    return new_state, metrics

  # The loss functions, exposed so tests can check where gradients stop.
  train_step.generator_loss = generator_loss
  train_step.discriminator_loss = discriminator_loss
  train_step.probe_loss = probe_loss
  return train_step


def make_probe_logits(nets: networks_lib.Networks, config: ml_collections.ConfigDict
                      ) -> Callable[[TrainState, jax.Array], jax.Array]:
  """``probe_logits(state, images) -> (B, classes)``: the probe on the encoder's codes."""

  def probe_logits(state: TrainState, images: jax.Array) -> jax.Array:
    h = code(nets, config, state.generator["encoder"], images)
    return nets.probe.apply({"params": state.probe}, h)

  return probe_logits


def generated_images(config: ml_collections.ConfigDict, nets: networks_lib.Networks,
                     state: TrainState, x: jax.Array, key: jax.Array) -> dict[str, Any]:
  """Pictures for a batch ``x`` (n, H, W, C): reconstructions, partners, decoded random mixes,
  and interpolation strips between x[i] and x[i+1] (n-1 pairs, ``num`` points each).

  Returns a dict of arrays in image space: 'inputs', 'reconstructions' (n, H, W, C),
  'partners' (n, ...), 'mixes' (n, ...), 'latent_interpolation', 'pixel_interpolation'
  (n-1, num, H, W, C); 'channel_interpolation' too for channel-swapping mixers.
  """
  num = 10
  generator = state.generator

  def decode(h):
    return to_image(nets.decoder.apply({"params": generator["decoder"]}, h), config.recon_loss)

  h = code(nets, config, generator["encoder"], x)
  key_partners, key_mix = jax.random.split(key)
  hs = mixers.partners(key_partners, h, config.k)
  # The same key permutes the images as it permuted the codes: the first partner of each input.
  partner_images = mixers.partners(key_partners, x, config.k)[1]
  h_mix, _ = mixers.get(config.mixer)(key_mix, hs)
  out = {
      "inputs": x,
      "reconstructions": decode(h),
      "partners": partner_images,
      "mixes": decode(h_mix),
  }
  h1, h2 = h[:-1], h[1:]
  path = jax.vmap(lambda a, b: mixers.interpolate(a, b, num))(h1, h2)  # (n-1, num, ...)
  out["latent_interpolation"] = jax.vmap(decode)(path)
  out["pixel_interpolation"] = jax.vmap(lambda a, b: mixers.interpolate(a, b, num))(x[:-1], x[1:])
  if config.mixer in ("bernoulli", "mixup_per_channel"):
    swap = jax.vmap(lambda a, b: mixers.interpolate_channels(a, b, num))(h1, h2)
    out["channel_interpolation"] = jax.vmap(decode)(swap)
  if nets.class_mixer is not None:
    # Supervised AMR: for each pair, the decoded mix for every combination of attribute values.
    num_attributes = generator["mixer"]["Dense_0"]["kernel"].shape[0]
    combos = jnp.asarray([[(c >> a) & 1 for a in range(num_attributes)]
                          for c in range(2**num_attributes)], jnp.float32)  # (2^A, A)
    mask = jax.nn.sigmoid(nets.class_mixer.apply({"params": generator["mixer"]}, combos))
    mask = mask.reshape((mask.shape[0],) + (1,) * (h.ndim - 2) + (mask.shape[-1],))
    mixes = jax.vmap(lambda a, b: mask * a[None] + (1.0 - mask) * b[None])(h1, h2)
    out["attribute_mixes"] = jax.vmap(decode)(mixes)  # (n-1, 2^A, H, W, C)
  return out
