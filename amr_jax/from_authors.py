"""The AMR authors' saved PyTorch state as an amr_jax TrainState, and back.

  python -m amr_jax.from_authors --config=experiments/configs/mnist.py:mixup,authors \\
      --authors_checkpoint=FILE --workdir=DIR

writes the authors' model (their ``save()``: generator ``g``, discriminator or ACAI critic
``disc_x``, probe ``cls_enc`` and their Adam states, read without torch by
:mod:`amr_jax.torch_checkpoint`) as an amr_jax checkpoint at step ``TrainState.step``, which
``python -m amr_jax.evaluate`` evaluates and ``python -m amr_jax.main`` continues training.

The mapping (:func:`to_train_state`; :func:`to_authors` is its inverse):

- conv weights (O, I, kh, kw) -> Flax kernels (kh, kw, I, O); the probe's weight (classes, C*4*4),
  whose input is the code flattened NCHW, -> a kernel (4*4*C, classes) for the NHWC flattening;
- G's conv biases before an instance norm are dropped (the norm subtracts each channel's mean,
  which cancels them exactly; amr_jax's convs there have none);
- D's spectral norm: ``weight_bar`` is the kernel, ``weight_u`` the spectral collection's ``u``
  (shape (1, O)), and its ``sigma`` = u . (W v) from their stored u and v (what their last forward
  normalised with). Their ``weight_v`` is not kept: their forward overwrites v with W^T u
  normalised before reading it, so it never changes what they compute;
- Adam: ``exp_avg`` / ``exp_avg_sq`` -> optax's ``mu`` / ``nu`` (same layouts as the weights),
  ``count`` = torch's ``step``; TrainState.step = D's step count (their iterations). A missing
  ``optim_*`` entry gives a fresh optimiser state (count 0).

Models: ``amr`` (every mixer and k: their swapgan, threegan, kgan), ``ae_gan`` and ``acai`` (their
critic ``disc_x`` has D's format); architecture ``acai32`` at any ``arch.latent_channels`` (the
paper's dim 32, 256, 1024: 2, 16, 64) with 1 or 3 image channels. The three models save the same
tensors, so which of them a file holds cannot be read from it: the config says it. The arch must
be the authors' (:data:`amr_jax.config.AUTHORS_MODEL`); fields that change the outputs but no
shape (``arch.input_conv_padding``, ``arch.leaky_slope``) are checked against theirs.

dSprites (``arch.name='dsprites64'``, ``recon_loss='bce'``): their ``architectures/dsprite_gd.py``
(G: konny's ``BetaVAE_B(vae=False)``, D: konny's ``Discriminator(nc=1, ndf=32)`` under
``torch.nn.utils.spectral_norm``; no probe) for ``amr`` and ``ae_gan``, and their ``vae`` model on
``arch_dsprite_burgess-g_kyle_d_vae.py`` (G: ``BetaVAE_B(vae=True)`` alone; their D is never
used) for ``beta_vae`` with ``vae_scale='std'``. The mapping adds: Linear (out, in) -> Dense
(in, out); the Dense after the last conv reads the map flattened NCHW (rows permuted to NHWC),
the decoder's Dense before its first transposed conv writes it NCHW (columns and bias permuted);
ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out) flipped in both spatial axes (PyTorch's
transposed conv is the gradient of a correlation, flax's ConvTranspose a correlation of the
dilated input); D's ``weight_orig`` is the kernel, ``weight_u``/``weight_v`` as above. Their
decoder ends in a Tanh read by BCE as the probability (tanh(u) + 1) / 2 = sigmoid(2 u): with
``arch.decoder_logit_scale=2`` amr_jax's decoder computes 2 u from their parameters unchanged
(the same Adam steps); with 1 the last layer's kernel and bias are doubled (the same function,
but Adam then moves that layer half as far as theirs; its moments are mapped as the gradient of
the doubled parameters: exp_avg / 2, exp_avg_sq / 4). What they do not save is amr_jax's init
(``train_state.create`` at ``config.seed``): the probe (their dSprites runs have none) and, for
the beta-VAE, D; TrainState.step is then G's step count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import sys
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from amr_jax import networks as networks_lib
from amr_jax import train_state as train_state_lib

__all__ = ["authors_names", "not_kept", "to_train_state", "to_authors", "MODELS",
           "DATASET_SHAPES"]

MODELS = ("amr", "ae_gan", "acai")
"""amr_jax models whose authors' counterparts save (g, disc_x, cls_enc)."""

DATASET_SHAPES = {"digits": (1, 10), "mnist": (1, 10), "kmnist": (1, 10),
                  "fashion_mnist": (1, 10), "svhn_cropped": (3, 10), "cifar10": (3, 10),
                  "celeb_a": (3, 2), "dsprites": (1, 3)}
"""data.name -> (image channels, probe classes): the networks' shapes without loading the data."""

# The authors' acai32: the fields that change outputs without changing any shape.
_AUTHORS_ARCH = {"arch.input_conv_padding": 1, "arch.leaky_slope": 0.01,
                 "arch.instance_norm": True, "arch.spectral_input_conv": False}
_NETS = ("g", "disc_x", "cls_enc")
_OPTIONAL = ("optim_g", "optim_disc_x", "optim_cls_enc", "epoch")
DSPRITES_MODELS = ("amr", "ae_gan", "beta_vae")
"""amr_jax models of the authors' dSprites runs (their swapgan/threegan/kgan and vae)."""
# (C, H, W) of the map konny's nets flatten after their last conv and reshape before the first
# transposed conv (View((-1, 32*4*4)), View((-1, 32, 4, 4))).
_DSPRITES_GRID = (32, 4, 4)
_SCALES = 3  # networks.build's acai32 always has 3 scales (32 -> 4 pixels)


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One tensor of the authors' state dicts and where its values live in a TrainState.

  ``kind``: 'conv' (OIHW <-> HWIO), 'same' (vectors), 'probe' (NCHW-flattened rows <-> NHWC),
  'dropped' (a bias amr_jax does not have; ``path`` is its conv's kernel), 'u' (``path`` is the
  spectral u), 'v' (not kept; ``path`` is its kernel); dsprites64: 'dense' ((out, in) <-> (in,
  out)), 'dense_chw_in' (and rows NCHW <-> NHWC), 'dense_chw_out' (and columns), 'bias_chw'
  (NCHW <-> NHWC), 'convT' ((in, out, kh, kw) <-> (kh, kw, in, out), spatially flipped).
  ``path``: keys into the TrainState's field (``net``'s parameters, or the spectral collection
  for 'u'). ``scale``: amr_jax's value is the authors' times ``scale`` (their Tanh decoder's last
  layer under ``arch.decoder_logit_scale=1``).
  """
  net: str
  name: str
  kind: str
  path: tuple[str, ...]
  trainable: bool = True
  scale: float = 1.0


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Fails in one line naming a config field the authors' saved state cannot fill."""
  if config.arch.name == "dsprites64":
    _check_dsprites_config(config)
    return
  if config.model not in MODELS:
    raise ValueError(f"config.model={config.model!r}: the authors' saved state converts into "
                     f"{', '.join(map(repr, MODELS))}")
  if config.arch.name != "acai32":
    raise ValueError(f"config.arch.name={config.arch.name!r}: the converter reads the authors' "
                     f"'acai32' nets")
  if config.num_seeds != 1:
    raise ValueError(f"config.num_seeds={config.num_seeds}: one saved model is one seed (1)")
  if config.supervised.enabled:
    raise ValueError("config.supervised.enabled=True: the authors' class mixer is not converted")
  if config.data.name not in DATASET_SHAPES:
    raise ValueError(f"config.data.name={config.data.name!r}: the authors' nets take "
                     f"{', '.join(DATASET_SHAPES)}")
  for dotted, theirs in _AUTHORS_ARCH.items():
    if _field(config, dotted) != theirs:
      raise ValueError(f"config.{dotted}={_field(config, dotted)!r} is not the authors' "
                       f"{theirs!r} (amr_jax.config.AUTHORS_MODEL): their weights would compute "
                       f"something else")


def _check_dsprites_config(config: ml_collections.ConfigDict) -> None:
  if config.model not in DSPRITES_MODELS:
    raise ValueError(f"config.model={config.model!r}: the authors' dSprites state converts into "
                     f"{', '.join(map(repr, DSPRITES_MODELS))}")
  if config.num_seeds != 1:
    raise ValueError(f"config.num_seeds={config.num_seeds}: one saved model is one seed (1)")
  if config.supervised.enabled:
    raise ValueError("config.supervised.enabled=True: the authors' class mixer is not converted")
  if config.data.name != "dsprites":
    raise ValueError(f"config.data.name={config.data.name!r}: the authors' dsprites64 nets take "
                     f"'dsprites'")
  if config.recon_loss != "bce":
    raise ValueError(f"config.recon_loss={config.recon_loss!r}: the authors' Tanh decoder is "
                     f"amr_jax's with 'bce' (tanh(u) = 2 sigmoid(2 u) - 1)")
  if config.model == "beta_vae" and config.vae_scale != "std":
    raise ValueError(f"config.vae_scale={config.vae_scale!r}: the authors' VAE encodes the "
                     f"Normal's scale ('std')")


def _nets(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The authors' networks (save() keys) of ``config``'s model."""
  if config.arch.name != "dsprites64":
    return _NETS
  return ("g",) if config.model == "beta_vae" else ("g", "disc_x")


def _networks(config: ml_collections.ConfigDict) -> networks_lib.Networks:
  channels, classes = DATASET_SHAPES[config.data.name]
  return networks_lib.build(
      config.arch.name, image_channels=channels, num_classes=classes, width=config.arch.width,
      latent_channels=config.arch.latent_channels, latent_dim=config.arch.latent_dim,
      instance_norm=config.arch.instance_norm, leaky_slope=config.arch.leaky_slope,
      init=config.arch.init, input_conv_padding=config.arch.input_conv_padding,
      spectral_input_conv=config.arch.spectral_input_conv,
      spectral_power_iterations=config.arch.spectral_power_iterations,
      variational=config.model == "beta_vae",
      decoder_logit_scale=config.arch.get("decoder_logit_scale", 1.0))


_EXPECTED_STATES: dict[str, train_state_lib.TrainState] = {}


def _expected_state(config: ml_collections.ConfigDict) -> train_state_lib.TrainState:
  """The shapes and dtypes of ``train_state.create``'s state for ``config`` (nothing computed),
  memoised by the config's content: tracing ``create`` takes about a second, and tests convert
  many states of one config."""
  key = json.dumps(config.to_dict(), sort_keys=True, default=repr)
  if key not in _EXPECTED_STATES:
    _EXPECTED_STATES[key] = _trace_expected_state(config)
  return _EXPECTED_STATES[key]


def _trace_expected_state(config: ml_collections.ConfigDict) -> train_state_lib.TrainState:
  channels, _ = DATASET_SHAPES[config.data.name]
  size = networks_lib.IMAGE_SIZE[config.arch.name]
  latent = networks_lib.latent_shape(config.arch.name, latent_channels=config.arch.latent_channels,
                                     latent_dim=config.arch.latent_dim)
  nets = _networks(config)
  optimizers = train_state_lib.make_optimizers(config.optim)
  return jax.eval_shape(lambda: train_state_lib.create(
      nets, optimizers, jax.random.key(0), (size, size, channels), latent))


def _tensors(config: ml_collections.ConfigDict) -> list[_Tensor]:
  if config.arch.name == "dsprites64":
    return _dsprites64_tensors(config)
  return _acai32_tensors()


def _dsprites64_tensors(config: ml_collections.ConfigDict) -> list[_Tensor]:
  """konny's BetaVAE_B (G) and Discriminator (D, unless the beta-VAE) in state-dict order.

  Their nn.Sequential indices: the encoder's convs at 0, 2, 4, 6 (ReLUs between), a View at 8,
  Linears at 9, 11, 13; the decoder's Linears at 0, 2, 4, a View at 6, transposed convs at 7, 9,
  11, 13 and a Tanh; D is the encoder's layout, each layer under spectral_norm."""
  out: list[_Tensor] = []
  scale = 2.0 / config.arch.get("decoder_logit_scale", 1.0)
  encoder = [("Conv_0", "conv"), ("Conv_1", "conv"), ("Conv_2", "conv"), ("Conv_3", "conv"),
             ("Dense_0", "dense_chw_in"), ("Dense_1", "dense"), ("Dense_2", "dense")]
  indices = (0, 2, 4, 6, 9, 11, 13)
  for index, (layer, kind) in zip(indices, encoder):
    out.append(_Tensor("g", f"encoder.{index}.weight", kind, ("encoder", layer, "kernel")))
    out.append(_Tensor("g", f"encoder.{index}.bias", "same", ("encoder", layer, "bias")))
  decoder = [(0, "Dense_0", "dense", "same"), (2, "Dense_1", "dense", "same"),
             (4, "Dense_2", "dense_chw_out", "bias_chw")]
  decoder += [(7 + 2 * i, f"ConvTranspose_{i}", "convT", "same") for i in range(4)]
  for index, layer, kind, bias_kind in decoder:
    last = layer == "ConvTranspose_3"
    out.append(_Tensor("g", f"decoder.{index}.weight", kind, ("decoder", layer, "kernel"),
                       scale=scale if last else 1.0))
    out.append(_Tensor("g", f"decoder.{index}.bias", bias_kind, ("decoder", layer, "bias"),
                       scale=scale if last else 1.0))
  if config.model == "beta_vae":
    return out
  for j, (index, (layer, kind)) in enumerate(zip(indices, encoder)):
    prefix = f"encoder.{index}"
    out.append(_Tensor("disc_x", f"{prefix}.bias", "same", (layer, "bias")))
    out.append(_Tensor("disc_x", f"{prefix}.weight_orig", kind, (layer, "kernel")))
    out.append(_Tensor("disc_x", f"{prefix}.weight_u", "u",
                       (f"SpectralNorm_{j}", f"{layer}/kernel/u"), trainable=False))
    out.append(_Tensor("disc_x", f"{prefix}.weight_v", "v", (layer, "kernel"), trainable=False))
  return out


def _acai32_tensors() -> list[_Tensor]:
  """The authors' acai32 tensors in their state-dict order, each with its place in amr_jax.

  Their nn.Sequential indices: G's encoder is a 1x1 conv, then per scale [conv, norm, act] x 2 and
  a pool, then [conv, norm, act] and the code's conv; the decoder per scale [conv, norm, act] x 2
  and an upsample, then [conv, norm, act] and the image's conv. D is G's encoder without norms,
  its 3x3 convs wrapped in their SpectralNorm (``encoder.i.module.*``)."""
  out: list[_Tensor] = []

  def plain_conv(net: str, prefix: str, path: tuple[str, ...]) -> None:
    out.append(_Tensor(net, f"{prefix}.weight", "conv", path + ("kernel",)))
    out.append(_Tensor(net, f"{prefix}.bias", "same", path + ("bias",)))

  def norm_block(part: str, conv: int, block: int) -> None:
    path = (part, f"_ConvBlock32_{block}")
    out.append(_Tensor("g", f"{part}.{conv}.weight", "conv", path + ("Conv_0", "kernel")))
    out.append(_Tensor("g", f"{part}.{conv}.bias", "dropped", path + ("Conv_0", "kernel")))
    norm = path + ("InstanceNorm_0",)
    out.append(_Tensor("g", f"{part}.{conv + 1}.weight", "same", norm + ("scale",)))
    out.append(_Tensor("g", f"{part}.{conv + 1}.bias", "same", norm + ("bias",)))

  # G's encoder.
  plain_conv("g", "encoder.0", ("encoder", "Conv_0"))
  index, block = 1, 0
  for _ in range(_SCALES):
    for _ in range(2):
      norm_block("encoder", index, block)
      index, block = index + 3, block + 1
    index += 1  # the pool
  norm_block("encoder", index, block)
  plain_conv("g", f"encoder.{index + 3}", ("encoder", "Conv_1"))
  # G's decoder.
  index, block = 0, 0
  for _ in range(_SCALES):
    for _ in range(2):
      norm_block("decoder", index, block)
      index, block = index + 3, block + 1
    index += 1  # the upsample
  norm_block("decoder", index, block)
  plain_conv("g", f"decoder.{index + 3}", ("decoder", "Conv_0"))
  # D.
  plain_conv("disc_x", "encoder.0", ("Conv_0",))
  # Per scale [sn conv, act] x 2 and a pool, then [sn conv, act] and the last sn conv.
  spectral = [1 + 5 * s + i for s in range(_SCALES) for i in (0, 2)]
  spectral += [1 + 5 * _SCALES, 3 + 5 * _SCALES]
  for j, index in enumerate(spectral):
    conv, prefix = f"Conv_{j + 1}", f"encoder.{index}.module"
    out.append(_Tensor("disc_x", f"{prefix}.bias", "same", (conv, "bias")))
    out.append(_Tensor("disc_x", f"{prefix}.weight_u", "u",
                       (f"SpectralNorm_{j}", f"{conv}/kernel/u"), trainable=False))
    out.append(_Tensor("disc_x", f"{prefix}.weight_v", "v", (conv, "kernel"), trainable=False))
    out.append(_Tensor("disc_x", f"{prefix}.weight_bar", "conv", (conv, "kernel")))
  # The probe.
  out.append(_Tensor("cls_enc", "weight", "probe", ("Dense_0", "kernel")))
  out.append(_Tensor("cls_enc", "bias", "same", ("Dense_0", "bias")))
  return out


_FIELD = {"g": "generator", "disc_x": "discriminator", "cls_enc": "probe"}
_OPTIM = {"g": "generator_opt", "disc_x": "discriminator_opt", "cls_enc": "probe_opt"}


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _source(state: Any, tensor: _Tensor) -> Any:
  """The TrainState leaf (or its shape struct) that ``tensor`` maps to or is sized by."""
  return _get(state.spectral if tensor.kind == "u" else getattr(state, _FIELD[tensor.net]),
              tensor.path)


def _torch_shape(tensor: _Tensor, leaf: Any) -> tuple[int, ...]:
  shape = tuple(leaf.shape)
  if tensor.kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if tensor.kind in ("probe", "dense", "dense_chw_in", "dense_chw_out"):
    return (shape[1], shape[0])
  if tensor.kind == "convT":
    return (shape[2], shape[3], shape[0], shape[1])
  if tensor.kind == "dropped":
    return (shape[-1],)
  if tensor.kind == "u":
    return (shape[-1],)
  if tensor.kind == "v":
    return (math.prod(shape[:-1]),)
  return shape


def _latent_hwc(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  return networks_lib.latent_shape(config.arch.name, latent_channels=config.arch.latent_channels,
                                   latent_dim=config.arch.latent_dim)


def _to_flax(tensor: _Tensor, value: np.ndarray, latent: tuple[int, ...], power: int = 1
             ) -> np.ndarray:
  """amr_jax's value of ``tensor``; ``power``: 1 for a parameter, -1 for its gradient and
  Adam's first moment, -2 for the second (a parameter scaled by s has gradients scaled by 1/s)."""
  value = _layout_to_flax(tensor, value, latent)
  return value if tensor.scale == 1.0 else value * np.float32(tensor.scale**power)


def _to_torch(tensor: _Tensor, value: np.ndarray, latent: tuple[int, ...], power: int = 1
              ) -> np.ndarray:
  """The inverse of :func:`_to_flax`."""
  value = _layout_to_torch(tensor, value, latent)
  return value if tensor.scale == 1.0 else value / np.float32(tensor.scale**power)


def _layout_to_flax(tensor: _Tensor, value: np.ndarray, latent: tuple[int, ...]) -> np.ndarray:
  c, h, w = _DSPRITES_GRID
  if tensor.kind == "dense":
    return value.T
  if tensor.kind == "dense_chw_in":  # rows (c, h, w) -> (h, w, c)
    return value.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
  if tensor.kind == "dense_chw_out":  # columns (c, h, w) -> (h, w, c)
    return value.reshape(c, h, w, -1).transpose(3, 1, 2, 0).reshape(-1, h * w * c)
  if tensor.kind == "bias_chw":
    return value.reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
  if tensor.kind == "convT":
    return value[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
  if tensor.kind == "conv":
    return value.transpose(2, 3, 1, 0)
  if tensor.kind == "probe":  # rows (c, h, w) -> (h, w, c)
    classes = value.shape[0]
    h, w, c = latent
    return value.reshape(classes, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, classes)
  if tensor.kind == "u":
    return value[None, :]
  return value


def _layout_to_torch(tensor: _Tensor, value: np.ndarray, latent: tuple[int, ...]
                     ) -> np.ndarray:
  c, h, w = _DSPRITES_GRID
  if tensor.kind == "dense":
    return value.T
  if tensor.kind == "dense_chw_in":
    return value.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * w)
  if tensor.kind == "dense_chw_out":
    return value.reshape(-1, h, w, c).transpose(3, 1, 2, 0).reshape(c * h * w, -1)
  if tensor.kind == "bias_chw":
    return value.reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
  if tensor.kind == "convT":
    return value[::-1, ::-1].transpose(2, 3, 0, 1)
  if tensor.kind == "conv":
    return value.transpose(3, 2, 0, 1)
  if tensor.kind == "probe":
    h, w, c = latent
    classes = value.shape[-1]
    return value.reshape(h, w, c, classes).transpose(3, 2, 0, 1).reshape(classes, c * h * w)
  if tensor.kind == "u":
    return value[0]
  return value


def authors_names(config: ml_collections.ConfigDict) -> dict[str, dict[str, tuple[int, ...]]]:
  """``{'g': {name: shape}, 'disc_x': {...}, 'cls_enc': {...}}``: every tensor of the authors'
  state dicts for ``config``'s model, in their state-dict order."""
  _check_config(config)
  expected = _expected_state(config)
  names: dict[str, dict[str, tuple[int, ...]]] = {net: {} for net in _nets(config)}
  for tensor in _tensors(config):
    names[tensor.net][tensor.name] = _torch_shape(tensor, _source(expected, tensor))
  return names


def not_kept(config: ml_collections.ConfigDict) -> dict[str, set[str]]:
  """``{'g': names, 'disc_x': names}``: the tensors amr_jax does not keep, which
  :func:`to_authors` does not give back as saved: G's conv biases before instance norms and D's
  ``weight_v`` (and, in the optimizer states, the biases' moments)."""
  _check_config(config)
  out: dict[str, set[str]] = {net: set() for net in _nets(config) if net != "cls_enc"}
  for tensor in _tensors(config):
    if tensor.kind in ("dropped", "v"):
      out[tensor.net].add(tensor.name)
  return out


def _array(value: Any, where: str) -> np.ndarray:
  if not isinstance(value, (np.ndarray, np.generic)):
    raise ValueError(f"{where} is a {type(value).__name__}, not an array")
  return np.asarray(value)


def _check_nets(saved: Mapping[str, Any], names: dict[str, dict[str, tuple[int, ...]]],
                config: ml_collections.ConfigDict) -> None:
  """Every expected tensor present with its shape, nothing else (one line naming the tensor)."""
  arch = config.arch.name
  if arch == "dsprites64":
    shape_fields = f"arch.latent_dim={config.arch.latent_dim}, model={config.model!r}"
  else:
    shape_fields = (f"arch.width={config.arch.width}, arch.latent_channels="
                    f"{config.arch.latent_channels}, data.name={config.data.name!r}")
  nets = _nets(config)
  optional = tuple(f"optim_{net}" for net in nets) + ("epoch",)
  for key in saved:
    if key not in nets + optional:
      raise ValueError(f"the saved state has an entry {key!r} that config.model="
                       f"{config.model!r} has no place for (expected {', '.join(nets)}, "
                       f"optionally {', '.join(optional)})")
  for net, expected in names.items():
    if net not in saved:
      raise ValueError(f"the saved state has no {net!r} (config.model={config.model!r} needs "
                       f"{', '.join(nets)})")
    if not isinstance(saved[net], Mapping):
      raise ValueError(f"saved[{net!r}] is a {type(saved[net]).__name__}, not a state dict")
    for name, shape in expected.items():
      if name not in saved[net]:
        raise ValueError(f"saved[{net!r}] has no tensor {name!r} (shape {shape}) that the "
                         f"authors' {arch} has ({shape_fields})")
      actual = _array(saved[net][name], f"saved[{net!r}][{name!r}]").shape
      if actual != shape:
        raise ValueError(f"saved[{net!r}][{name!r}] has shape {actual}; config ({shape_fields}) "
                         f"needs {shape}")
    for name in saved[net]:
      if name not in expected:
        raise ValueError(f"saved[{net!r}] has a tensor {name!r} that the authors' {arch} "
                         f"({shape_fields}) does not have")


def _adam_state(saved: Mapping[str, Any], net: str, tensors: list[_Tensor],
                names: dict[str, tuple[int, ...]]
                ) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
  """(step, {name: exp_avg}, {name: exp_avg_sq}) of ``saved['optim_' + net]``, or None."""
  key = f"optim_{net}"
  if key not in saved:
    return None
  optim = saved[key]
  where = f"saved[{key!r}]"
  if not isinstance(optim, Mapping) or set(optim) != {"state", "param_groups"}:
    raise ValueError(f"{where} is not a torch optimizer state_dict (keys 'state', "
                     f"'param_groups')")
  if len(optim["param_groups"]) != 1:
    raise ValueError(f"{where} has {len(optim['param_groups'])} param groups; the authors' "
                     f"Adam has 1")
  ids = list(optim["param_groups"][0]["params"])
  trainable = [t for t in tensors if t.trainable]
  if len(ids) != len(trainable):
    raise ValueError(f"{where} holds {len(ids)} parameters; {net!r} has {len(trainable)} "
                     f"({', '.join(t.name for t in trainable[:3])}, ...)")
  state = optim["state"]
  for param_id in state:
    if param_id not in ids:
      raise ValueError(f"{where}['state'] has an entry {param_id!r} for no parameter of its group")
  steps, exp_avg, exp_avg_sq = set(), {}, {}
  for tensor, param_id in zip(trainable, ids):
    shape = names[tensor.name]
    entry = state.get(param_id)
    if entry is None:  # a parameter without a gradient yet: torch has no state for it
      exp_avg[tensor.name] = np.zeros(shape, np.float32)
      exp_avg_sq[tensor.name] = np.zeros(shape, np.float32)
      steps.add(0)
      continue
    for moment, into in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
      if moment not in entry:
        raise ValueError(f"{where}'s state of {tensor.name!r} has no {moment!r} (not Adam?)")
      value = _array(entry[moment], f"{where}'s {moment} of {tensor.name!r}")
      if value.shape != shape:
        raise ValueError(f"{where}'s {moment} of {tensor.name!r} has shape {value.shape}, the "
                         f"parameter {shape}")
      into[tensor.name] = value.astype(np.float32)
    steps.add(int(np.asarray(entry["step"])))
  if len(steps) > 1:
    raise ValueError(f"{where}'s parameters have different step counts {sorted(steps)}")
  return steps.pop(), exp_avg, exp_avg_sq


def _adam_index(opt_state: tuple) -> int:
  indices = [i for i, s in enumerate(opt_state) if isinstance(s, optax.ScaleByAdamState)]
  if len(indices) != 1:
    raise ValueError("the optimiser state holds no single Adam state (optim changed?)")
  return indices[0]


def _sigma(weight_bar: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.float32:
  """u . (W v): what their SpectralNorm divided W by in the forward that stored u and v."""
  matrix = weight_bar.reshape(weight_bar.shape[0], -1).astype(np.float64)
  return np.float32(u.astype(np.float64) @ (matrix @ v.astype(np.float64)))


def to_train_state(config: ml_collections.ConfigDict, saved: Mapping[str, Any]
                   ) -> train_state_lib.TrainState:
  """The TrainState that ``train_state.create`` would make for ``config``, holding the values of
  the authors' ``save()`` dict ``saved`` (every tensor a numpy array). Raises ValueError in one
  line naming the tensor or config field that does not fit."""
  _check_config(config)
  expected = _expected_state(config)
  tensors = _tensors(config)
  names = authors_names(config)
  _check_nets(saved, names, config)
  latent = _latent_hwc(config)
  nets = _nets(config)

  params: dict[str, dict] = {_FIELD[net]: {} for net in nets}
  spectral: dict = {}
  for tensor in tensors:
    value = np.asarray(saved[tensor.net][tensor.name], np.float32)
    if tensor.kind == "u":
      _set(spectral, tensor.path, _to_flax(tensor, value, latent))
      prefix = tensor.name[:-len("weight_u")]
      sigma_path = (tensor.path[0], tensor.path[1][:-len("u")] + "sigma")
      _set(spectral, sigma_path, _sigma(np.asarray(saved["disc_x"][prefix + _weight(config)]),
                                        value, np.asarray(saved["disc_x"][prefix + "weight_v"])))
    elif tensor.kind not in ("dropped", "v"):
      _set(params[_FIELD[tensor.net]], tensor.path, _to_flax(tensor, value, latent))

  opt_states, d_step = {}, 0
  optimizers = train_state_lib.make_optimizers(config.optim)
  if len(nets) < len(_NETS):  # what their model does not have: amr_jax's init
    fresh = jax.tree.map(np.asarray, _fresh_state(config))
    for net in _NETS[len(nets):]:
      params[_FIELD[net]] = getattr(fresh, _FIELD[net])
      opt_states[_OPTIM[net]] = getattr(fresh, _OPTIM[net])
    if "disc_x" not in nets:
      spectral = fresh.spectral
  for net in nets:
    field = _OPTIM[net]
    net_params = params[_FIELD[net]]
    opt_state = getattr(optimizers, _FIELD[net]).init(net_params)
    net_tensors = [t for t in tensors if t.net == net]
    adam = _adam_state(saved, net, net_tensors, names[net])
    if adam is not None:
      step, exp_avg, exp_avg_sq = adam
      mu, nu = jax.tree.map(np.zeros_like, net_params), jax.tree.map(np.zeros_like, net_params)
      for tensor in net_tensors:
        if tensor.trainable and tensor.kind != "dropped":
          _set(mu, tensor.path, _to_flax(tensor, exp_avg[tensor.name], latent, power=-1))
          _set(nu, tensor.path, _to_flax(tensor, exp_avg_sq[tensor.name], latent, power=-2))
      i = _adam_index(opt_state)
      opt_state = opt_state[:i] + (optax.ScaleByAdamState(
          count=np.int32(step), mu=mu, nu=nu),) + opt_state[i + 1:]
      if net == ("disc_x" if "disc_x" in nets else "g"):  # their iterations
        d_step = step
    opt_states[field] = opt_state

  state = train_state_lib.TrainState(
      step=np.int32(d_step), generator=params["generator"], discriminator=params["discriminator"],
      spectral=spectral, probe=params["probe"], **opt_states)
  _check_tree(state, expected)
  return jax.tree.map(jnp.asarray, state)


def _weight(config: ml_collections.ConfigDict) -> str:
  """The name of a spectrally normalised layer's weight: their SpectralNorm's or torch's."""
  return "weight_orig" if config.arch.name == "dsprites64" else "weight_bar"


def _fresh_state(config: ml_collections.ConfigDict) -> train_state_lib.TrainState:
  """``train_state.create``'s state for ``config`` at ``config.seed``: what their model lacks."""
  channels, _ = DATASET_SHAPES[config.data.name]
  size = networks_lib.IMAGE_SIZE[config.arch.name]
  return train_state_lib.create(_networks(config), train_state_lib.make_optimizers(config.optim),
                                jax.random.key(config.seed), (size, size, channels),
                                _latent_hwc(config))


def _check_tree(state: Any, expected: Any) -> None:
  """``state`` has exactly ``expected``'s tree, shapes and dtypes (one line naming the leaf)."""
  got = dict(jax.tree_util.tree_flatten_with_path(state)[0])
  want = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  for path, leaf in want.items():
    name = jax.tree_util.keystr(path)
    if path not in got:
      raise ValueError(f"the converted state has no {name} (the mapping misses it)")
    value = np.asarray(got[path])
    if value.shape != leaf.shape or value.dtype != leaf.dtype:
      raise ValueError(f"the converted state's {name} is {value.dtype}{value.shape}, amr_jax's "
                       f"{leaf.dtype}{leaf.shape}")
  for path in got:
    if path not in want:
      raise ValueError(f"the converted state has {jax.tree_util.keystr(path)}, which amr_jax's "
                       f"does not")
  if jax.tree.structure(state) != jax.tree.structure(expected):
    raise ValueError(f"the converted state's tree differs from amr_jax's: "
                     f"{jax.tree.structure(state)} vs {jax.tree.structure(expected)}")


def to_authors(config: ml_collections.ConfigDict, state: train_state_lib.TrainState
               ) -> dict[str, Any]:
  """The authors' ``save()`` dict of ``state`` (float32 numpy arrays; optimizer state dicts in
  torch >= 1.6's layout, parameters numbered 0..n-1; ``epoch`` 0). The inverse of
  :func:`to_train_state` except what amr_jax does not keep: G's biases before instance norms
  (zeros, their moments zeros) and D's ``weight_v`` (W^T u normalised, as their next forward
  sets it). dsprites64: only the networks their model has (the beta-VAE: ``g``; no probe)."""
  _check_config(config)
  _check_tree(jax.tree.map(np.asarray, state), _expected_state(config))
  state = jax.tree.map(np.asarray, state)
  tensors = _tensors(config)
  names = authors_names(config)
  latent = _latent_hwc(config)
  nets = _nets(config)
  weight = _weight(config)
  out: dict[str, Any] = {net: {} for net in nets}
  for tensor in tensors:
    leaf = np.asarray(_source(state, tensor), np.float32)
    shape = names[tensor.net][tensor.name]
    if tensor.kind == "dropped":
      value = np.zeros(shape, np.float32)
    elif tensor.kind == "v":
      continue  # below, once the layer's weight_u and weight_bar are out
    else:
      value = _to_torch(tensor, leaf, latent)
    out[tensor.net][tensor.name] = np.ascontiguousarray(value, np.float32)
  for tensor in tensors:
    if tensor.kind == "v":
      prefix = tensor.name[:-len("weight_v")]
      weight_bar, u = out[tensor.net][prefix + weight], out[tensor.net][prefix + "weight_u"]
      v = weight_bar.reshape(weight_bar.shape[0], -1).T.astype(np.float64) @ u.astype(np.float64)
      out[tensor.net][tensor.name] = (v / (np.linalg.norm(v) + 1e-12)).astype(np.float32)
  out = {net: {t.name: out[net][t.name] for t in tensors if t.net == net} for net in nets}
  for net in nets:
    field = _OPTIM[net]
    adam = getattr(state, field)[_adam_index(getattr(state, field))]
    trainable = [t for t in tensors if t.net == net and t.trainable]
    entries = {}
    for i, tensor in enumerate(trainable):
      if tensor.kind == "dropped":
        moments = [np.zeros(names[net][tensor.name], np.float32)] * 2
      else:
        moments = [np.ascontiguousarray(_to_torch(tensor, np.asarray(_get(m, tensor.path),
                                                                     np.float32), latent, power))
                   for m, power in ((adam.mu, -1), (adam.nu, -2))]
      entries[i] = {"step": int(adam.count), "exp_avg": moments[0], "exp_avg_sq": moments[1]}
    optim = config.optim
    lr = optim.probe_lr if net == "cls_enc" else optim.lr
    out[f"optim_{net}"] = {
        "state": entries if int(adam.count) else {},
        "param_groups": [{"lr": lr, "betas": (optim.b1, optim.b2), "eps": 1e-8,
                          "weight_decay": optim.weight_decay, "amsgrad": False,
                          "params": list(range(len(trainable)))}]}
  out["epoch"] = 0
  return out


# ----------------------------------------------------------------------------------------------
# Into a workdir: what `python -m amr_jax.from_authors` and the --authors_checkpoint flags run.


def has_checkpoints(workdir: str) -> bool:
  """Whether ``workdir`` already holds an amr_jax checkpoint."""
  from amr_jax import checkpointing  # pylint: disable=g-import-not-at-top
  return bool(checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps())


def import_checkpoint(config: ml_collections.ConfigDict, authors_checkpoint: str,
                      workdir: str) -> int:
  """Reads the authors' ``authors_checkpoint`` (a ``torch.save`` file, read without torch),
  converts and checks it for ``config``, then writes it into ``workdir`` as an amr_jax checkpoint
  at step ``TrainState.step`` (with ``config.json``), the one the training loop and
  ``amr_jax.evaluate`` restore. Returns that step.

  Nothing is written before the state has been converted and checked. Raises ConfigError for a
  bad config or a workdir of another model, ValueError (one line) for a state that does not fit
  or a workdir that already has checkpoints, ``pickle.UnpicklingError`` for an unreadable file,
  WorkdirLockError while a run holds the workdir.
  """
  from amr_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from amr_jax import parallel  # pylint: disable=g-import-not-at-top
  from amr_jax import torch_checkpoint  # pylint: disable=g-import-not-at-top
  from amr_jax import workdir_lock  # pylint: disable=g-import-not-at-top

  config_lib.validate(config)
  config_lib.check_workdir(config, workdir)
  if has_checkpoints(workdir):
    raise ValueError(f"workdir {workdir!r} already holds checkpoints; import the authors' model "
                     f"into an empty workdir")
  saved = torch_checkpoint.load(authors_checkpoint)
  if not isinstance(saved, Mapping):
    raise ValueError(f"{authors_checkpoint} holds a {type(saved).__name__}, not the dict of the "
                     f"authors' save()")
  state = to_train_state(config, saved)
  sharding = parallel.replicated(parallel.make_mesh())
  state = jax.device_put(state, sharding)
  step = int(state.step)
  with workdir_lock.hold_for_run(workdir):
    if has_checkpoints(workdir):  # a run started meanwhile
      raise ValueError(f"workdir {workdir!r} already holds checkpoints; import the authors' "
                       f"model into an empty workdir")
    if jax.process_index() == 0:
      config_lib.write_to_workdir(config, workdir)
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
      checkpointer.save(step, state, {})
    finally:
      checkpointer.close()
  return step


def main(argv: list[str]) -> None:
  del argv
  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from amr_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    step = import_checkpoint(flags.FLAGS.config, flags.FLAGS.authors_checkpoint,
                             flags.FLAGS.workdir)
  except (config_lib.ConfigError, ValueError, pickle.UnpicklingError, OSError,
          workdir_lock.WorkdirLockError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote the authors' model as the checkpoint at step {step} in {flags.FLAGS.workdir}")


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "The amr_jax config of the authors' model "
                                  "(a row with the 'authors' option).", lock_config=True)
  flags.DEFINE_string("authors_checkpoint", None, "The file the authors' save() wrote.")
  flags.DEFINE_string("workdir", None, "An empty workdir to write the checkpoint into.")
  flags.mark_flags_as_required(["config", "authors_checkpoint", "workdir"])
  app.run(main)
