"""Records the authors' PyTorch code on two iterations per method: the parity tests' fixtures.

Runs in the torch venv (../shared/reference/README.md), never beside a JAX process, from the
repository's root:

  flock -x /tmp/torch_vs_jax.lock /tmp/torch-ref/bin/python experiments/parity/record_authors.py

(``--reference DIR``: the folder holding ``_authors.py`` and ``amr_pytorch/``, default
``../shared/reference``; ``--only NAME ...``: some fixtures.) It writes
``tests/fixtures/authors/NAME.npz`` for every entry of ``tests.authors_fixtures.FIXTURES``.

For each one it builds the authors' model as their ``task_launcher.py`` does with the method's
``exps/`` flags (``_authors.py``'s import, with its two run-time patches), sets the initial
weights from numpy seeds (``authors_fixtures.authors_weights``: only outputs are stored, the test
makes the same weights), D's spectral-norm ``u``/``v`` either converged (their own power
iteration run 1,000 times) or as drawn, a batch of 8 (``authors_batch``), and the optimisers'
state of a run in mid-training: Adam's moments from numpy seeds (``authors_fixtures.adam_moments``)
at each tensor's gradient scale (the RMS of its gradient in a G-step iteration of a throwaway copy
of the model, stored as ``adam_scale/NET``), step counts ``authors_fixtures.ADAM_STEPS``, loaded
with ``load_state_dict`` (from zero moments Adam's first step is ~sign(g): a component rounding
leaves near 0 would flip a whole lr-sized update). Then, with their
code unchanged (only observed: ``torch.randperm``, the model's ``sampler`` and ``gan_loss_fn``
are wrapped to record what they return, each optimiser's ``step`` to read the gradients and the
state right after it):

- ``forward/*``: at the initial weights, the codes, decoded images, D's logits (the mean of its
  last conv's output, taken by a hook before their sigmoid) and probabilities on the batch and
  on its reconstructions (each from the initial ``u``, one power iteration as their forward
  does), the probe's logits.
- ``iter1/*`` (``iter=1``: G steps) and ``iter2/*`` (``iter=2``: D and the probe only), each
  from ``train_on_instance``: the draws (``draws/permutations`` (k-1, B), ``draws/sampler``: what
  their sampler returned), every loss term (their returned dict, and each call of their GAN loss
  named by ``authors_fixtures.GAN_CALLS``), the decoded reconstructions and mixes, each stepped
  network's gradients, every tensor of the three state dicts after the iteration, Adam's
  ``exp_avg``, ``exp_avg_sq`` and ``step`` by parameter name, and D's ``u``, ``v`` (in full).
- ``meta``: JSON: the fixture's row, the state dicts' names and shapes in order, torch's version.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from importlib import import_module

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests import authors_fixtures as fx  # noqa: E402  pylint: disable=g-import-not-at-top

CONVERGE_ITERATIONS = 1000
OPT_ARGS = {"lr": 1e-4, "betas": (0.5, 0.99), "weight_decay": 1e-5}  # every exps/ script


def build(authors, torch, fixture: fx.Fixture):
  """The authors' model as task_launcher.py builds it from the fixture's flags."""
  from models.acai_f3 import ACAIF3  # pylint: disable=g-import-not-at-top
  from models.kgan import KGAN
  from models.threegan import ThreeGAN
  from models.twogan import TwoGAN
  module, image_channels, code = authors.ARCHS[fixture.arch]
  nets = import_module(module).get_network(n_channels=image_channels, ngf=0, ndf=0,
                                           n_classes=0)
  probe = import_module("architectures.cls_probes.linear_legacy").get_network(
      n_in=code, n_classes=10)
  classes = {"swapgan": TwoGAN, "threegan": ThreeGAN, "acaif3": ACAIF3}
  if fixture.authors_model == "kgan":
    gan_class = lambda **kw: KGAN(k=fixture.k, **kw)
  else:
    gan_class = classes[fixture.authors_model]
  gan = gan_class(generator=nets["gen"], disc_x=nets["disc_x"], class_mixer=nets["class_mixer"],
                  lamb=fixture.lamb, beta=0.0, cls=0.0, mixer=fixture.mixer, sigma=0.0,
                  recon_loss="l1", cls_loss="bce", gan_loss="bce",
                  disable_mix=fixture.disable_mix, disable_g_recon=False, cls_enc=probe,
                  opt_args=dict(OPT_ARGS), update_g_every=5, cls_enc_weight_decay=0,
                  cls_enc_weight=1, cls_enc_backprop_grads=False, handlers=[])
  gan.eps = 1e-8
  assert not gan.use_cuda
  del torch
  return gan


def networks(gan):
  return {"g": gan.generator, "disc_x": gan.disc_x, "cls_enc": gan.cls_enc}


def spectral_modules(gan):
  # pylint: disable-next=g-import-not-at-top
  from architectures.shared.spectral_normalization import SpectralNorm
  return {name: m for name, m in gan.disc_x.named_modules() if isinstance(m, SpectralNorm)}


def names_and_shapes(gan) -> dict[str, dict[str, tuple[int, ...]]]:
  return {net: {k: tuple(v.shape) for k, v in module.state_dict().items()}
          for net, module in networks(gan).items()}


def set_weights(torch, gan, weights) -> None:
  for net, module in networks(gan).items():
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights[net].items()},
                           strict=True)


class Recorder:
  """Observes one iteration: what their random calls, loss calls and optimisers saw."""

  def __init__(self, torch, gan):
    self.torch, self.gan = torch, gan
    self.permutations, self.sampler_out, self.gan_losses, self.grads = [], [], [], {}
    self._randperm = torch.randperm
    sampler, loss_fn = gan.sampler, gan.gan_loss_fn

    def randperm(*args, **kwargs):
      out = self._randperm(*args, **kwargs)
      self.permutations.append(out.numpy().copy())
      return out

    def recording_sampler(*args, **kwargs):
      out = sampler(*args, **kwargs)
      self.sampler_out.append(out.detach().numpy().copy())
      return out

    def recording_loss(*args, **kwargs):
      out = loss_fn(*args, **kwargs)
      self.gan_losses.append(float(out.item()))
      return out

    self._wrapped = (randperm, recording_sampler, recording_loss)
    self._original = (sampler, loss_fn)
    for net, optimiser in gan.optim.items():
      module = networks(gan)[net]
      params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
      step = optimiser.step

      def recording_step(*args, _step=step, _net=net, _params=params, **kwargs):
        out = _step(*args, **kwargs)
        self.grads[_net] = {n: p.grad.detach().numpy().copy() for n, p in _params}
        return out

      optimiser.step = recording_step

  def __enter__(self):
    self.torch.randperm = self._wrapped[0]
    self.gan.sampler, self.gan.gan_loss_fn = self._wrapped[1:]
    return self

  def __exit__(self, *exc):
    self.torch.randperm = self._randperm
    self.gan.sampler, self.gan.gan_loss_fn = self._original
    for optimiser in self.gan.optim.values():
      del optimiser.step  # the instance attribute; the class's step again


def adam_state(gan, nets: dict | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """``{net: {name: {'exp_avg', 'exp_avg_sq', 'step'}}}`` from each optimiser's state_dict;
  ``nets`` (name -> module) defaults to this recorder's :func:`networks`."""
  nets = networks(gan) if nets is None else nets
  out = {}
  for net, optimiser in gan.optim.items():
    module = nets[net]
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    state = optimiser.state_dict()
    assert state["param_groups"][0]["params"] == list(range(len(names)))
    out[net] = {names[i]: {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                           for k, v in s.items()} for i, s in state["state"].items()}
  return out


def record_forward(torch, gan, x) -> dict[str, np.ndarray]:
  """Forward outputs at the current weights; D's state is left as it was."""
  out = {}
  with torch.no_grad():
    enc = gan.generator.encode(x)
    dec = gan.generator.decode(enc)
    out.update(fx.pack("forward/codes", "forward/codes", enc.numpy()))
    out.update(fx.pack("forward/decoded", "forward/decoded", dec.numpy()))
    out["forward/probe_logits"] = gan.cls_enc(enc.view(-1, gan.cls_enc.n_in)).numpy()
    initial = {k: v.clone() for k, v in gan.disc_x.state_dict().items()}
    for label, images in (("real", x), ("rec", dec)):
      seen = {}
      hook = gan.disc_x.encoder.register_forward_hook(
          lambda m, i, o: seen.setdefault("out", o))
      prob, _ = gan.disc_x(images)
      hook.remove()
      gan.disc_x.load_state_dict(initial)  # each call from the initial u: one power iteration
      out[f"forward/d_logits_{label}"] = seen["out"].reshape(len(images), -1).mean(-1).numpy()
      out[f"forward/d_prob_{label}"] = prob.numpy()
  return out


def record_state(prefix: str, grads: dict, nets: dict, adam: dict) -> dict[str, np.ndarray]:
  """Gradients, every state-dict tensor of ``nets`` (name -> module) and Adam's state ``adam``
  (:func:`adam_state`) after an iteration, packed under ``prefix``."""
  out = {}
  for net, net_grads in grads.items():
    for name, value in net_grads.items():
      out.update(fx.pack(f"{prefix}/grad/{net}/{name}", f"{net}/{name}", value))
  for net, module in nets.items():
    for name, value in module.state_dict().items():
      if name.endswith(("weight_u", "weight_v")):
        out[f"{prefix}/spectral/{name}"] = value.numpy().copy()
      else:
        out.update(fx.pack(f"{prefix}/param/{net}/{name}", f"{net}/{name}", value.numpy()))
  for net, state in adam.items():
    steps = {int(s["step"]) for s in state.values()}
    assert len(steps) == 1, steps
    out[f"{prefix}/adam_step/{net}"] = np.asarray(steps.pop(), np.int64)
    for name, s in state.items():
      for moment in ("exp_avg", "exp_avg_sq"):
        out.update(fx.pack(f"{prefix}/{moment}/{net}/{name}", f"{net}/{name}", s[moment]))
  return out


def record_iteration(torch, gan, fixture, x, y, iteration: int) -> dict[str, np.ndarray]:
  prefix = f"iter{iteration}"
  torch.manual_seed(1000 * fixture.seed + iteration)
  np.random.seed(1000 * fixture.seed + iteration)
  with Recorder(torch, gan) as rec:
    losses, outputs = gan.train_on_instance(torch.from_numpy(x), torch.from_numpy(y),
                                            iter=iteration)
  out = {f"{prefix}/draws/permutations": np.stack(rec.permutations).astype(np.int32),
         f"{prefix}/draws/sampler": np.asarray(rec.sampler_out[0], np.float32)}
  assert len(rec.sampler_out) == 1, len(rec.sampler_out)
  calls = fx.gan_calls(fixture)
  assert len(rec.gan_losses) == len(calls), (rec.gan_losses, calls)
  for name, value in zip(calls, rec.gan_losses):
    out[f"{prefix}/loss/{name}"] = np.asarray(value)
  for name, value in losses.items():
    out[f"{prefix}/returned/{name}"] = np.asarray(value)
  for name in ("recon", "mix"):
    out.update(fx.pack(f"{prefix}/images/{name}", f"images/{name}",
                       outputs[name].detach().numpy()))
  out.update(record_state(prefix, rec.grads, networks(gan), adam_state(gan)))
  return out


def initial_model(authors, torch, fixture: fx.Fixture):
  """Their model at the fixture's initial weights and D's initial u, v; fresh optimisers."""
  gan = build(authors, torch, fixture)
  set_weights(torch, gan, fx.authors_weights(names_and_shapes(gan), fixture.seed))
  if fixture.spectral_u == "converged":
    for module in spectral_modules(gan).values():
      for _ in range(CONVERGE_ITERATIONS):
        module._update_u_v()  # pylint: disable=protected-access
  return gan


def gradient_scales(authors, torch, fixture: fx.Fixture, x, y) -> dict[str, np.ndarray]:
  """``{net: (n,)}``: the RMS of each trainable tensor's gradient (float32, in
  ``fx.trainable_names`` order) in a G-step iteration of a throwaway copy of the model."""
  gan = initial_model(authors, torch, fixture)
  torch.manual_seed(1000 * fixture.seed)
  np.random.seed(1000 * fixture.seed)
  with Recorder(torch, gan) as rec:
    gan.train_on_instance(torch.from_numpy(x), torch.from_numpy(y), iter=1)
  names = names_and_shapes(gan)
  return {net: np.asarray([np.sqrt(np.mean(np.square(rec.grads[net][n], dtype=np.float64)))
                           for n in fx.trainable_names(names, net)], np.float32)
          for net in fx.NETS}


def set_adam_state(torch, gan, moments) -> None:
  """Loads ``moments`` (``fx.adam_moments``) and ``fx.ADAM_STEPS`` into their optimisers."""
  for net, optimiser in gan.optim.items():
    names = [n for n, p in networks(gan)[net].named_parameters() if p.requires_grad]
    assert names == list(moments[net]), (net, names, list(moments[net]))
    state = optimiser.state_dict()
    state["state"] = {
        i: {"step": torch.tensor(float(fx.ADAM_STEPS[net])),
            "exp_avg": torch.from_numpy(moments[net][n][0].copy()),
            "exp_avg_sq": torch.from_numpy(moments[net][n][1].copy())}
        for i, n in enumerate(names)}
    optimiser.load_state_dict(state)


def record(authors, torch, name: str, fixture: fx.Fixture) -> dict[str, np.ndarray]:
  x, y = fx.authors_batch(fixture.seed, fx.channels(fixture))
  scales = gradient_scales(authors, torch, fixture, x, y)
  gan = initial_model(authors, torch, fixture)
  names = names_and_shapes(gan)
  set_adam_state(torch, gan, fx.adam_moments(names, scales, fixture.seed))
  out = {f"adam_scale/{net}": value for net, value in scales.items()}
  for key, value in gan.disc_x.state_dict().items():
    if key.endswith(("weight_u", "weight_v")):
      out[f"init/spectral/{key}"] = value.numpy().copy()
  out.update(record_forward(torch, gan, torch.from_numpy(x)))
  for iteration in (1, 2):
    out.update(record_iteration(torch, gan, fixture, x, y, iteration))
  meta = {"fixture": name, **dataclasses.asdict(fixture), "torch": torch.__version__,
          "names": {net: [[k, list(s)] for k, s in t.items()] for net, t in names.items()},
          "gan_calls": list(fx.gan_calls(fixture))}
  out["meta"] = np.asarray(json.dumps(meta))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reference", default=str(ROOT.parent / "shared" / "reference"))
  parser.add_argument("--only", nargs="*", default=sorted(fx.FIXTURES))
  args = parser.parse_args()
  sys.path.insert(0, args.reference)
  authors = import_module("_authors")  # their code on sys.path, with its two patches
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  fx.FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
  for name in args.only:
    out = record(authors, torch, name, fx.FIXTURES[name])
    path = fx.FIXTURE_DIR / f"{name}.npz"
    fx.save(path, out)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB, {len(out)} entries")


if __name__ == "__main__":
  main()
