"""One training iteration: the discriminator, the probe and the generator, composed from the
objective's pure loss functions (:mod:`amr_jax.objective`, which has the paper's equations).

``make_train_step(config, nets, optimizers)`` binds the config's static choices to the top-level
:func:`train_step` with ``functools.partial`` (as the Flax ImageNet example binds its
``train_step``); the caller jits the result (see ``amr_jax.parallel``) and derives ``key`` from the
step.

Who is updated when: D (or ACAI's critic) and the probe every step; G on the steps the training
loop says (``update_generator``, a Python bool: one compiled step per case). On steps where G does
not step, its terms through D and the consistency term are not computed (nothing would use them),
and not logged: G's terms are means over G's steps. On G's steps of the GAN models with 'batched'
D calls, one D forward over [x, *fakes] serves both G's terms and D's loss (:func:`_shared_update`).

Randomness: everything random in a step (the partners' permutations, the mixer's weights or
masks, ACAI's alpha, the beta-VAE's noise, supervised AMR's draws) is a :class:`Draws`, drawn
from the step's key by :func:`draw`, or given: ``train_step(state, batch, key, g, draws=...)``
runs the step on draws from elsewhere (another implementation's, a test's).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from amr_jax import mixers
from amr_jax import model
from amr_jax import networks as networks_lib
from amr_jax import objective
from amr_jax import train_state as train_state_lib
from amr_jax.objective import Batch, Draws, draw  # noqa: F401  (re-exported: the step's API)
from amr_jax.train_state import TrainState

Metrics = dict[str, jax.Array]
TrainStep = Callable[..., tuple[TrainState, Metrics]]


class _DiscriminatorStep(NamedTuple):
  """D's loss and gradient on one step, and what it leaves behind."""
  loss: jax.Array
  grads: dict
  spectral: dict  # D's new spectral state
  metrics: Metrics


def make_train_step(config: ml_collections.ConfigDict, nets: networks_lib.Networks,
                    optimizers: train_state_lib.Optimizers) -> TrainStep:
  """Builds ``train_step(state, batch, key, update_generator, draws=None) -> (state, metrics)``
  from a validated config (``draws``: see :class:`Draws` and :func:`draw`).

  Every choice in the config is static (Python), so the config never enters the jitted function.
  """
  mixers.get(config.mixer)  # an unknown mixer fails here, before anything is traced
  return functools.partial(train_step, config=config,
                           setting=objective.Setting.from_config(config, nets),
                           optimizers=optimizers)


def train_step(state: TrainState, batch: Batch, key: jax.Array | None, update_generator: bool,
               draws: Draws | None = None, *, config: ml_collections.ConfigDict,
               setting: objective.Setting, optimizers: train_state_lib.Optimizers
               ) -> tuple[TrainState, Metrics]:
  """One iteration: G's update (or forward only), then D's, then the probe's, all from ``state``.

  ``update_generator``: whether G takes a gradient step (every g_every-th step of the loop);
  ``draws``: the step's random draws, None to draw them from ``key`` (which is then unused).
  """
  if key is None and draws is None:
    raise ValueError("train_step needs a key, or draws to use instead")
  if not isinstance(update_generator, bool):
    raise TypeError("train_step's update_generator must be a Python bool (static: one compiled "
                    f"step with G's update and one without); got {update_generator!r}")
  draws = _step_draws(config, setting, state, batch, key, draws)
  d_step = None
  if update_generator and _shares_d_forward(setting):
    (generator, generator_opt, g_loss, aux), d_step = _shared_update(
        setting, optimizers, state, batch, draws)
  elif update_generator:
    generator, generator_opt, g_loss, aux = _generator_update(setting, optimizers, state, batch,
                                                              draws)
  else:
    generator, generator_opt = state.generator, state.generator_opt
    aux = objective.generator_forward(setting, state.generator, state.discriminator,
                                      state.spectral, batch, draws)
  metrics = {"g_updated": jnp.asarray(update_generator).astype(jnp.float32), **aux.terms}
  if update_generator:
    metrics["g_loss"] = g_loss
  new_state = state.replace(step=state.step + 1, generator=generator,
                            generator_opt=generator_opt)

  # Discriminator (or ACAI's critic): real x against G's outputs, held fixed.
  if setting.uses_discriminator:
    if d_step is None:
      d_step = _discriminator_gradients(setting, state, batch, aux)
    d_updates, discriminator_opt = optimizers.discriminator.update(
        d_step.grads, state.discriminator_opt, state.discriminator)
    new_state = new_state.replace(
        discriminator=optax.apply_updates(state.discriminator, d_updates),
        discriminator_opt=discriminator_opt, spectral=d_step.spectral)
    metrics.update(d_loss=d_step.loss, **d_step.metrics)

  # Probe: a linear classifier on the bottleneck, which it must not shape.
  (p_loss, p_acc), p_grads = jax.value_and_grad(
      functools.partial(objective.probe_loss, setting), has_aux=True)(
          state.probe, aux.codes, batch["label"])
  p_updates, probe_opt = optimizers.probe.update(p_grads, state.probe_opt, state.probe)
  new_state = new_state.replace(probe=optax.apply_updates(state.probe, p_updates),
                                probe_opt=probe_opt)
  metrics.update(probe_loss=p_loss, probe_acc=p_acc)
  return new_state, metrics


def _step_draws(config: ml_collections.ConfigDict, setting: objective.Setting, state: TrainState,
                batch: Batch, key: jax.Array | None, draws: Draws | None) -> Draws:
  """``draws`` checked against this config's, or drawn from ``key`` when None."""
  num_attributes = batch["attributes"].shape[-1] if setting.supervised else 0
  code = jax.eval_shape(lambda params, images: model.encode(setting.nets, config, params, images),
                        state.generator["encoder"], batch["image"])
  if draws is None:
    return draw(config, key, code, num_attributes)
  objective.check_draws(draws, jax.eval_shape(
      lambda: draw(config, jax.random.key(0), code, num_attributes)))
  return draws


def _shares_d_forward(setting: objective.Setting) -> bool:
  """Whether G's terms and D's loss read one D forward on G's steps: the GAN models, 'batched'."""
  return setting.model in ("amr", "ae_gan") and not setting.per_term


def _generator_update(setting: objective.Setting, optimizers: train_state_lib.Optimizers,
                      state: TrainState, batch: Batch, draws: Draws):
  """G's gradient step: (generator, its optimiser state, loss, aux)."""
  (loss, aux), grads = jax.value_and_grad(
      functools.partial(objective.generator_loss, setting), has_aux=True)(
          state.generator, state.discriminator, state.spectral, batch, draws)
  updates, opt = optimizers.generator.update(grads, state.generator_opt, state.generator)
  return optax.apply_updates(state.generator, updates), opt, loss, aux


def _shared_update(setting: objective.Setting, optimizers: train_state_lib.Optimizers,
                   state: TrainState, batch: Batch, draws: Draws):
  """G's and D's gradients on a G step from one D forward over [x, *fakes]: G's loss reads
  its outputs on the fakes (D's parameters held), D's loss all of them (the fakes held). The
  same as :func:`_generator_update` followed by D's loss's gradient, one D forward over the
  decoded images fewer. Returns G's update as :func:`_generator_update` does, and D's step."""
  def both_losses(generator, discriminator):
    g_loss, aux = objective.generator_loss(setting, generator, discriminator, state.spectral,
                                           batch, draws, judge_real=True)
    d_loss, d_metrics = objective.gan_discriminator_loss(setting, aux.judged, aux.fakes.names(),
                                                         batch)
    return (g_loss, d_loss), (aux, d_metrics)

  (g_loss, d_loss), backward, (aux, d_metrics) = jax.vjp(
      both_losses, state.generator, state.discriminator, has_aux=True)
  one, zero = jnp.ones_like(g_loss), jnp.zeros_like(g_loss)
  g_grads, _ = backward((one, zero))  # G's loss; its gradient for D is never used (dead code)
  _, d_grads = backward((zero, one))  # D's loss; its gradient for G is never used
  updates, opt = optimizers.generator.update(g_grads, state.generator_opt, state.generator)
  return ((optax.apply_updates(state.generator, updates), opt, g_loss, aux),
          _DiscriminatorStep(d_loss, d_grads, aux.spectral, d_metrics))


def _discriminator_gradients(setting: objective.Setting, state: TrainState, batch: Batch,
                             aux: objective.GeneratorAux) -> _DiscriminatorStep:
  """D's (or ACAI's critic's) loss and gradient on G's outputs, its calls starting where G's side
  left D's spectral state."""
  if setting.model == "acai":
    loss_fn = functools.partial(objective.critic_loss, setting, alpha=aux.alpha)
  else:
    loss_fn = functools.partial(objective.discriminator_loss, setting)
  (loss, (spectral, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.discriminator, aux.spectral, batch, aux.fakes)
  return _DiscriminatorStep(loss, grads, spectral, metrics)
