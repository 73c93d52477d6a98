"""Parity with the authors' PyTorch code on dSprites (Table 4): their beta-VAE and AMR models.

Each fixture (tests/fixtures/authors/dsprites_*.npz, recorded by
experiments/parity/record_authors_dsprites.py from their code on konny's nets; see
tests/authors_fixtures_dsprites.py) holds what their code computed from initial weights made from
a numpy seed and a batch of 8 binary 64x64 images: forward outputs, then two iterations with
their draws. amr_jax is built from the same weights (``from_authors.to_train_state``), runs the
same iterations on the same draws (``train_step(..., draws=Draws(...))``), and every quantity is
compared in the authors' layout (``from_authors.to_authors``) as a relative L2 difference per
group, a fraction of its bound (tests/test_authors_parity.py's checks and bounds).

- ``dsprites_beta_vae``: their ``vae`` (bvae_beta100.sh): G steps on both iterations. amr_jax's
  ``beta_vae`` with ``vae_scale='std'`` (their encoder's second half is the Normal's scale),
  ``kl_weight`` = their beta / latent_dim = 10 (their KL is a mean over the code's dimensions,
  amr_jax's a sum), Adam (0.9, 0.99), no weight decay.
- ``dsprites_mixup``: their ``swapgan`` on ``dsprite_gd.py`` (mixup_lamb1.sh): iteration 1 steps
  G and D, iteration 2 D only. amr_jax's ``amr`` with the authors' iteration
  (``discriminator_calls='per_term'``, ``gan_loss='bce_clamped'``) and ``lamb`` 4096 (their
  ``bce_sum`` is the BCE summed over the 64x64 pixels, amr_jax's ``bce`` its mean).

Both: ``arch.decoder_logit_scale=2`` (their Tanh decoder under BCE), batch 8. Negative controls:
another draw (the noise or the partners rolled by one example) and one more step fail the same
checks.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import config as config_lib
from amr_jax import from_authors
from amr_jax import model
from amr_jax import networks
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib
from tests import authors_fixtures as fx
from tests import authors_fixtures_dsprites as dfx
from tests.test_authors_parity import assert_differs
from tests.test_authors_parity import assert_matches
from tests.test_authors_parity import fractions
from tests.test_authors_parity import nchw

# Float comparisons that must hold on any host: CI reruns them under another XLA:CPU path.
pytestmark = pytest.mark.equivalence

PIXELS = 64 * 64


def amr_config(fixture: dfx.Fixture, override: tuple[str, Any] | None = None) -> Any:
  """dsprites.py's row with its ``authors`` option, batch 8; the option's values checked against
  the fixture's flags. ``override``: (field, value) set after (a negative control)."""
  config = importlib.import_module("experiments.configs.dsprites").get_config(
      f"{fixture.config},authors")
  config.batch_size = dfx.BATCH
  assert (config.optim.b1, config.optim.b2) == fixture.betas
  assert config.optim.weight_decay == 0.0 and config.arch.decoder_logit_scale == 2.0
  if fixture.authors_model == "vae":
    assert config.kl_weight == fixture.beta / dfx.LATENT_DIM and config.vae_scale == "std"
  else:
    assert config.lamb == fixture.lamb * PIXELS  # their bce_sum
  if override:
    config_lib.set_field(config, *override)
  config_lib.validate(config, num_devices=1, check_data=False)
  return config


@dataclasses.dataclass
class Setup:
  fixture: dfx.Fixture
  saved: dict[str, np.ndarray]
  config: Any  # the step's
  authors_config: Any  # the authors' model's, for from_authors
  nets: networks.Networks
  state: Any
  batch: dict[str, jax.Array]
  iterations: dict[bool, Any]  # update_generator -> jitted step


@functools.cache
def setup(name: str, override: tuple[str, Any] | None = None) -> Setup:
  """The fixture and amr_jax built from it (``override``: a (field, value) of the step's config,
  a negative control; the weights are converted under the authors' config)."""
  fixture = dfx.FIXTURES[name]
  saved = fx.load(fx.FIXTURE_DIR / f"{name}.npz")
  config = amr_config(fixture)
  names = from_authors.authors_names(config)
  assert ({net: [[k, list(s)] for k, s in t.items()] for net, t in names.items()}
          == json.loads(str(saved["meta"]))["names"])
  weights = dfx.authors_weights(names, fixture.seed, fixture.spectral_u)
  state = from_authors.to_train_state(config, {**weights, "epoch": 0})
  authors_config, config = config, amr_config(fixture, override)
  nets = networks.build("dsprites64", image_channels=1, num_classes=3, latent_dim=dfx.LATENT_DIM,
                        variational=config.model == "beta_vae", decoder_logit_scale=2.0)
  step = train_step_lib.make_train_step(config, nets, train_state_lib.make_optimizers(config.optim))
  x = dfx.authors_batch(fixture.seed)
  batch = {"image": jnp.asarray(x.transpose(0, 2, 3, 1)),
           "label": jnp.zeros((dfx.BATCH,), jnp.int32)}
  iterations = {g: jax.jit(lambda state, batch, draws, g=g: step(
      state, batch, None, update_generator=g, draws=draws)) for g in (True, False)}
  return Setup(fixture, saved, config, authors_config, nets, state, batch, iterations)


def draws_of(s: Setup, iteration: int) -> train_step_lib.Draws:
  """The authors' draws of one iteration as amr_jax's Draws."""
  prefix = f"iter{iteration}/draws"
  if s.config.model == "beta_vae":
    return train_step_lib.Draws(noise=jnp.asarray(s.saved[f"{prefix}/noise"]))
  alpha = s.saved[f"{prefix}/sampler"]  # (B, 1): one weight per example
  return train_step_lib.Draws(
      permutations=jnp.asarray(s.saved[f"{prefix}/permutations"], jnp.int32),
      weights=jnp.asarray(np.stack([alpha, 1.0 - alpha]), jnp.float32))


def other_draws(draws: train_step_lib.Draws) -> train_step_lib.Draws:
  """The same draws for other examples: rolled by one along the batch."""
  if draws.noise is not None:
    return draws._replace(noise=jnp.roll(draws.noise, 1, axis=0))
  return draws._replace(permutations=jnp.roll(draws.permutations, 1, axis=-1))


def decode(s: Setup, generator: Any, z: jax.Array) -> np.ndarray:
  """Images as the authors' Tanh decoder gives them, NCHW."""
  out = s.nets.decoder.apply({"params": generator["decoder"]}, z)
  return nchw(model.to_image(out, "bce"))


def forward_fractions(s: Setup) -> dict[str, float]:
  raw = s.nets.encoder.apply({"params": s.state.generator["encoder"]}, s.batch["image"])
  groups = {"forward/codes": [("forward/codes", "forward/codes", np.asarray(raw))],
            "forward/decoded": [("forward/decoded", "forward/decoded",
                                 decode(s, s.state.generator, raw[:, :dfx.LATENT_DIM]))]}
  if s.config.model != "beta_vae":
    decoded = s.nets.decoder.apply({"params": s.state.generator["decoder"]}, raw)
    for label, images in (("real", s.batch["image"]),
                          ("rec", model.to_image(decoded, "bce"))):
      logits, _ = s.nets.discriminator.apply(
          {"params": s.state.discriminator, networks.SPECTRAL: s.state.spectral}, images,
          update_stats=True, mutable=[networks.SPECTRAL])
      groups[f"forward/d_logits_{label}"] = [(f"forward/d_logits_{label}",
                                              f"forward/d_logits_{label}", np.asarray(logits))]
  return fractions(groups, s.saved)


def loss_groups(s: Setup, prefix: str, state: Any, metrics: dict, draws: Any,
                update_generator: bool) -> dict[str, Any]:
  """Their returned loss terms and decoded images against amr_jax's."""
  saved = s.saved
  if s.config.model == "beta_vae":
    terms = {"recon": metrics["recon"], "kl": metrics["kl"] / dfx.LATENT_DIM,
             "gen_loss": metrics["g_loss"]}
    raw = s.nets.encoder.apply({"params": state.generator["encoder"]}, s.batch["image"])
    mean, scale = jnp.split(raw, 2, axis=-1)
    images = {"recon": decode(s, state.generator, mean + scale * draws.noise),
              "sample": decode(s, state.generator, saved[f"{prefix}/draws/prior_noise"])}
  else:
    # Their d_x is the mean of D's three terms; G's terms through D are logged on G's steps.
    terms = {"recon": metrics["recon"] * PIXELS, "d_x": metrics["d_loss"] / 3}
    if update_generator:
      terms.update(gen_loss=metrics["g_loss"], disc_g_recon=metrics["gan_rec"],
                   disc_g_mix=metrics["gan_mix"])
    h = s.nets.encoder.apply({"params": state.generator["encoder"]}, s.batch["image"])
    alpha = draws.weights[0]
    mix = alpha * h + (1.0 - alpha) * h[draws.permutations[0]]
    images = {"recon": decode(s, state.generator, h), "mix": decode(s, state.generator, mix)}
  groups = {f"loss/{n}": [(f"{prefix}/returned/{n}", f"{prefix}/returned/{n}", np.asarray(v))]
            for n, v in terms.items()}
  for name, value in images.items():
    groups[f"images/{name}"] = [(f"{prefix}/images/{name}", f"images/{name}", value)]
  return groups


def implied_gradients(config: Any, before: dict[str, Any], after: dict[str, Any], net: str
                      ) -> dict[str, np.ndarray]:
  """``{name: gradient}`` (the authors' layout) that the step's Adam update consumed: its first
  moment moved from ``m`` (0 before the first step) to ``b1 m + (1 - b1) g`` (no weight decay
  here); ``before``, ``after``: ``to_authors`` of the states."""
  b1 = config.optim.b1
  old, new = before[f"optim_{net}"]["state"], after[f"optim_{net}"]["state"]
  trainable = [n for n in before[net] if not n.endswith(("_u", "_v"))]
  return {n: (np.asarray(new[i]["exp_avg"], np.float64)
              - b1 * (old[i]["exp_avg"] if i in old else 0.0)) / (1.0 - b1)
          for i, n in enumerate(trainable)}


def iteration_fractions(s: Setup, iteration: int, state: Any, draws: Any, repeat: int = 1
                        ) -> tuple[dict[str, float], Any]:
  """Every check of one iteration as fractions of its bound, and amr_jax's state after it."""
  prefix, saved, config = f"iter{iteration}", s.saved, s.config
  update_generator = iteration == 1 or config.model == "beta_vae"
  start = state
  for _ in range(repeat):
    before = state
    state, metrics = s.iterations[update_generator](state, s.batch, draws)
  groups = loss_groups(s, prefix, start, metrics, draws, update_generator)
  before_authors = from_authors.to_authors(s.authors_config, before)
  after = from_authors.to_authors(s.authors_config, state)
  for net in from_authors.authors_names(s.authors_config):
    trainable = [n for n in after[net] if not n.endswith(("_u", "_v"))]
    if fx.has(saved, f"{prefix}/grad/{net}/{trainable[0]}"):
      grads = implied_gradients(config, before_authors, after, net)
      groups[f"grad/{net}"] = [(f"{prefix}/grad/{net}/{n}", f"{net}/{n}", grads[n])
                               for n in trainable]
    elif net != "g" or update_generator:
      raise AssertionError(f"{prefix}: no recorded gradients of {net}")
    groups[f"param/{net}"] = [(f"{prefix}/param/{net}/{n}", f"{net}/{n}", after[net][n])
                              for n in trainable]
    optim = after[f"optim_{net}"]["state"]
    for moment in ("exp_avg", "exp_avg_sq"):
      groups[f"{moment}/{net}"] = [(f"{prefix}/{moment}/{net}/{n}", f"{net}/{n}",
                                    optim[i][moment]) for i, n in enumerate(trainable)]
    steps = {entry["step"] for entry in optim.values()}
    groups[f"adam_step/{net}"] = steps == {int(saved[f"{prefix}/adam_step/{net}"])}
  if "disc_x" in after:
    groups["spectral/u"] = [(f"{prefix}/spectral/{n}", n, after["disc_x"][n])
                            for n in after["disc_x"] if n.endswith("weight_u")]
  return fractions(groups, saved), state


@pytest.mark.parametrize("name", sorted(dfx.FIXTURES))
def test_forward_matches_the_authors(name):
  s = setup(name)
  assert_matches(f"{name} forward", forward_fractions(s))


@pytest.mark.parametrize("name", sorted(dfx.FIXTURES))
def test_iterations_match_the_authors(name):
  s = setup(name)
  state = s.state
  for iteration in (1, 2):
    draws = draws_of(s, iteration)
    values, next_state = iteration_fractions(s, iteration, state, draws)
    assert_matches(f"{name} iteration {iteration}", values)
    assert_differs(f"{name} iteration {iteration}, another draw",
                   iteration_fractions(s, iteration, state, other_draws(draws))[0])
    assert_differs(f"{name} iteration {iteration}, one more step",
                   iteration_fractions(s, iteration, state, draws, repeat=2)[0])
    state = next_state


def test_the_log_variance_parameterisation_does_not_match():
  """amr_jax's default beta-VAE (the encoder's second half a log-variance) on the authors'
  weights and noise computes something else: vae_scale='std' is what makes it theirs."""
  s = setup("dsprites_beta_vae", ("vae_scale", "log_var"))
  assert_differs("dsprites_beta_vae iteration 1, vae_scale='log_var'",
                 iteration_fractions(s, 1, s.state, draws_of(s, 1))[0])


def test_one_discriminator_forward_per_step_does_not_match():
  """From D's drawn u, amr_jax's default (one D forward over all images) normalises D with
  another estimate than each of their five calls: discriminator_calls='per_term' is theirs."""
  s = setup("dsprites_mixup_random_u", ("discriminator_calls", "batched"))
  assert_differs("dsprites_mixup_random_u iteration 1, discriminator_calls='batched'",
                 iteration_fractions(s, 1, s.state, draws_of(s, 1))[0])


def _saved_with_adam(config: Any, seed: int) -> dict[str, Any]:
  """The authors' save() dict of ``config``'s model: numpy-seeded weights, Adam mid-training."""
  names = from_authors.authors_names(config)
  saved: dict[str, Any] = {**dfx.authors_weights(names, seed), "epoch": 4}
  rng = np.random.RandomState(seed)
  for net, tensors in names.items():
    trainable = [n for n in tensors if not n.endswith(("_u", "_v"))]
    saved[f"optim_{net}"] = {
        "state": {i: {"step": 7, "exp_avg": rng.normal(size=tensors[n]).astype(np.float32),
                      "exp_avg_sq": rng.uniform(size=tensors[n]).astype(np.float32)}
                  for i, n in enumerate(trainable)},
        "param_groups": [{"params": list(range(len(trainable)))}]}
  return saved


@pytest.mark.parametrize("variant", ["mixup", "beta_vae"])
def test_converter_round_trip_and_decoder_scales(variant):
  """to_authors(to_train_state(saved)) gives every kept tensor and moment back exactly, under
  decoder_logit_scale 2 (their parameters as they are) and 1 (the last layer doubled), and both
  decode to the same images."""
  fixture = next(f for f in dfx.FIXTURES.values() if f.config == variant)
  decoded = {}
  for scale in (2.0, 1.0):
    config = amr_config(fixture)
    config.arch.decoder_logit_scale = scale
    saved = _saved_with_adam(config, seed=3)
    state = from_authors.to_train_state(config, saved)
    assert int(state.step) == 7
    back = from_authors.to_authors(config, state)
    dropped = from_authors.not_kept(config)
    for net in from_authors.authors_names(config):
      for name, value in saved[net].items():
        if name not in dropped[net]:
          np.testing.assert_array_equal(back[net][name], value, err_msg=f"{net}/{name}")
      for i, entry in saved[f"optim_{net}"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
          np.testing.assert_array_equal(back[f"optim_{net}"]["state"][i][moment], entry[moment])
    nets = networks.build("dsprites64", image_channels=1, num_classes=3,
                          variational=variant == "beta_vae", decoder_logit_scale=scale)
    z = np.random.RandomState(0).normal(size=(4, dfx.LATENT_DIM)).astype(np.float32)
    decoded[scale] = np.asarray(nets.decoder.apply({"params": state.generator["decoder"]}, z))
  np.testing.assert_allclose(decoded[1.0], decoded[2.0], rtol=1e-6, atol=1e-6)


def test_converter_errors_name_the_field_or_tensor():
  config = amr_config(dfx.FIXTURES["dsprites_mixup"])
  saved = _saved_with_adam(config, seed=3)
  renamed = {**saved, "g": {("encoder.1.weight" if k == "encoder.0.weight" else k): v
                            for k, v in saved["g"].items()}}
  with pytest.raises(ValueError, match=r"no tensor 'encoder.0.weight'"):
    from_authors.to_train_state(config, renamed)
  wrong = {**saved, "disc_x": {**saved["disc_x"], "encoder.9.weight_orig": np.zeros((256, 500))}}
  with pytest.raises(ValueError, match=r"encoder.9.weight_orig.*shape"):
    from_authors.to_train_state(config, wrong)
  with pytest.raises(ValueError, match=r"entry 'cls_enc'"):
    from_authors.to_train_state(config, {**saved, "cls_enc": {}})
  vae = amr_config(dfx.FIXTURES["dsprites_beta_vae"])
  vae.vae_scale = "log_var"
  with pytest.raises(ValueError, match=r"vae_scale='log_var'"):
    from_authors.authors_names(vae)
  config.recon_loss = "l1"
  with pytest.raises(ValueError, match=r"recon_loss='l1'"):
    from_authors.authors_names(config)


def test_config_validates_the_new_fields():
  config = amr_config(dfx.FIXTURES["dsprites_beta_vae"])
  config.vae_scale = "variance"
  with pytest.raises(config_lib.ConfigError, match=r"config.vae_scale='variance'"):
    config_lib.validate(config, num_devices=1, check_data=False)
  mnist = importlib.import_module("experiments.configs.mnist").get_config("mixup")
  mnist.arch.decoder_logit_scale = 2.0
  with pytest.raises(config_lib.ConfigError, match=r"config.arch.decoder_logit_scale=2.0"):
    config_lib.validate(mnist, num_devices=1, check_data=False)
