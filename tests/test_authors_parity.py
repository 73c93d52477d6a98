"""Parity with the authors' PyTorch code: one amr_jax iteration computes what theirs computes.

Each fixture (tests/fixtures/authors/, recorded by experiments/parity/record_authors.py from their
code; see tests/authors_fixtures.py) holds, for one method, what their code computed from initial
weights made from a numpy seed, Adam moments of a state in mid-training (step counts D 100, probe
100, G 20) and a batch of 8: forward outputs, then iteration 1 (G, D and the probe step) and
iteration 2 (D and the probe only) with their draws. Here amr_jax is built from the same weights
and optimiser states (``from_authors.to_train_state``, which this also tests), runs the same two
iterations on the same draws (``train_step(..., draws=Draws(...))``, jitted once per config and
kind of iteration), and every quantity is compared, mapped back to the authors' layout
(``from_authors.to_authors``), as a relative L2 difference per group, a fraction of its bound in
tests/tolerances.py:

- forward: codes, decoded images, D's logits and probabilities, the probe's logits;
- each iteration: every loss term (G's, each of D's, their sum, the probe's), the decoded
  reconstructions and mixes, each stepped network's gradients (read off the step's Adam update:
  ``implied_gradients``), the updated parameters, Adam's moments and step counts, D's spectral u.

Every check has negative controls that must fail it: another draw (a different permutation or,
for AE+GAN, which has none, another batch) and one more step. ``pytest -s`` prints each check's
worst fraction of its bound.

Configs: the method's row with ``authors`` (``AUTHORS_MODEL``) at batch 8, or ``authors_exact``
(``AUTHORS_EXACT``, :data:`OPTIONS`); ACAI as the authors' acaif3 (``acai.variant='amr_authors'``,
their critic term's weight 1, G every 5). With D's u converged, ``authors`` is their model to
rounding for their 5 D calls per iteration. From a random u (``mnist_mixup_random_u``) only
``authors_exact`` (D called once per loss term, one power-iteration step each, their clamped
BCE) can match; ``AUTHORS_MODEL`` does not (tested).
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
import optax
import pytest

from amr_jax import config as config_lib
from amr_jax import from_authors
from amr_jax import losses
from amr_jax import networks
from amr_jax import objective
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib
from tests import authors_fixtures as fx
from tests import tolerances

# Float comparisons that must hold on any host: CI reruns them under another XLA:CPU path.
pytestmark = pytest.mark.equivalence

# check -> bound. Gradients carry the rounding of the loss terms they come from, as the moments do.
# Gradients and first moments: RTOL_KINK (a LeakyReLU unit may sit on the other side of 0 here).
# Images decoded after G's update (iteration 2) get RTOL_KINK too: they carry the update's
# gradient, and one step moves them far at these weights (mnist_mixup: by 0.69 relative; under
# XLA's other convolution path the ACAI fixture's kink put them 1.85e-3 off).
BOUNDS = {"forward": tolerances.RTOL, "loss": tolerances.RTOL, "images": tolerances.RTOL,
          "grad": tolerances.RTOL_KINK, "param": tolerances.RTOL,
          "exp_avg": tolerances.RTOL_KINK, "exp_avg_sq": tolerances.RTOL_MOMENTS,
          "spectral": tolerances.RTOL}
ITERATIONS = {1: True, 2: False}  # iteration -> whether G steps (their iter=1, iter=2)
CONVERGED = sorted(n for n, f in fx.FIXTURES.items() if f.spectral_u == "converged")
# The amr_jax option each fixture is compared under: 'authors' (AUTHORS_MODEL: one batched D
# forward advancing the power iteration 5 times) matches their 5 D calls per iteration from a
# converged u. AE+GAN and ACAI call D 4 times per iteration, so only 'authors_exact' (one call
# per term) advances u as theirs does (AUTHORS_MODEL's u drifts by iteration 2).
OPTIONS = {"mnist_ae_gan": "authors_exact", "mnist_acai": "authors_exact"}


def amr_config(fixture: fx.Fixture, option: str) -> Any:
  """The method's amr_jax config with ``option`` ('authors' or 'authors_exact'), batch 8."""
  file, _, arg = fixture.config.partition(":")
  config = importlib.import_module(f"experiments.configs.{file[:-3]}").get_config(
      f"{arg},{option}")
  config.batch_size = fx.BATCH
  if config.model == "acai":  # their acaif3
    config.acai.variant = "amr_authors"
    config.acai.advweight = 1.0  # their ACAIF3 adds the critic's term to G's loss unweighted
    config.g_every = 5
  config_lib.validate(config, num_devices=1, check_data=False)
  assert config.lamb == fixture.lamb, (config.lamb, fixture.lamb)
  return config


@dataclasses.dataclass
class Model:
  """amr_jax built for one config, its iterations jitted once each."""
  config: Any
  iterations: dict[bool, Any]  # update_generator -> jitted iteration


@functools.cache
def model(fixture_config: str, option: str, spectral_backward: str | None = None) -> Model:
  fixture = next(f for f in fx.FIXTURES.values() if f.config == fixture_config)
  config = amr_config(fixture, option)
  if spectral_backward:
    config.spectral_backward = spectral_backward
  arch = config.arch
  nets = networks.build(arch.name, image_channels=fx.channels(fixture), num_classes=10,
                        width=arch.width, latent_channels=arch.latent_channels,
                        init=arch.init, input_conv_padding=arch.input_conv_padding,
                        spectral_input_conv=arch.spectral_input_conv,
                        spectral_power_iterations=arch.spectral_power_iterations)
  step = train_step_lib.make_train_step(config, nets, train_state_lib.make_optimizers(config.optim))
  setting = objective.Setting.from_config(config, nets)
  per_term = config.discriminator_calls == "per_term"

  def discriminate(state, spectral, images):
    return nets.discriminator.apply(
        {"params": state.discriminator, networks.SPECTRAL: spectral}, images, update_stats=True,
        mutable=[networks.SPECTRAL])

  def forward(state, x, h, decoded):
    """The forward outputs their code recorded: D's from the stored u, as each of their calls
    at the initial weights."""
    out = {"codes": h, "decoded": decoded,
           "probe_logits": nets.probe.apply({"params": state.probe}, h)}
    for label, images in (("real", x), ("rec", decoded)):
      out[f"d_logits_{label}"], _ = discriminate(state, state.spectral, images)
      out[f"d_prob_{label}"] = jax.nn.sigmoid(out[f"d_logits_{label}"])
    return out

  def discriminator_terms(state, x, aux):
    """D's loss terms, each from D's outputs on its images as the step computes them: one
    forward over [x, *fakes] from the stored state ('batched'), or one per group from where G's
    side left it ('per_term')."""
    groups = {"real": x, **{name: getattr(aux.fakes, name) for name in aux.fakes.names()}}
    if per_term:
      logits, spectral = {}, aux.spectral
      for name, images in groups.items():
        logits[name], new = discriminate(state, spectral, images)
        spectral = new[networks.SPECTRAL]
    else:
      out, _ = discriminate(state, state.spectral, jnp.concatenate(list(groups.values())))
      logits = dict(zip(groups, jnp.split(out, len(groups))))
    if config.model == "acai":  # their critic: BCE, targets 0, 0 and 2 min(alpha, 1 - alpha)
      alpha = aux.alpha
      targets = {"real": 0.0, "rec": 0.0, "mix": 2.0 * jnp.minimum(alpha, 1.0 - alpha)}
      bce = losses.bce_clamped if config.gan_loss == "bce_clamped" else (
          lambda z, t: jnp.mean(optax.sigmoid_binary_cross_entropy(z, t)))
      return {f"d_{n}": bce(z, jnp.broadcast_to(targets[n], z.shape)) for n, z in logits.items()}
    return {f"d_{n}": losses.gan(config.gan_loss, z, n == "real") for n, z in logits.items()}

  def iteration(state, batch, draws, update_generator):
    """The step, and what it computes that it does not return, from its own loss function run
    forward (no gradient): G's terms (a D-only step skips those through D), the decoded images,
    D's terms one by one. Gradients are read off the step's Adam moments (implied_gradients)."""
    new_state, metrics = step(state, batch, None, update_generator=update_generator, draws=draws)
    g_total, aux = objective.generator_loss(setting, state.generator, state.discriminator,
                                            state.spectral, batch, draws)
    out = {"state": new_state, "metrics": metrics, "g_total": g_total, "terms": aux.terms,
           "d_terms": discriminator_terms(state, batch["image"], aux),
           "fakes": aux.fakes._asdict()}
    if update_generator:  # the forward checks read it at the iteration's start state
      out["forward"] = forward(state, batch["image"], aux.codes, aux.fakes.rec)
    return out

  return Model(config, {g: jax.jit(functools.partial(iteration, update_generator=g))
                        for g in (True, False)})


def nchw(x: Any) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


def draws_of(saved: dict[str, np.ndarray], iteration: int, fixture: fx.Fixture, config: Any
             ) -> train_step_lib.Draws:
  """The authors' draws of one iteration as amr_jax's Draws."""
  if config.model == "ae_gan":
    return train_step_lib.Draws()  # their --disable_mix draws a mix that nothing uses
  permutations = saved[f"iter{iteration}/draws/permutations"].astype(np.int32)
  sampled = saved[f"iter{iteration}/draws/sampler"]
  batch = permutations.shape[1]
  if config.k > 2:  # their Dirichlet weights (B, k, 1, 1)
    weights = sampled.reshape(batch, config.k).T.reshape(config.k, batch, 1, 1, 1)
  elif fixture.mixer == "fm2":  # their mask (B, C, 1, 1) on the code's channels
    mask = sampled.reshape(batch, 1, 1, -1)
    weights = np.stack([mask, 1.0 - mask])
  else:  # their alpha (B, 1, 1, 1)
    weights = np.stack([sampled, 1.0 - sampled])
  return train_step_lib.Draws(permutations=jnp.asarray(permutations),
                              weights=jnp.asarray(weights, jnp.float32))


@dataclasses.dataclass
class Setup:
  fixture: fx.Fixture
  saved: dict[str, np.ndarray]
  model: Model
  state: Any
  batch: dict[str, jax.Array]
  dropped: set[str]  # G's biases amr_jax does not keep (instance norm cancels them)


def authors_optimizers(names, saved: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
  """``{'optim_NET': state_dict}``: the Adam state the recorder loaded into their optimisers
  (mid-training moments from the recorded gradient scales, ``fx.ADAM_STEPS``), in torch's
  layout, for ``from_authors.to_train_state`` to map."""
  scales = {net: saved[f"adam_scale/{net}"] for net in fx.NETS}
  out = {}
  for net, moments in fx.adam_moments(names, scales, seed).items():
    out[f"optim_{net}"] = {
        "state": {i: {"step": fx.ADAM_STEPS[net], "exp_avg": m, "exp_avg_sq": v}
                  for i, (m, v) in enumerate(moments.values())},
        "param_groups": [{"params": list(range(len(moments)))}]}
  return out


@functools.cache
def setup(name: str, option: str | None = None, spectral_backward: str | None = None) -> Setup:
  fixture = fx.FIXTURES[name]
  saved = fx.load(fx.FIXTURE_DIR / f"{name}.npz")
  m = model(fixture.config, option or OPTIONS.get(name, "authors"), spectral_backward)
  names = from_authors.authors_names(m.config)
  meta = json.loads(str(saved["meta"]))
  assert {net: [[k, list(s)] for k, s in t.items()] for net, t in names.items()} == meta["names"]
  weights = fx.authors_weights(names, fixture.seed)
  for key in saved:
    if key.startswith("init/spectral/"):
      weights["disc_x"][key.removeprefix("init/spectral/")] = saved[key]
  state = from_authors.to_train_state(
      m.config, {**weights, **authors_optimizers(names, saved, fixture.seed), "epoch": 0})
  assert int(state.step) == fx.ADAM_STEPS["disc_x"]
  x, y = fx.authors_batch(fixture.seed, fx.channels(fixture))
  batch = {"image": jnp.asarray(x.transpose(0, 2, 3, 1)),
           "label": jnp.asarray(y.argmax(-1), jnp.int32)}
  return Setup(fixture, saved, m, state, batch, from_authors.not_kept(m.config)["g"])


def fractions(groups: dict[str, Any], saved, bounds: dict[str, float] = BOUNDS
              ) -> dict[str, float]:
  """``{group: relative L2 difference / its bound}`` (the bound from the group's check) of
  ``{group: [(key, name, actual), ...]}``; a group given as a bool: 0 if True, else inf."""
  return {group: (0.0 if entries else np.inf) if isinstance(entries, bool) else
          fx.group_error(saved, entries) / bounds[group.split("/")[0]]
          for group, entries in groups.items()}


def forward_fractions(s: Setup, state: Any) -> dict[str, float]:
  draws = draws_of(s.saved, 1, s.fixture, s.model.config)
  out = s.model.iterations[True](state, s.batch, draws)["forward"]
  groups = {}
  for name, value in out.items():
    value = nchw(value) if np.ndim(value) == 4 else np.asarray(value)
    groups[f"forward/{name}"] = [(f"forward/{name}", f"forward/{name}", value)]
  return fractions(groups, s.saved)


def implied_gradients(config: Any, before: dict[str, Any], after: dict[str, Any], net: str
                      ) -> dict[str, np.ndarray]:
  """``{name: gradient}`` of ``net`` (the authors' layout) that the step's Adam update consumed:
  its first moment moved from ``m`` to ``b1 m + (1 - b1) (g + wd p)`` (L2 decay added to the
  gradient, as torch's Adam does); ``before``, ``after``: ``to_authors`` of the states."""
  b1, decay = config.optim.b1, config.optim.weight_decay
  old, new = before[f"optim_{net}"]["state"], after[f"optim_{net}"]["state"]
  trainable = [n for n in before[net] if not n.endswith(("_u", "_v"))]
  return {n: (np.asarray(new[i]["exp_avg"], np.float64) - b1 * old[i]["exp_avg"]) / (1.0 - b1)
          - decay * before[net][n].astype(np.float64) for i, n in enumerate(trainable)}


def iteration_fractions(s: Setup, iteration: int, state: Any, draws: Any, batch=None,
                        repeat: int = 1) -> tuple[dict[str, float], Any]:
  """Every check of one iteration as fractions of its bound, and amr_jax's state after it
  (``repeat`` > 1: the iteration run that many times, a negative control)."""
  config, saved, prefix = s.model.config, s.saved, f"iter{iteration}"
  update_generator = ITERATIONS[iteration]
  for _ in range(repeat):
    out = s.model.iterations[update_generator](state, batch or s.batch, draws)
    before, state = state, out["state"]
  metrics = out["metrics"]
  calls = fx.gan_calls(s.fixture)
  # Loss terms: the step's metrics where it logs them (G's through D only on G's steps), else
  # its loss function's.
  g_terms = metrics if update_generator else out["terms"]
  terms = {"recon": metrics["recon"], "cls_enc_loss": metrics["probe_loss"],
           "gen_loss": metrics["g_loss"] if update_generator else out["g_total"],
           "d_x": metrics["d_loss"] / (len(calls) - (1 if config.model == "acai" else 2))}
  if config.model == "acai":
    terms["disc_g_mix"] = g_terms["critic_mix"]
  else:
    terms["disc_g_recon"] = g_terms["gan_rec"]
    if config.model == "amr":
      terms["disc_g_mix"] = g_terms["gan_mix"]
  terms.update(out["d_terms"])
  groups: dict[str, Any] = {}
  for name, value in terms.items():
    key = f"{prefix}/returned/{name}" if fx.has(saved, f"{prefix}/returned/{name}") else (
        f"{prefix}/loss/{name}")
    groups[f"loss/{name}"] = [(key, key, np.asarray(value))]
  fakes = {"recon": out["fakes"]["rec"]}
  if config.model != "ae_gan":
    fakes["mix"] = out["fakes"]["mix"]
  for name, value in fakes.items():
    groups[f"images/{name}"] = [(f"{prefix}/images/{name}", f"images/{name}", nchw(value))]
  # The networks' tensors in the authors' layout; gradients of the networks that stepped.
  before_authors = from_authors.to_authors(config, before)
  after = from_authors.to_authors(config, state)
  for net in fx.NETS:
    kept = [n for n in after[net] if n not in s.dropped and not n.endswith(("_u", "_v"))]
    if fx.has(saved, f"{prefix}/grad/{net}/{kept[0]}"):
      grads = implied_gradients(config, before_authors, after, net)
      groups[f"grad/{net}"] = [(f"{prefix}/grad/{net}/{n}", f"{net}/{n}", grads[n])
                               for n in kept]
    elif net != "g" or update_generator:
      raise AssertionError(f"{prefix}: no recorded gradients of {net}")
    groups[f"param/{net}"] = [(f"{prefix}/param/{net}/{n}", f"{net}/{n}", after[net][n])
                              for n in kept]
    trainable = [n for n in after[net] if not n.endswith(("_u", "_v"))]
    optim = after[f"optim_{net}"]["state"]
    for moment in ("exp_avg", "exp_avg_sq"):
      groups[f"{moment}/{net}"] = [
          (f"{prefix}/{moment}/{net}/{n}", f"{net}/{n}", optim[i][moment])
          for i, n in enumerate(trainable) if n not in s.dropped]
    # Adam's step counts: equal, or a difference beyond any bound.
    steps = {entry["step"] for entry in optim.values()}
    groups[f"adam_step/{net}"] = steps == {int(saved[f"{prefix}/adam_step/{net}"])}
  groups["spectral/u"] = [(f"{prefix}/spectral/{n}", n, after["disc_x"][n])
                          for n in after["disc_x"] if n.endswith("weight_u")]
  bounds = {**BOUNDS, "images": tolerances.RTOL_KINK} if iteration > 1 else BOUNDS
  return fractions(groups, saved, bounds), state


def report(label: str, values: dict[str, float]) -> tuple[str, float]:
  worst = max(values, key=values.get)
  print(f"parity {label}: worst {worst} {values[worst]:.3g} of its bound; "
        + ", ".join(f"{k} {v:.2g}" for k, v in sorted(values.items())))
  return worst, values[worst]


def assert_matches(label: str, values: dict[str, float]) -> None:
  worst, fraction = report(label, values)
  assert fraction <= 1, f"{label}: {worst} is {fraction:.3g} of its bound"


def assert_differs(label: str, values: dict[str, float]) -> None:
  worst, fraction = report(f"{label} (negative control)", values)
  floats = {k: v for k, v in values.items() if not k.startswith("adam_step/")}
  if floats:  # how far the values themselves are off, beside the step counts
    print(f"  worst value group {max(floats, key=floats.get)} {max(floats.values()):.3g}")
  assert fraction > 1, f"{label}: the negative control passes the check ({worst} {fraction:.3g})"


def other_draws(draws: Any) -> Any:
  """The same draws with other partners: every permutation rolled by one."""
  return draws._replace(permutations=jnp.roll(draws.permutations, 1, axis=-1))


def run_iterations(s: Setup, label: str) -> None:
  state = s.state
  for iteration in ITERATIONS:
    draws = draws_of(s.saved, iteration, s.fixture, s.model.config)
    values, next_state = iteration_fractions(s, iteration, state, draws)
    assert_matches(f"{label} iteration {iteration}", values)
    if s.model.config.model == "ae_gan":  # no draws: another batch instead
      other = {**s.batch, "image": -s.batch["image"]}
      assert_differs(f"{label} iteration {iteration}, another batch",
                     iteration_fractions(s, iteration, state, draws, batch=other)[0])
    else:
      assert_differs(f"{label} iteration {iteration}, another draw",
                     iteration_fractions(s, iteration, state, other_draws(draws))[0])
    assert_differs(f"{label} iteration {iteration}, one more step",
                   iteration_fractions(s, iteration, state, draws, repeat=2)[0])
    state = next_state


@pytest.mark.parametrize("name", CONVERGED)
def test_forward_matches_the_authors(name):
  s = setup(name)
  assert_matches(f"{name} forward", forward_fractions(s, s.state))
  draws = draws_of(s.saved, 1, s.fixture, s.model.config)
  one_step = s.model.iterations[True](s.state, s.batch, draws)["state"]
  assert_differs(f"{name} forward, one more step", forward_fractions(s, one_step))


@pytest.mark.parametrize("name", CONVERGED)
def test_iterations_match_the_authors(name):
  """With D's u converged, AUTHORS_MODEL is their model: both iterations match."""
  run_iterations(setup(name), name)


def d_gradients(values: dict[str, float]) -> dict[str, float]:
  """D's gradients as a fraction of RTOL_MOMENTS, not RTOL_KINK: from a random u, a sigma
  differentiated at its own call's u, v puts them 1.8e-3 off, inside RTOL_KINK."""
  return {"grad/disc_x (RTOL_MOMENTS)":
          values["grad/disc_x"] * BOUNDS["grad"] / tolerances.RTOL_MOMENTS}


def test_random_u_matches_with_authors_exact():
  """From a random u, their five D calls normalise with five different estimates, and D's
  backward differentiates every sigma at the last call's u, v: only AUTHORS_EXACT ('per_term'
  calls, one power-iteration step each, spectral_backward='last_call') computes that."""
  s = setup("mnist_mixup_random_u", "authors_exact")
  assert_matches("mnist_mixup_random_u (authors_exact) forward", forward_fractions(s, s.state))
  draws = draws_of(s.saved, 1, s.fixture, s.model.config)
  values, _ = iteration_fractions(s, 1, s.state, draws)
  assert any(k.startswith("loss/d_") for k in values) and "spectral/u" in values
  assert_matches("mnist_mixup_random_u (authors_exact) iteration 1", values | d_gradients(values))
  assert_differs("mnist_mixup_random_u (authors_exact) iteration 1, another draw",
                 iteration_fractions(s, 1, s.state, other_draws(draws))[0])


def test_random_u_differs_with_own_call_backward():
  """The negative control of spectral_backward='last_call': with each call's sigma
  differentiated at its own u, v (Flax's SpectralNorm), D's gradients miss theirs."""
  s = setup("mnist_mixup_random_u", "authors_exact", spectral_backward="own_call")
  draws = draws_of(s.saved, 1, s.fixture, s.model.config)
  values, _ = iteration_fractions(s, 1, s.state, draws)
  assert_differs("mnist_mixup_random_u (authors_exact, own_call) iteration 1, D's gradients",
                 d_gradients(values))


def test_random_u_differs_with_authors_model():
  """The measured negative control of AUTHORS_EXACT: AUTHORS_MODEL's batched D (five power-
  iteration steps in one forward) misses their D terms from a random u."""
  s = setup("mnist_mixup_random_u", "authors")
  draws = draws_of(s.saved, 1, s.fixture, s.model.config)
  values, _ = iteration_fractions(s, 1, s.state, draws)
  d_terms = {k: v for k, v in values.items() if k.startswith("loss/d_")}
  assert_differs("mnist_mixup_random_u (authors) iteration 1, D's terms", d_terms)
  report("mnist_mixup_random_u (authors) iteration 1, all checks", values)
