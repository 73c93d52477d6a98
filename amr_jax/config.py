"""Validation of an experiment's ConfigDict: every field is checked before anything compiles.

Errors are one line naming the field, the bad value and what is allowed, e.g.
``config.mixer='foo' is not allowed; allowed: 'mixup', 'bernoulli', ...``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import jax
import ml_collections

from amr_jax import convolution
from amr_jax import data as data_lib
from amr_jax import losses
from amr_jax import mixers
from amr_jax import networks
from amr_jax.errors import ConfigError  # re-exported: config.ConfigError
from amr_jax.evaluators import common as evaluators

MODELS = ("amr", "ae_gan", "acai", "beta_vae")


def base_config() -> ml_collections.ConfigDict:
  """Every field with the authors' defaults (reference.md); configs override what they change."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_seeds = 1  # > 1: seeds seed, seed+1, ... train side by side in one jitted step
  # How that step runs the seeds: 'vmap' (one batched computation: accelerators), 'unroll' (one
  # copy of the step per seed: XLA:CPU runs vmap's grouped convolutions ~6x slower), 'auto'
  # (unroll on CPU, else vmap).
  config.seed_batching = "auto"
  # Method: 'amr' mixes codes with `mixer` over `k` sources; 'ae_gan' is the no-mixing baseline.
  config.model = "amr"
  config.mixer = "mixup"
  config.k = 2
  config.lamb = 10.0  # weight of the reconstruction loss
  config.beta = 0.0  # weight of the consistency loss recon(enc(dec(mix)), mix); 0 turns it off
  config.g_every = 5  # the generator steps once every g_every iterations (authors: 5)
  config.kl_weight = 4.0  # beta_vae only: the beta of beta-VAE (named apart from `beta`)
  # beta_vae only: what the encoder's second half is: 'log_var' (the log-variance) or 'std'
  # (the authors' models/vae.py: the Normal's scale itself, unconstrained; KL 0.5 (s^2 + mu^2 -
  # 1 - log s^2)). Their beta on a KL averaged over code dims is kl_weight = beta / latent_dim.
  config.vae_scale = "log_var"
  config.acai = ml_collections.ConfigDict()
  config.acai.variant = "berthelot"  # or 'amr_authors' (BCE targets; see reference.md)
  config.acai.advweight = 0.5
  # Supervised AMR (section 2.2): a learned mixer conditioned on binary attributes.
  config.supervised = ml_collections.ConfigDict()
  config.supervised.enabled = False
  config.supervised.mask = "soft"  # 'soft' = sigmoid(MLP(y)); 'sampled' = Bernoulli, straight-through
  config.supervised.cls_weight = 1.0
  config.supervised.mask_eps = 1e-4  # keeps masks from collapsing to all-one or all-zero
  config.recon_loss = "l1"
  config.consistency_loss = "l1"
  # 'bce_clamped': the authors' (PyTorch's BCELoss on the sigmoid: no gradient where it saturates)
  config.gan_loss = "bce"
  # How D runs in an iteration: 'batched' (one forward over every image D judges, its power
  # iteration advanced once per forward) or 'per_term' (the authors': one forward per loss term,
  # in their order, each advancing it; also G's side on steps where G does not step).
  config.discriminator_calls = "batched"
  # Where D's loss differentiates each call's spectral-norm sigma: at that call's u, v
  # ('own_call'), or at those of D's last call ('last_call', with 'per_term': the authors'
  # 32x32 SpectralNorm, which overwrites u, v in place before D's backward reads them).
  config.spectral_backward = "own_call"

  config.batch_size = 64  # global batch, split over all devices of all hosts
  # Training steps per jitted call (K): one dispatch per K steps instead of one per step. 0 (the
  # default) chooses K for the backend and the run (stepper.resolve_steps_per_call: 10 on CPU
  # for runs long enough to pay for compiling it, 100 on accelerators, a multiple of g_every).
  # An explicit K > 1 must be a multiple of g_every (a call runs whole cycles of G's update).
  # Calls never cross a logging, evaluation or checkpoint step. The same steps either way
  # (tested).
  config.steps_per_call = 0
  # How a call runs its K steps: 'scan' (lax.scan: one compiled step), 'unroll' (K copies of the
  # step in the call: XLA:CPU ran the step ~35x slower inside a while loop), 'auto' (unroll on
  # CPU, else scan).
  config.steps_per_call_loop = "auto"
  config.num_train_steps = 100_000
  config.log_every = 100
  config.eval_every = 2_000
  config.checkpoint_every = 2_000
  config.eval_batch_size = 500
  config.num_pictures = 8  # examples per picture grid

  config.arch = _arch_fields()
  config.optim = _optim_fields()

  # What each evaluation measures (amr_jax/evaluators/): entry name -> {"every": steps (0 =
  # eval_every), options}; every evaluator also runs at the last step. Dataset configs add
  # their own (dsprites: 'disentanglement'; the spiral: 'spiral' instead of 'pictures').
  config.evals = ml_collections.ConfigDict({"probe": {"every": 0}, "pictures": {"every": 0}})
  config.data = _data_fields()
  return config


def _arch_fields() -> ml_collections.ConfigDict:
  """config.arch: the networks."""
  arch = ml_collections.ConfigDict()
  arch.name = "acai32"
  arch.width = 16
  arch.latent_channels = 2  # 4x4xC bottleneck: 2 -> dim 32, 16 -> 256, 64 -> 1024
  arch.latent_dim = 10  # dsprites64 only
  arch.instance_norm = True
  arch.leaky_slope = 0.01
  # 'bfloat16': mixed precision on accelerators (float32 parameters, bfloat16 compute).
  arch.compute_dtype = "float32"
  # acai32 only: where the authors' PyTorch model differs (AUTHORS_MODEL sets all four to theirs;
  # experiments/results/reference_curves.md measures them).
  arch.init = "flax"  # or 'authors': their Initializer (networks.py)
  arch.input_conv_padding = 0  # authors: 1 (the 1x1 input conv grows 32 to 34 pixels)
  arch.spectral_input_conv = True  # authors: False (D's 1x1 input conv unnormalised)
  # Per D forward. The authors: 1 per forward, 5 forwards per AMR iteration (AUTHORS_MODEL: 5
  # in one batched forward; AUTHORS_EXACT: 1 in each of 5 forwards).
  arch.spectral_power_iterations = 1
  # dsprites64 only: the last layer's output times this is the logit; 2 with recon_loss='bce'
  # is the authors' Tanh decoder (tanh(u) = 2 sigmoid(2 u) - 1) with their parameters.
  arch.decoder_logit_scale = 1.0
  # acai32: how its convolutions are computed, the same maths on every path (amr_jax/
  # convolution.py): 'xla', 'chunked_weight_grad' (the kernels' gradients summed over slices of
  # the batch: faster on XLA:CPU) or 'auto' (chunked on CPU, xla elsewhere).
  arch.conv_path = "auto"
  return arch


def _optim_fields() -> ml_collections.ConfigDict:
  """config.optim: Adam for G, D and the probe."""
  optim = ml_collections.ConfigDict()
  optim.lr = 1e-4  # G and D
  optim.probe_lr = 1e-4
  optim.b1 = 0.5
  optim.b2 = 0.99
  optim.weight_decay = 1e-5  # L2 added to the gradient, PyTorch-style (not decoupled)
  return optim


def _data_fields() -> ml_collections.ConfigDict:
  """config.data: the dataset and how batches reach the devices."""
  data = ml_collections.ConfigDict()
  data.name = "mnist"
  data.manual_dir = ""  # folder with the dataset's original files, to build it offline
  data.data_dir = ""  # TFDS data_dir ('' = TFDS default)
  # A TFDS dataset neither prepared in data_dir nor given by manual_dir: TFDS downloads and
  # prepares it into data_dir (True), or the run fails saying how to provide it (False).
  data.download = True
  data.image_size = 32
  data.split_seed = 0  # the train/validation split: the same for every training seed
  data.num_valid = -1  # -1 = the dataset's default validation size
  data.num_train = -1  # -1 = all; else cap the training set (SVHN 1k/5k/... ablation)
  # Which examples the cap keeps: 'seeded' = the first num_train of the split_seed permutation (a
  # random subset; amr_jax's); 'first' = the first num_train of the stored training split, as
  # the authors' --subset_train (np.arange(N), shuffled, all N kept). Both: every training seed.
  data.train_subset = "seeded"
  data.attributes = ()  # celeb_a: the binary attributes supervised AMR conditions on
  # Where batches come from: 'device' places the training split on the devices once (sharded
  # over them) and gathers each batch there; 'host' sends each batch; 'auto': 'device' on
  # accelerators when the split is an in-memory array under a quarter of a device's memory.
  data.placement = "auto"
  return data


SEED_BATCHING = ("auto", "vmap", "unroll")
PLACEMENTS = ("auto", "host", "device")
# Datasets whose training images are made when indexed (not an in-memory array).
RENDERED_DATASETS = ("dsprites", "celeb_a")

# The fields that make an acai32 model the authors' PyTorch model (reference.md, networks.py).
AUTHORS_MODEL = {
    "arch.init": "authors",
    "arch.input_conv_padding": 1,
    "arch.spectral_input_conv": False,
    "arch.spectral_power_iterations": 5,
}
# AUTHORS_MODEL with their iteration too: D called once per loss term, its power iteration
# advanced one step per call, D's backward at the last call's u, v, and their GAN loss
# (amr_jax.losses.bce_clamped).
AUTHORS_EXACT = {
    **AUTHORS_MODEL,
    "arch.spectral_power_iterations": 1,
    "discriminator_calls": "per_term",
    "spectral_backward": "last_call",
    "gan_loss": "bce_clamped",
}
DISCRIMINATOR_CALLS = ("batched", "per_term")
SPECTRAL_BACKWARD = ("own_call", "last_call")
VAE_SCALES = ("log_var", "std")


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"config.{field}={value!r} is not allowed; allowed: {allowed}")


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  """``set_field(config, "data.name", "mnist")`` sets a (dotted) field."""
  node = config
  *parents, leaf = field.split(".")
  for parent in parents:
    node = node[parent]
  node[leaf] = value


def _one_of(config: ml_collections.ConfigDict, field: str, allowed: Iterable[str]) -> None:
  allowed = tuple(allowed)
  value = _get(config, field)
  if value not in allowed:
    _fail(field, value, ", ".join(repr(a) for a in allowed))


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    if part not in value:
      raise ConfigError(f"config.{field} is missing; every config needs it (see "
                        f"experiments/configs/default.py)")
    value = value[part]
  return value


def _number(config, field: str, *, minimum: float, integer: bool = False,
            strict: bool = False) -> None:
  value = _get(config, field)
  kind = int if integer else (int, float)
  ok = isinstance(value, kind) and not isinstance(value, bool)
  if ok:
    ok = value > minimum if strict else value >= minimum
  if not ok:
    what = "an integer" if integer else "a number"
    _fail(field, value, f"{what} {'>' if strict else '>='} {minimum}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
             check_data: bool = True) -> None:
  """Checks every field of ``config``; raises ConfigError on the first bad one.

  Args:
    config: the experiment config.
    num_devices: devices the batch is sharded over (default: all of ``jax.devices()``).
    check_data: also check that the dataset can be had (loads nothing): prepared, or its
      original files in data.manual_dir, or (data.download) TensorFlow installed and the
      download hosts answering (one HEAD request per host, 10 s timeout).
  """
  for check in (_validate_objective, _validate_run, _validate_arch, _validate_optim,
                _validate_data, _validate_calls):
    check(config)
  num_devices = jax.device_count() if num_devices is None else num_devices
  for field in ("batch_size", "eval_batch_size"):
    if _get(config, field) % num_devices:
      _fail(field, _get(config, field),
            f"a multiple of the number of devices ({num_devices}), since the batch is "
            f"split evenly across them")
  if check_data:
    try:
      data_lib.check_available(config.data.name, manual_dir=config.data.manual_dir,
                               data_dir=config.data.data_dir, download=config.data.download,
                               attributes=tuple(config.data.attributes))
    except ValueError as e:
      raise ConfigError(str(e)) from None




def _validate_objective(config: ml_collections.ConfigDict) -> None:
  """The model and its losses."""
  _one_of(config, "model", MODELS)
  _one_of(config, "mixer", mixers.names())
  _number(config, "k", minimum=2, integer=True)
  _number(config, "lamb", minimum=0)
  _number(config, "beta", minimum=0)
  _number(config, "g_every", minimum=1, integer=True)
  _number(config, "kl_weight", minimum=0)
  _one_of(config, "vae_scale", VAE_SCALES)
  _one_of(config, "acai.variant", ("berthelot", "amr_authors"))
  _number(config, "acai.advweight", minimum=0)
  if not isinstance(_get(config, "supervised.enabled"), bool):
    _fail("supervised.enabled", config.supervised.enabled, "True or False")
  _one_of(config, "supervised.mask", ("soft", "sampled"))
  _number(config, "supervised.cls_weight", minimum=0)
  _number(config, "supervised.mask_eps", minimum=0)
  if config.model == "acai" and (config.mixer != "mixup" or config.k != 2):
    _fail("mixer", f"{config.mixer} with k={config.k}",
          "'mixup' with k=2 for model='acai' (its critic regresses one coefficient)")
  if config.supervised.enabled and config.data.name not in ("dsprites", "celeb_a"):
    _fail("supervised.enabled", True, f"False for data.name={config.data.name!r} (supervised "
          "AMR needs binary attributes: dsprites, celeb_a)")
  if config.supervised.enabled and config.model != "amr":
    _fail("supervised.enabled", True, f"False for model={config.model!r} (only 'amr' mixes "
          "with labels)")
  _one_of(config, "recon_loss", losses.RECONSTRUCTION)
  _one_of(config, "consistency_loss", ("l1", "l2"))
  _one_of(config, "gan_loss", losses.GAN)
  _one_of(config, "discriminator_calls", DISCRIMINATOR_CALLS)
  if config.discriminator_calls == "per_term" and (config.model == "beta_vae"
                                                   or config.supervised.enabled):
    _fail("discriminator_calls", "per_term", "'batched' for "
          + ("model='beta_vae' (it has no D)" if config.model == "beta_vae" else
             "supervised AMR (not implemented: the authors' code has no such model)"))
  _one_of(config, "spectral_backward", SPECTRAL_BACKWARD)
  if config.spectral_backward == "last_call" and config.discriminator_calls != "per_term":
    _fail("spectral_backward", "last_call", "'own_call' unless discriminator_calls='per_term' "
          "(one D call per loss: its own is the last)")


def _validate_run(config: ml_collections.ConfigDict) -> None:
  """Seeds, batch, steps and periods."""
  _number(config, "seed", minimum=0, integer=True)
  _number(config, "num_seeds", minimum=1, integer=True)
  _one_of(config, "seed_batching", SEED_BATCHING)
  _number(config, "data.split_seed", minimum=0, integer=True)
  _number(config, "batch_size", minimum=1, integer=True)
  _number(config, "num_train_steps", minimum=1, integer=True)
  for field in ("log_every", "eval_every", "checkpoint_every"):
    _number(config, field, minimum=1, integer=True)
  _number(config, "num_pictures", minimum=2, integer=True)
  _number(config, "eval_batch_size", minimum=1, integer=True)
  _number(config, "steps_per_call", minimum=0, integer=True)
  _one_of(config, "steps_per_call_loop", ("auto", "scan", "unroll"))


def _validate_arch(config: ml_collections.ConfigDict) -> None:
  """config.arch."""
  _one_of(config, "arch.name", networks.ARCHITECTURES)
  _number(config, "arch.width", minimum=1, integer=True)
  _number(config, "arch.latent_channels", minimum=1, integer=True)
  _number(config, "arch.latent_dim", minimum=1, integer=True)
  _number(config, "arch.leaky_slope", minimum=0)
  _one_of(config, "arch.compute_dtype", ("float32", "bfloat16"))
  _number(config, "arch.decoder_logit_scale", minimum=0, strict=True)
  if config.arch.decoder_logit_scale != 1.0 and config.recon_loss != "bce":
    _fail("arch.decoder_logit_scale", config.arch.decoder_logit_scale,
          "1.0 unless arch.name='dsprites64' with recon_loss='bce'")
  for field in ("arch.instance_norm", "arch.spectral_input_conv"):
    if not isinstance(_get(config, field), bool):
      _fail(field, _get(config, field), "True or False")
  _one_of(config, "arch.init", networks.INITS)
  _one_of(config, "arch.conv_path", convolution.CONV_PATHS)
  _one_of(config, "arch.input_conv_padding", (0, 1))
  _number(config, "arch.spectral_power_iterations", minimum=1, integer=True)
  for name in networks.misplaced_options(
      config.arch.name, **{name: _get(config, f"arch.{name}") for name in networks.ARCH_OPTIONS}):
    owner, unused = networks.ARCH_OPTIONS[name]
    _fail(f"arch.{name}", config.arch[name],
          f"{unused!r} only with arch.name={config.arch.name!r} (an option of {owner})")


def _validate_optim(config: ml_collections.ConfigDict) -> None:
  """config.optim."""
  for field in ("optim.lr", "optim.probe_lr", "optim.weight_decay"):
    _number(config, field, minimum=0)
  for field in ("optim.b1", "optim.b2"):
    _number(config, field, minimum=0)
    if not _get(config, field) < 1:
      _fail(field, _get(config, field), "a number in [0, 1)")


def _validate_data(config: ml_collections.ConfigDict) -> None:
  """config.data and config.evals (loads nothing)."""
  try:
    data_lib.check_name(_get(config, "data.name"))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if (config.data.name == "spiral") != (config.arch.name == "mlp2d"):
    _fail("arch.name", config.arch.name, "'mlp2d' exactly when data.name='spiral'")
  expected_size = networks.IMAGE_SIZE[config.arch.name]
  if _get(config, "data.image_size") != expected_size:
    _fail("data.image_size", config.data.image_size,
          f"{expected_size} (the input size of arch.name={config.arch.name!r})")
  _number(config, "data.num_valid", minimum=-1, integer=True)
  _number(config, "data.num_train", minimum=-1, integer=True)
  _one_of(config, "data.train_subset", data_lib.datasets.TRAIN_SUBSETS)
  if not isinstance(_get(config, "data.download"), bool):
    _fail("data.download", config.data.download, "True or False")
  evaluators.validate(config)
  _one_of(config, "data.placement", PLACEMENTS)
  if config.data.placement == "device" and config.data.name in RENDERED_DATASETS:
    _fail("data.placement", "device", f"'host' or 'auto' for data.name={config.data.name!r} "
          "(its images are made when indexed, not held in memory)")


def _validate_calls(config: ml_collections.ConfigDict) -> None:
  """Steps per call: 0 (chosen for the backend), 1 or whole G cycles."""
  per_call = config.steps_per_call
  if per_call > 1 and per_call % config.g_every:
    _fail("steps_per_call", per_call, f"0 (chosen for the backend), 1 or a multiple of "
          f"g_every={config.g_every} (a call runs whole cycles of G's update)")


def periods(config: ml_collections.ConfigDict) -> list[int]:
  """The periods of what acts between calls: logging, evaluations and checkpoints (a call never
  runs across a multiple of one of them)."""
  out = [config.log_every, config.eval_every, config.checkpoint_every]
  out += [entry.every for entry in config.evals.values() if entry.get("every", 0)]
  return sorted(set(out))


# Fields that change the shapes of the parameters: a workdir's checkpoints only fit a config that
# agrees with the saved one on all of them.
SHAPE_FIELDS = ("model", "num_seeds", "supervised.enabled", "arch.name", "arch.width", "arch.latent_channels",
                "arch.latent_dim",
                "arch.instance_norm", "arch.spectral_input_conv", "data.name", "data.image_size")


def shape_mismatches(saved: ml_collections.ConfigDict,
                     config: ml_collections.ConfigDict) -> list[str]:
  """Fields in SHAPE_FIELDS whose values differ between ``saved`` and ``config``."""
  out = []
  for field in SHAPE_FIELDS:
    try:
      a, b = _get(saved, field), _get(config, field)
    except ConfigError:
      continue
    if a != b:
      out.append(f"config.{field}: saved {a!r}, now {b!r}")
  return out


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose saved config has different parameter shapes (nothing is written)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = ml_collections.ConfigDict(json.load(f))
  mismatches = shape_mismatches(saved, config)
  if mismatches:
    raise ConfigError(
        f"workdir {workdir!r} holds a run whose config differs in fields that change the "
        f"model's shapes ({'; '.join(mismatches)}); use another --workdir or the saved values")


def write_to_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """WORKDIR/config.json, written whole then renamed (another process never reads half)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(path + ".tmp", path)
