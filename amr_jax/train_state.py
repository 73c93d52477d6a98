"""The train state: one pytree with every parameter, optimiser state and spectral-norm state."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from amr_jax import networks as networks_lib

Params = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. The step's random key is derived from ``step``
  (``fold_in``), so no RNG state needs to be saved."""
  step: jax.Array  # int32 scalar: number of train steps taken
  generator: Params  # {'encoder': ..., 'decoder': ...}: "G"
  discriminator: Params
  spectral: Any  # D's power-iteration state (the 'spectral' collection)
  probe: Params
  generator_opt: optax.OptState
  discriminator_opt: optax.OptState
  probe_opt: optax.OptState


@dataclasses.dataclass(frozen=True)
class Optimizers:
  """One optax transformation per player."""
  generator: optax.GradientTransformation
  discriminator: optax.GradientTransformation
  probe: optax.GradientTransformation


def adam_l2(lr: float, optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient before the moments (as PyTorch's Adam
  ``weight_decay`` does; the authors' setting)."""
  return optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.scale_by_adam(b1=optim.b1, b2=optim.b2),
      optax.scale(-lr),
  )


def make_optimizers(optim: ml_collections.ConfigDict) -> Optimizers:
  """The authors' optimiser for G and D (``optim.lr``); the probe may use ``optim.probe_lr``
  (it only measures the codes, so its speed does not change what G learns)."""
  return Optimizers(generator=adam_l2(optim.lr, optim), discriminator=adam_l2(optim.lr, optim),
                    probe=adam_l2(optim.probe_lr, optim))


def create(nets: networks_lib.Networks, optimizers: Optimizers, key: jax.Array,
           image_shape: tuple[int, ...], latent_shape: tuple[int, ...],
           num_attributes: int = 0) -> TrainState:
  """Initialises a TrainState. Pure: jit it (or vmap it over keys) as needed.

  Args:
    nets: the networks.
    optimizers: the players' optimisers.
    key: random key for the initial parameters.
    image_shape: ``(H, W, C)`` of one image.
    latent_shape: the code's shape without the batch axis (what the decoder takes).
    num_attributes: attributes of supervised AMR (its ClassMixer joins G's parameters).
  """
  key_enc, key_dec, key_disc, key_probe, key_mixer = jax.random.split(key, 5)
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  h = jnp.zeros((1,) + tuple(latent_shape), jnp.float32)
  generator = {"encoder": nets.encoder.init(key_enc, x)["params"],
               "decoder": nets.decoder.init(key_dec, h)["params"]}
  if nets.class_mixer is not None:
    generator["mixer"] = nets.class_mixer.init(
        key_mixer, jnp.zeros((1, num_attributes), jnp.float32))["params"]
  disc_vars = nets.discriminator.init(key_disc, x, update_stats=False)
  probe = nets.probe.init(key_probe, h)["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      generator=generator,
      discriminator=disc_vars["params"],
      spectral=disc_vars[networks_lib.SPECTRAL],
      probe=probe,
      generator_opt=optimizers.generator.init(generator),
      discriminator_opt=optimizers.discriminator.init(disc_vars["params"]),
      probe_opt=optimizers.probe.init(probe),
  )
