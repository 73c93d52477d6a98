"""One AMR training iteration: the discriminator, the probe and the generator in one function.

The objective, as in the paper (Eq. 3 and the appendix), with ``mix = mixer(partners(enc(x)))``:

  G (enc+dec): lamb * recon(dec(h), x) + GAN(D(dec(h)) -> real) + GAN(D(dec(mix)) -> real)
               + beta * recon(enc(dec(mix)), mix)
  D:           GAN(D(x) -> real) + GAN(D(dec(h)) -> fake) + GAN(D(dec(mix)) -> fake)
  probe:       cross-entropy(probe(stop_gradient(h)), y)

Where gradients stop: D's loss sees the decoded images as constants (``stop_gradient``), so it
sends nothing into G; G's loss differentiates through D but only G's parameters are updated, with
D's spectral-norm state frozen; the probe reads ``stop_gradient(h)`` so it never trains the
encoder. 'ae_gan' is the same step with every mix term removed.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from amr_jax import losses
from amr_jax import mixers
from amr_jax import networks as networks_lib
from amr_jax import train_state as train_state_lib
from amr_jax.train_state import TrainState

Batch = dict[str, jax.Array]  # 'image': (B, H, W, C) in [-1, 1]; 'label': (B,) int32
Metrics = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]


def to_image(decoded: jax.Array, recon_loss: str) -> jax.Array:
  """Maps the decoder's output to image space [-1, 1]: logits when trained with BCE."""
  if recon_loss == "bce":
    return 2.0 * jax.nn.sigmoid(decoded) - 1.0
  return decoded


def make_train_step(config: ml_collections.ConfigDict, nets: networks_lib.Networks,
                    optimizers: train_state_lib.Optimizers) -> TrainStep:
  """Builds ``train_step(state, batch, key) -> (state, metrics)`` from a validated config.

  Every choice in the config is static (Python), so the config never enters the jitted function.
  The caller jits the result (see ``amr_jax.parallel``) and derives ``key`` from the step.
  """
  mixing = config.model == "amr"
  mixer = mixers.get(config.mixer)
  lamb, beta = float(config.lamb), float(config.beta)
  g_every = int(config.g_every)

  def encode(generator, x):
    return nets.encoder.apply({"params": generator["encoder"]}, x)

  def decode(generator, h):
    return to_image(nets.decoder.apply({"params": generator["decoder"]}, h), config.recon_loss)

  def discriminate(state, images, update_stats):
    """D's logits (N,); with update_stats its power iteration advances (returned state)."""
    variables = {"params": state.discriminator, networks_lib.SPECTRAL: state.spectral}
    if not update_stats:
      return nets.discriminator.apply(variables, images, update_stats=False), state.spectral
    logits, new_vars = nets.discriminator.apply(variables, images, update_stats=True,
                                                mutable=[networks_lib.SPECTRAL])
    return logits, new_vars[networks_lib.SPECTRAL]

  def generator_loss(generator, state, x, key):
    h = encode(generator, x)
    x_rec_raw = nets.decoder.apply({"params": generator["decoder"]}, h)
    x_rec = to_image(x_rec_raw, config.recon_loss)
    terms = {"recon": losses.reconstruction(config.recon_loss, x_rec_raw, x)}
    fakes = {"rec": x_rec}
    if mixing:
      key_partners, key_mix = jax.random.split(key)
      h_mix, _ = mixer(key_mix, mixers.partners(key_partners, h, config.k))
      fakes["mix"] = decode(generator, h_mix)
    # D judges the fakes with its current parameters and frozen spectral state; only G learns.
    logits, _ = discriminate(state, jnp.concatenate(list(fakes.values())), update_stats=False)
    logits = dict(zip(fakes, jnp.split(logits, len(fakes))))
    terms["gan_rec"] = losses.gan(config.gan_loss, logits["rec"], real=True)
    total = lamb * terms["recon"] + terms["gan_rec"]
    if mixing:
      terms["gan_mix"] = losses.gan(config.gan_loss, logits["mix"], real=True)
      total += terms["gan_mix"]
      if beta > 0:
        # Consistency: re-encoding a decoded mix should give the mix back (the mix is the target).
        terms["consistency"] = losses.reconstruction(
            config.consistency_loss, encode(generator, fakes["mix"]), jax.lax.stop_gradient(h_mix))
        total += beta * terms["consistency"]
    return total, (terms, h, fakes)

  def generator_update(state, x, key):
    (loss, aux), grads = jax.value_and_grad(generator_loss, has_aux=True)(
        state.generator, state, x, key)
    updates, opt = optimizers.generator.update(grads, state.generator_opt, state.generator)
    return optax.apply_updates(state.generator, updates), opt, loss, aux

  def generator_forward_only(state, x, key):
    loss, aux = generator_loss(state.generator, state, x, key)
    return state.generator, state.generator_opt, loss, aux

  def discriminator_loss(discriminator, state, x, fakes):
    state = state.replace(discriminator=discriminator)
    fakes = [jax.lax.stop_gradient(f) for f in fakes.values()]  # D's loss never reaches G
    logits, spectral = discriminate(state, jnp.concatenate([x] + fakes), update_stats=True)
    real, *fake = jnp.split(logits, 1 + len(fakes))
    loss = losses.gan(config.gan_loss, real, real=True)
    loss += sum(losses.gan(config.gan_loss, f, real=False) for f in fake)
    metrics = {
        "d_acc_real": losses.discriminator_accuracy(real, True),
        "d_acc_fake": jnp.mean(jnp.stack([losses.discriminator_accuracy(f, False) for f in fake])),
    }
    return loss, (spectral, metrics)

  def probe_loss(probe, h, labels):
    # The probe measures the codes; stop_gradient keeps it from shaping them.
    logits = nets.probe.apply({"params": probe}, jax.lax.stop_gradient(h))
    return losses.classification(logits, labels)

  def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
    x, labels = batch["image"], batch["label"]

    # Generator: every g_every-th step (counting from 0) it takes a gradient step; in between
    # it only runs forward to produce the fakes D trains on.
    if g_every == 1:
      g_updated = jnp.ones((), bool)
      generator, generator_opt, g_loss, (terms, h, fakes) = generator_update(state, x, key)
    else:
      g_updated = state.step % g_every == 0
      generator, generator_opt, g_loss, (terms, h, fakes) = jax.lax.cond(
          g_updated, generator_update, generator_forward_only, state, x, key)

    # Discriminator: real x against the decoded fakes, held fixed.
    (d_loss, (spectral, d_metrics)), d_grads = jax.value_and_grad(
        discriminator_loss, has_aux=True)(state.discriminator, state, x, fakes)
    d_updates, discriminator_opt = optimizers.discriminator.update(
        d_grads, state.discriminator_opt, state.discriminator)

    # Probe: a linear classifier on the bottleneck, which it must not shape.
    (p_loss, p_acc), p_grads = jax.value_and_grad(probe_loss, has_aux=True)(
        state.probe, h, labels)
    p_updates, probe_opt = optimizers.probe.update(p_grads, state.probe_opt, state.probe)

    new_state = state.replace(
        step=state.step + 1,
        generator=generator,
        generator_opt=generator_opt,
        discriminator=optax.apply_updates(state.discriminator, d_updates),
        discriminator_opt=discriminator_opt,
        spectral=spectral,
        probe=optax.apply_updates(state.probe, p_updates),
        probe_opt=probe_opt,
    )
    metrics = {"g_loss": g_loss, "d_loss": d_loss, "probe_loss": p_loss, "probe_acc": p_acc,
               "g_updated": g_updated.astype(jnp.float32), **terms, **d_metrics}
    return new_state, metrics

  # The loss functions, exposed so tests can check where gradients stop.
  train_step.generator_loss = generator_loss
  train_step.discriminator_loss = discriminator_loss
  train_step.probe_loss = probe_loss
  return train_step


def make_probe_logits(nets: networks_lib.Networks) -> Callable[[TrainState, jax.Array], jax.Array]:
  """``probe_logits(state, images) -> (B, classes)``: the probe on the encoder's codes."""

  def probe_logits(state: TrainState, images: jax.Array) -> jax.Array:
    h = nets.encoder.apply({"params": state.generator["encoder"]}, images)
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

  h = nets.encoder.apply({"params": generator["encoder"]}, x)
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
  return out
