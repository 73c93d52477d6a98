"""AMR's objective as pure functions: G's loss, D's loss, ACAI's critic loss and the probe's loss.

As in the paper (Eq. 3, section 2.2 and the appendix), with ``mix = mixer(partners(h))`` and
``h = enc(x)``:

  G (enc+dec): lamb * recon(dec(h), x) + GAN(D(dec(h)) -> real) + GAN(D(dec(mix)) -> real)
               + beta * recon(enc(dec(mix)), mix)
  D:           GAN(D(x) -> real) + GAN(D(dec(h)) -> fake) + GAN(D(dec(mix)) -> fake)
  probe:       cross-entropy(probe(stop_gradient(h)), y)

Supervised AMR adds a learned, label-conditioned mix ``mix_sup = m * h + (1 - m) * h[perm]``
with ``m`` from the ClassMixer(y_mix):
  G: + GAN(D(dec(mix_sup)) -> real) + cls * BCE(D_cls(dec(mix_sup)), y_mix)
     + eps * mean((sum(m) - C/2)^2)
  D: + BCE(D_cls(x), y) + GAN(D(dec(mix_sup)) -> fake)

Baselines on the same functions: 'ae_gan' (no mix terms); 'acai' (Berthelot et al. 2019: a
critic regresses the folded mixing coefficient, :func:`critic_loss`); 'beta_vae' (no D at all).

Each loss takes the parameters it differentiates first, then what it reads of the train state
(D's parameters and spectral state), the batch and the step's random :class:`Draws`; the static
choices of the config and the networks come in a :class:`Setting` (bind it with
``functools.partial``). Each returns ``(loss, aux)`` with ``aux`` a NamedTuple.

How D is called (``Setting.per_term``): 'batched' runs one D forward over all the images of a
loss. 'per_term' calls D as the authors' code does, once per loss term in their order, each call
advancing the power iteration from where the previous one left it and normalising with its own
estimate: G's side D(dec(h)), D(dec(mix)) (ACAI: D(dec(mix)) only), then D's side D(x), D(dec(h)),
D(dec(mix)), 5 calls per AMR iteration (AE+GAN 4: the authors' --disable_mix still judges a mix
on G's side, then leaves it out of G's loss; ACAI 4). ``spectral_backward='last_call'``
differentiates every sigma of D's loss at the u, v of its last call, as the authors' backward
finds them (their SpectralNorm overwrites u, v in place).

Where gradients stop: D's loss sees the generated images as constants (``stop_gradient``), so it
sends nothing into G; G's loss differentiates through D but with D's spectral state as given (only
a shared forward, ``judge_real``, advances it); the probe reads ``stop_gradient(h)``, so it never
trains the encoder.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from amr_jax import losses
from amr_jax import mixers
from amr_jax import model
from amr_jax import networks as networks_lib

# 'image': (B, H, W, C) in [-1, 1]; 'label': (B,) int32; 'attributes': (B, A) {0,1} (supervised)
Batch = dict[str, jax.Array]

ACAI_GAMMA = 0.2  # ACAI's regulariser interpolates x and dec(h) with this weight on x


# ---- the step's random draws


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

  ``train_step(state, batch, key, g)`` equals ``train_step(state, batch, key, g,
  draws=draw(config, key, h, A))`` bit for bit.

  Args:
    config: the step's validated config (model, mixer, k, supervised.*).
    key: the step's key.
    code: the codes ``h`` of the batch, or anything with their ``shape`` ``(B, *features)`` and
      ``dtype`` (e.g. ``jax.ShapeDtypeStruct``): the mixer's weights are drawn in that dtype.
    num_attributes: ``A``, the batch's attributes per example (supervised AMR only).

  Returns:
    :class:`Draws` with the fields the model uses.
  """
  model_name = config.model
  shape, batch = tuple(code.shape), code.shape[0]
  key_mix, key_sup, key_noise = jax.random.split(key, 3)
  out = {}
  if model_name == "beta_vae":
    out["noise"] = jax.random.normal(key_noise, shape)
  if model_name in ("amr", "acai"):
    key_partners, key_weights = jax.random.split(key_mix)
    out["permutations"] = mixers.permutations(key_partners, batch, config.k)
    out["weights"] = mixers.get_sampler(config.mixer)(key_weights, (config.k,) + shape,
                                                      code.dtype)
  if model_name == "amr" and config.supervised.enabled:
    if num_attributes < 1:
      raise ValueError(f"supervised AMR draws need num_attributes >= 1; got {num_attributes}")
    key_partners, key_labels, key_mask = jax.random.split(key_sup, 3)
    out["sup_permutation"] = mixers.permutations(key_partners, batch, 2)[0]
    out["sup_pick"] = jax.random.bernoulli(key_labels, 0.5, (batch, num_attributes))
    if config.supervised.mask == "sampled":
      out["sup_uniform"] = jax.random.uniform(key_mask, (batch, shape[-1]), jnp.float32)
  return Draws(**out)


def check_draws(given: Draws, expected: Draws) -> None:
  """Raises ValueError naming the first field of ``given`` whose presence or shape differs from
  ``expected``'s (e.g. ``jax.eval_shape`` of :func:`draw`)."""
  if not isinstance(given, Draws):
    raise ValueError(f"draws must be a train_step.Draws; got {type(given).__name__}")
  for name, want, got in zip(Draws._fields, expected, given):
    if (want is None) != (got is None):
      raise ValueError(f"draws.{name} must be {'None' if want is None else 'given'} for this "
                       f"config; got {'None' if got is None else jnp.shape(got)}")
    if want is not None and tuple(jnp.shape(got)) != tuple(want.shape):
      raise ValueError(f"draws.{name} must have shape {tuple(want.shape)}; got "
                       f"{tuple(jnp.shape(got))}")


# ---- the static context and the losses' outputs


@dataclasses.dataclass(frozen=True)
class Setting:
  """The config's choices the objective reads, and the networks; built once, never traced."""
  nets: networks_lib.Networks
  model: str  # 'amr', 'ae_gan', 'acai' or 'beta_vae'
  supervised: bool  # supervised AMR's learned mix (model 'amr' only)
  per_term: bool  # discriminator_calls='per_term': one D call per loss term, the authors' order
  last_call: bool  # spectral_backward='last_call': D's sigmas differentiated at its last call
  lamb: float  # weight of the reconstruction
  beta: float  # weight of the consistency term (0: off)
  recon_loss: str
  consistency_loss: str
  gan_loss: str
  kl_weight: float  # beta_vae's beta
  vae_scale: str
  acai_variant: str
  acai_advweight: float
  mask_kind: str  # supervised.mask: 'soft' or 'sampled'
  cls_weight: float
  mask_eps: float
  # On G's steps with one shared D forward ('batched' GAN models): x's rows in a forward of their
  # own, apart from the fakes' (the same normalised weights), so that G's backward through D
  # skips them. False: one forward over [x, *fakes] (the same maths; measured ~1.2x slower per
  # G step on CPU, benchmarks/conv_paths.py).
  real_apart: bool = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  nets: networks_lib.Networks) -> Setting:
    return cls(
        nets=nets, model=config.model,
        supervised=config.model == "amr" and config.supervised.enabled,
        per_term=config.discriminator_calls == "per_term",
        last_call=config.spectral_backward == "last_call",
        lamb=float(config.lamb), beta=float(config.beta), recon_loss=config.recon_loss,
        consistency_loss=config.consistency_loss, gan_loss=config.gan_loss,
        kl_weight=config.kl_weight, vae_scale=config.vae_scale,
        acai_variant=config.acai.variant, acai_advweight=config.acai.advweight,
        mask_kind=config.supervised.mask, cls_weight=config.supervised.cls_weight,
        mask_eps=config.supervised.mask_eps)

  @property
  def mixing(self) -> bool:
    return self.model in ("amr", "acai")

  @property
  def uses_discriminator(self) -> bool:
    return self.model != "beta_vae"

  @property
  def generator_side_calls(self) -> int:
    """'per_term': D's calls on G's side of the authors' iteration."""
    return 1 if self.model == "acai" else 2


class Fakes(NamedTuple):
  """G's decoded images in image space, in the order the authors' code calls D on them."""
  rec: jax.Array | None = None  # dec(h)
  mix: jax.Array | None = None  # dec(mix)
  sup: jax.Array | None = None  # dec(mix_sup), supervised AMR

  def names(self) -> list[str]:
    return [name for name, images in zip(self._fields, self) if images is not None]


class GeneratorAux(NamedTuple):
  """What G's loss computes besides the loss.

  Attributes:
    terms: G's loss terms by name (the step's metrics).
    codes: ``h`` (B, *code); the beta-VAE's posterior mean.
    fakes: the decoded images D trains on (none for the beta-VAE).
    mixed: the mixed codes ``mix`` (mixing models).
    alpha: (B,) the weight of source 0 of the mix (ACAI's coefficient; mixing models).
    y_mix: (B, A) supervised AMR's mixed labels.
    mask: (B, C) supervised AMR's mask.
    spectral: D's spectral state after G's side of the iteration, where D's loss starts:
      advanced by 'per_term' calls, or by a shared forward (``judge_real``: D's new state);
      otherwise as given (G's loss alone does not advance it).
    judged: with ``judge_real``, D's outputs on ``[x, *fakes]`` (D's loss reads them).
  """
  terms: dict[str, jax.Array]
  codes: jax.Array
  fakes: Fakes
  mixed: jax.Array | None = None
  alpha: jax.Array | None = None
  y_mix: jax.Array | None = None
  mask: jax.Array | None = None
  spectral: Any = None
  judged: Any = None


class DiscriminatorAux(NamedTuple):
  """What D's (or ACAI's critic's) loss computes besides the loss."""
  spectral: Any  # D's spectral state after the loss's calls: its new state
  metrics: dict[str, jax.Array]


# ---- G


def generator_loss(setting: Setting, generator, discriminator, spectral, batch: Batch,
                   draws: Draws, judge_real: bool = False) -> tuple[jax.Array, GeneratorAux]:
  """G's loss (encoder, decoder and supervised AMR's class mixer): the terms of
  :func:`generator_forward`, then those through D (D's parameters are held by the caller, which
  differentiates ``generator`` only), then the consistency term.

  ``judge_real`` ('batched' GAN models): D's one forward judges x with the fakes and advances its
  spectral state; ``aux.judged`` hands its outputs on to :func:`gan_discriminator_loss` (one D
  forward for both losses).
  """
  total, aux = _generate(setting, generator, batch, draws)
  if setting.model == "beta_vae":
    return total, aux
  terms, fakes, judged = aux.terms, aux.fakes, None
  if setting.model == "acai":
    # The autoencoder wants the critic to see no interpolation in its decoded mixes.
    if setting.per_term:
      critic, spectral = judge(setting, discriminator, spectral, [fakes.mix])
    else:
      critic, _ = discriminate(setting, discriminator, spectral, fakes.mix, update_stats=False)
    if setting.acai_variant == "berthelot":
      terms["critic_mix"] = jnp.mean(jnp.square(critic))
    else:  # the AMR authors' variant: BCE towards target 0 ("real")
      terms["critic_mix"] = _acai_bce(setting, critic, jnp.zeros_like(critic))
    total += setting.acai_advweight * terms["critic_mix"]
  else:
    logits, attributes, spectral, judged = _judge_fakes(setting, discriminator, spectral,
                                                        batch["image"], fakes, judge_real)
    terms["gan_rec"] = _gan(setting, logits["rec"], True)
    total += terms["gan_rec"]
    if setting.mixing:
      terms["gan_mix"] = _gan(setting, logits["mix"], True)
      total += terms["gan_mix"]
    if setting.supervised:
      terms["gan_sup"] = _gan(setting, logits["sup"], True)
      terms["cls_sup"] = _bce(attributes["sup"], aux.y_mix)
      total += terms["gan_sup"] + setting.cls_weight * terms["cls_sup"]

  if setting.mixing and setting.beta > 0:
    # Consistency: re-encoding a decoded mix should give the mix back (the mix is the target).
    h_again = setting.nets.encoder.apply({"params": generator["encoder"]}, fakes.mix)
    terms["consistency"] = losses.reconstruction(setting.consistency_loss, h_again,
                                                 jax.lax.stop_gradient(aux.mixed))
    total += setting.beta * terms["consistency"]
  return total, aux._replace(spectral=spectral, judged=judged)


def generator_forward(setting: Setting, generator, discriminator, spectral, batch: Batch,
                      draws: Draws) -> GeneratorAux:
  """What D and the probe need on a step where G does not step: the codes, the decoded images
  and G's terms that need no D (the reconstruction; the mask's; the beta-VAE's whole loss).
  With 'per_term' D calls, G's side still calls D: its calls only advance the power iteration."""
  _, aux = _generate(setting, generator, batch, draws)
  if setting.per_term and setting.uses_discriminator:
    spectral = advance_power_iteration(setting, discriminator, spectral,
                                       batch["image"].shape[1:], setting.generator_side_calls)
  return aux._replace(spectral=spectral)


def _generate(setting: Setting, generator, batch: Batch, draws: Draws
              ) -> tuple[jax.Array, GeneratorAux]:
  """G's forward and the part of its loss that needs no D: (that part, aux)."""
  if setting.model == "beta_vae":
    return _beta_vae_loss(setting, generator, batch, draws)
  nets, x = setting.nets, batch["image"]
  h = nets.encoder.apply({"params": generator["encoder"]}, x)
  x_rec_raw = nets.decoder.apply({"params": generator["decoder"]}, h)
  terms = {"recon": losses.reconstruction(setting.recon_loss, x_rec_raw, x)}
  total = setting.lamb * terms["recon"]
  aux = GeneratorAux(terms, h, Fakes(rec=model.to_image(x_rec_raw, setting.recon_loss)))
  if setting.mixing:
    h_mix, weights = mixers.combine(mixers.stack_partners(h, draws.permutations),
                                    draws.weights)
    aux = aux._replace(fakes=aux.fakes._replace(mix=_decode(setting, generator, h_mix)),
                       mixed=h_mix, alpha=weights[0].reshape(-1))  # weight of source 0
  if setting.supervised:
    h_sup, y_mix, mask = supervised_mix(setting, generator, h, batch["attributes"], draws)
    aux = aux._replace(fakes=aux.fakes._replace(sup=_decode(setting, generator, h_sup)),
                       y_mix=y_mix, mask=mask)
    channels = mask.shape[-1]
    terms["mask"] = jnp.mean(jnp.square(jnp.sum(mask, axis=-1) - channels / 2))
    total += setting.mask_eps * terms["mask"]
  return total, aux


def supervised_mix(setting: Setting, generator, h: jax.Array, attributes: jax.Array,
                   draws: Draws) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The learned mix of section 2.2: returns (mix_sup, y_mix, mask)."""
  h_partner = h[draws.sup_permutation]
  y_partner = attributes[draws.sup_permutation]  # the same partner
  # The conditioning label is itself a mix: each attribute from one of the two examples.
  y_mix = jnp.where(draws.sup_pick.astype(bool), attributes, y_partner).astype(jnp.float32)
  probability = jax.nn.sigmoid(
      setting.nets.class_mixer.apply({"params": generator["mixer"]}, y_mix))
  if setting.mask_kind == "sampled":
    # jax.random.bernoulli(key, p) is uniform(key, p.shape, p.dtype) < p: the same sample.
    sample = (draws.sup_uniform < probability).astype(jnp.float32)
    mask = probability + jax.lax.stop_gradient(sample - probability)  # straight-through
  else:
    mask = probability
  m = mask.reshape((h.shape[0],) + (1,) * (h.ndim - 2) + (h.shape[-1],))
  return m * h + (1.0 - m) * h_partner, y_mix, mask


def _beta_vae_loss(setting: Setting, generator, batch: Batch, draws: Draws
                   ) -> tuple[jax.Array, GeneratorAux]:
  """The beta-VAE's loss: reconstruction of a sampled code plus kl_weight * KL to N(0, 1)."""
  nets, x = setting.nets, batch["image"]
  raw = nets.encoder.apply({"params": generator["encoder"]}, x)
  mean, spread = jnp.split(raw, 2, axis=-1)
  if setting.vae_scale == "std":  # the authors': the Normal's scale, of either sign
    variance = jnp.square(spread)
    log_var = jnp.log(variance)
    z = mean + spread * draws.noise
  else:
    log_var = spread
    variance = jnp.exp(log_var)
    z = mean + jnp.exp(0.5 * log_var) * draws.noise
  x_rec_raw = nets.decoder.apply({"params": generator["decoder"]}, z)
  # Sums over pixels and code dimensions (mean over the batch): the scale beta-VAE's beta is
  # defined on.
  pixels = x[0].size
  terms = {"recon": losses.reconstruction(setting.recon_loss, x_rec_raw, x) * pixels}
  terms["kl"] = jnp.mean(jnp.sum(
      0.5 * (variance + mean**2 - 1.0 - log_var), axis=tuple(range(1, mean.ndim))))
  total = terms["recon"] + setting.kl_weight * terms["kl"]
  return total, GeneratorAux(terms, mean, Fakes())


def _judge_fakes(setting: Setting, discriminator, spectral, x: jax.Array, fakes: Fakes,
                 judge_real: bool):
  """D's outputs on G's fakes for G's GAN terms: (logits, attributes, spectral state, outputs
  on [x, *fakes] when ``judge_real`` else None)."""
  if judge_real and setting.per_term:
    raise ValueError("a shared D forward (judge_real) needs discriminator_calls='batched'")
  images = [getattr(fakes, name) for name in fakes.names()]
  if setting.per_term:
    out, spectral = judge(setting, discriminator, spectral, images)
    # The authors' AE+GAN judges a mix too (unused): its call only advances the state.
    spectral = advance_power_iteration(setting, discriminator, spectral, x.shape[1:],
                                       setting.generator_side_calls - len(images))
  else:
    # D judges the fakes with its current parameters and the spectral state as given; only G
    # learns. (Its power iteration starts from the stored state either way: the same
    # normalised weights whether or not the new state is kept.)
    if judge_real and setting.real_apart:
      # x's forward apart from the fakes' (the same normalised weights): G's backward through D
      # then runs over the fakes only, not over x's rows too.
      real, new_spectral = discriminate(setting, discriminator, spectral, x, update_stats=True)
      out, _ = discriminate(setting, discriminator, spectral, jnp.concatenate(images),
                            update_stats=False)
      out, spectral = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), real, out), new_spectral
    else:
      out, spectral = discriminate(setting, discriminator, spectral,
                                   jnp.concatenate(([x] if judge_real else []) + images),
                                   update_stats=judge_real)
  names = ["real", *fakes.names()] if judge_real else fakes.names()
  logits, attributes = split_outputs(setting, out, names)
  return logits, attributes, spectral, (out if judge_real else None)


# ---- D


def discriminator_loss(setting: Setting, discriminator, spectral, batch: Batch, fakes: Fakes
                       ) -> tuple[jax.Array, DiscriminatorAux]:
  """D's loss (GAN models) on real images and G's decoded images, held fixed; D's calls start
  from ``spectral`` (where G's side left it)."""
  fakes = jax.tree.map(jax.lax.stop_gradient, fakes)  # never reaches G
  names = fakes.names()
  out, spectral = judge(setting, discriminator, spectral,
                        [batch["image"], *(getattr(fakes, n) for n in names)], for_d_loss=True)
  loss, metrics = gan_discriminator_loss(setting, out, names, batch)
  return loss, DiscriminatorAux(spectral, metrics)


def gan_discriminator_loss(setting: Setting, out: Any, fake_names: list[str], batch: Batch
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """D's GAN loss from its outputs on [x, *fakes]: real -> real, every fake -> fake; supervised
  AMR adds D's attribute classifier on x. Returns (loss, metrics)."""
  logits, attributes = split_outputs(setting, out, ["real", *fake_names])
  loss = _gan(setting, logits["real"], True) + sum(
      _gan(setting, logits[n], False) for n in fake_names)
  metrics = {
      "d_acc_real": losses.discriminator_accuracy(logits["real"], True),
      "d_acc_fake": jnp.mean(jnp.stack(
          [losses.discriminator_accuracy(logits[n], False) for n in fake_names])),
  }
  if setting.supervised:
    metrics["d_cls_real"] = _bce(attributes["real"], batch["attributes"].astype(jnp.float32))
    loss += metrics["d_cls_real"]
  return loss, metrics


def critic_loss(setting: Setting, discriminator, spectral, batch: Batch, fakes: Fakes,
                alpha: jax.Array) -> tuple[jax.Array, DiscriminatorAux]:
  """ACAI's critic: regress the folded mixing coefficient of decoded mixes, and 0 on a blend of
  real images and their reconstructions (the regulariser). G's images and ``alpha`` are held
  fixed."""
  x = batch["image"]
  fakes = jax.tree.map(jax.lax.stop_gradient, fakes)  # never reaches G
  alpha = jax.lax.stop_gradient(alpha)
  folded = jnp.minimum(alpha, 1.0 - alpha)  # in [0, 0.5]: distance to the nearest endpoint
  if setting.acai_variant == "berthelot":
    blend = ACAI_GAMMA * x + (1.0 - ACAI_GAMMA) * fakes.rec
    out, spectral = judge(setting, discriminator, spectral, [fakes.mix, blend], for_d_loss=True)
    critic_mix, critic_blend = jnp.split(out, 2)
    loss = jnp.mean(jnp.square(critic_mix - folded)) + jnp.mean(jnp.square(critic_blend))
  else:  # the AMR authors' variant: BCE, targets 0 for x and dec(h), 2*min(a, 1-a) for mixes
    out, spectral = judge(setting, discriminator, spectral, [x, fakes.rec, fakes.mix],
                          for_d_loss=True)
    critic_real, critic_rec, critic_mix = jnp.split(out, 3)
    loss = (_acai_bce(setting, critic_real, jnp.zeros_like(critic_real))
            + _acai_bce(setting, critic_rec, jnp.zeros_like(critic_rec))
            + _acai_bce(setting, critic_mix, 2.0 * folded))
  return loss, DiscriminatorAux(spectral, {"critic_target_mean": jnp.mean(folded)})


# ---- the probe


def probe_loss(setting: Setting, probe, codes: jax.Array, labels: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """The linear probe's cross-entropy on the codes: (loss, accuracy)."""
  # The probe measures the codes; stop_gradient keeps it from shaping them.
  logits = setting.nets.probe.apply({"params": probe}, jax.lax.stop_gradient(codes))
  return losses.classification(logits, labels)


# ---- calling D


def discriminate(setting: Setting, discriminator, spectral, images: jax.Array,
                 update_stats: bool, backward=None) -> tuple[Any, Any]:
  """D's outputs (logits (N,), or (logits, attribute logits)) and its spectral state: with
  ``update_stats`` its power iteration advances and the new state is returned. ``backward``: the
  spectral state whose next power-iteration step gives the u, v that sigma is differentiated at."""
  variables = {"params": discriminator, networks_lib.SPECTRAL: spectral}
  if backward is not None:
    variables[networks_lib.SPECTRAL_BACKWARD] = backward
  if not update_stats:
    return setting.nets.discriminator.apply(variables, images, update_stats=False), spectral
  out, new_vars = setting.nets.discriminator.apply(variables, images, update_stats=True,
                                                   mutable=[networks_lib.SPECTRAL])
  return out, new_vars[networks_lib.SPECTRAL]


def judge(setting: Setting, discriminator, spectral, groups: list[jax.Array],
          for_d_loss: bool = False) -> tuple[Any, Any]:
  """D's outputs on image groups (concatenated in order) and its new spectral state: one
  forward over all of them ('batched'), or one per group ('per_term'), each advancing the power
  iteration from the state the previous one left and normalising with its own estimate.
  ``for_d_loss`` with spectral_backward='last_call': every call's sigma is differentiated at
  the last call's u, v (the power iteration does not depend on the images: known in advance)."""
  if not setting.per_term:
    return discriminate(setting, discriminator, spectral, jnp.concatenate(groups),
                        update_stats=True)
  backward = None
  if for_d_loss and setting.last_call:
    backward = advance_power_iteration(setting, discriminator, spectral, groups[0].shape[1:],
                                       len(groups) - 1)
  outs = []
  for images in groups:
    out, spectral = discriminate(setting, discriminator, spectral, images, update_stats=True,
                                 backward=backward)
    outs.append(out)
  return jnp.concatenate(outs), spectral


def advance_power_iteration(setting: Setting, discriminator, spectral, image_shape,
                            calls: int) -> Any:
  """The spectral state after ``calls`` D forwards whose outputs nothing uses ('per_term').
  The power iteration does not depend on the images, so D runs on one blank image and its
  output is dropped: under jit XLA removes the convolutions as dead code."""
  blank = jnp.zeros((1, *image_shape), jnp.float32)
  for _ in range(calls):
    _, spectral = discriminate(setting, discriminator, spectral, blank, update_stats=True)
  return spectral


def split_outputs(setting: Setting, out: Any, names: list[str]
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array] | None]:
  """Splits D's outputs on a concatenation of image groups back into named groups."""
  logits, attributes = out if setting.supervised else (out, None)
  logits = dict(zip(names, jnp.split(logits, len(names))))
  attributes = (dict(zip(names, jnp.split(attributes, len(names)))) if setting.supervised
                else None)
  return logits, attributes


# ---- loss pieces


def _gan(setting: Setting, logits: jax.Array, real: bool) -> jax.Array:
  return losses.gan(setting.gan_loss, logits, real)


def _bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))


def _acai_bce(setting: Setting, logits: jax.Array, targets: jax.Array) -> jax.Array:
  # ACAI's 'amr_authors' critic is a BCE as the authors compute it under 'bce_clamped'.
  if setting.gan_loss == "bce_clamped":
    return losses.bce_clamped(logits, targets)
  return _bce(logits, targets)


def _decode(setting: Setting, generator, h: jax.Array) -> jax.Array:
  return model.to_image(setting.nets.decoder.apply({"params": generator["decoder"]}, h),
                        setting.recon_loss)
