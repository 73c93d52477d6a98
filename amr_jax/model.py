"""The trained model as functions of its parameters: encode, decode to images, probe logits and
the pictures of an evaluation. The train step's objective and the evaluators share them.

Each takes the (unbound) networks and the config (which model, which reconstruction loss), then
parameters and data; none is random except :func:`generated_images`, which takes a key.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from amr_jax import data as data_lib
from amr_jax import mixers
from amr_jax import networks as networks_lib
from amr_jax.train_state import TrainState


def to_image(decoded: jax.Array, recon_loss: str) -> jax.Array:
  """Maps the decoder's output to image space [-1, 1]: logits when trained with BCE."""
  if recon_loss == "bce":
    return 2.0 * jax.nn.sigmoid(decoded) - 1.0
  return decoded


def encode(nets: networks_lib.Networks, config: ml_collections.ConfigDict, encoder_params,
           images: jax.Array) -> jax.Array:
  """The code the decoder and the probe see: enc(x), or the posterior mean for the beta-VAE."""
  h = nets.encoder.apply({"params": encoder_params}, images)
  if config.model == "beta_vae":
    h, _ = jnp.split(h, 2, axis=-1)
  return h


def decode(nets: networks_lib.Networks, config: ml_collections.ConfigDict, decoder_params,
           h: jax.Array) -> jax.Array:
  """Images (B, H, W, C) in [-1, 1] decoded from codes ``h``."""
  return to_image(nets.decoder.apply({"params": decoder_params}, h), config.recon_loss)


def probe_logits(nets: networks_lib.Networks, config: ml_collections.ConfigDict,
                 state: TrainState, images: jax.Array) -> jax.Array:
  """The probe's logits (B, classes) on the codes of ``images``."""
  h = encode(nets, config, state.generator["encoder"], images)
  return nets.probe.apply({"params": state.probe}, h)


def generated_images(config: ml_collections.ConfigDict, nets: networks_lib.Networks,
                     state: TrainState, x: jax.Array, key: jax.Array) -> dict[str, Any]:
  """Pictures for a batch ``x`` (n, H, W, C): reconstructions, partners, decoded random mixes,
  and interpolation strips between x[i] and x[i+1] (n-1 pairs, ``num`` points each).

  Returns a dict of arrays in image space: 'inputs', 'reconstructions' (n, H, W, C),
  'partners' (n, ...), 'mixes' (n, ...), 'latent_interpolation', 'pixel_interpolation'
  (n-1, num, H, W, C); 'channel_interpolation' too for channel-swapping mixers;
  'attribute_mixes' (n-1, 2^A, H, W, C) for supervised AMR.
  """
  num = 10
  generator = state.generator
  decode_h = lambda h: decode(nets, config, generator["decoder"], h)
  h = encode(nets, config, generator["encoder"], x)
  key_partners, key_mix = jax.random.split(key)
  hs = mixers.partners(key_partners, h, config.k)
  # The same key permutes the images as it permuted the codes: the first partner of each input.
  partner_images = mixers.partners(key_partners, x, config.k)[1]
  h_mix, _ = mixers.get(config.mixer)(key_mix, hs)
  out = {
      "inputs": x,
      "reconstructions": decode_h(h),
      "partners": partner_images,
      "mixes": decode_h(h_mix),
  }
  h1, h2 = h[:-1], h[1:]
  path = jax.vmap(lambda a, b: mixers.interpolate(a, b, num))(h1, h2)  # (n-1, num, ...)
  out["latent_interpolation"] = jax.vmap(decode_h)(path)
  out["pixel_interpolation"] = jax.vmap(lambda a, b: mixers.interpolate(a, b, num))(x[:-1], x[1:])
  if config.mixer in ("bernoulli", "mixup_per_channel"):
    swap = jax.vmap(lambda a, b: mixers.interpolate_channels(a, b, num))(h1, h2)
    out["channel_interpolation"] = jax.vmap(decode_h)(swap)
  if nets.class_mixer is not None:
    out["attribute_mixes"] = _attribute_mixes(nets, generator, h1, h2, decode_h)
  return out


def _attribute_mixes(nets: networks_lib.Networks, generator, h1: jax.Array, h2: jax.Array,
                     decode_h) -> jax.Array:
  """Supervised AMR: for each pair, the decoded mix for every combination of attribute values
  (n-1, 2^A, H, W, C)."""
  num_attributes = generator["mixer"]["Dense_0"]["kernel"].shape[0]
  combos = jnp.asarray([[(c >> a) & 1 for a in range(num_attributes)]
                        for c in range(2**num_attributes)], jnp.float32)  # (2^A, A)
  mask = jax.nn.sigmoid(nets.class_mixer.apply({"params": generator["mixer"]}, combos))
  mask = mask.reshape((mask.shape[0],) + (1,) * (h1.ndim - 2) + (mask.shape[-1],))
  mixes = jax.vmap(lambda a, b: mask * a[None] + (1.0 - mask) * b[None])(h1, h2)
  return jax.vmap(decode_h)(mixes)


def build_networks(config: ml_collections.ConfigDict, dataset: data_lib.Dataset
                   ) -> networks_lib.Networks:
  """The networks ``config.arch`` names, for ``dataset``'s images, classes and attributes."""
  return networks_lib.build(
      config.arch.name, image_channels=dataset.image_channels, num_classes=dataset.num_classes,
      width=config.arch.width, latent_channels=config.arch.latent_channels,
      latent_dim=config.arch.latent_dim, instance_norm=config.arch.instance_norm,
      leaky_slope=config.arch.leaky_slope, variational=config.model == "beta_vae",
      dtype=None if config.arch.compute_dtype == "float32" else jnp.bfloat16,
      num_attributes=num_attributes(config, dataset), init=config.arch.init,
      input_conv_padding=config.arch.input_conv_padding,
      spectral_input_conv=config.arch.spectral_input_conv,
      spectral_power_iterations=config.arch.spectral_power_iterations,
      decoder_logit_scale=config.arch.decoder_logit_scale, conv_path=config.arch.conv_path)


def num_attributes(config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> int:
  """Attributes the supervised mixer conditions on (0 when supervised AMR is off; config
  validation already allows it only for datasets with attributes)."""
  return dataset.train.attributes.shape[1] if config.supervised.enabled else 0
