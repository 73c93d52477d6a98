"""Records the authors' PyTorch code on their dSprites models: the dSprites parity fixtures.

Their dSprites nets are konny's (``architectures/konny/model.py`` of christopher-beckham/amr,
public), which ../shared/reference does not hold; nor their beta-VAE's arch file. Fetch both,
unchanged, from https://github.com/christopher-beckham/amr (``architectures/konny/model.py`` and
``architectures/arch_dsprite_burgess-g_kyle_d_vae.py``) into a folder OUTSIDE the project:

  EXTRA/architectures/konny/model.py
  EXTRA/architectures/arch_dsprite_burgess-g_kyle_d_vae.py

(default EXTRA /tmp/authors_extra, or ``--extra``; their ``architectures`` has no ``__init__.py``,
so this folder and the reference's merge into one namespace package and their ``from
.konny.model import ...`` works). Never commit them. Then, from the repository's root, in the
torch venv (../shared/reference/README.md), never beside a JAX process:

  flock -x /tmp/torch_vs_jax.lock /tmp/torch-ref/bin/python \\
      experiments/parity/record_authors_dsprites.py

(``--only NAME ...``: some fixtures). It writes ``tests/fixtures/authors/NAME.npz`` for every
entry of ``tests.authors_fixtures_dsprites.FIXTURES``, in ``tests.authors_fixtures``' format.

Their models as task_launcher.py builds them from the exps/dsprite/ flags: ``vae`` on
``arch_dsprite_burgess-g_kyle_d_vae.py`` (bvae_beta100.sh: BCE summed over pixels / batch, beta
100, lamb 1, Adam (0.9, 0.99), no weight decay) and ``swapgan`` on ``dsprite_gd.py``
(mixup_lamb1.sh: mixup, bce_sum, lamb 1, Adam (0.5, 0.99), G every 5). Initial weights from numpy
seeds (``authors_fixtures_dsprites.authors_weights``), D's u, v converged (the top singular
pair) or as drawn (the fixture's ``spectral_u``), a batch of 8 binary
images (``authors_batch``). One run-time change beyond ``_authors.py``'s two patches: torch's
distribution argument validation is off (torch >= 1.8 checks a Normal's scale > 0; their torch
1.0 did not, and their VAE's scale is an unconstrained encoder output). Their code is otherwise
unchanged, only observed: ``torch.distributions.normal._standard_normal`` (the VAE's rsample
noise: the posterior's, then the prior's), and as in record_authors.py ``torch.randperm``, the
sampler, the GAN loss and each optimiser's ``step``.

- ``forward/*``: at the initial weights, the encoder's output, the images decoded from the code
  (the VAE: from the mean), and (swapgan) D's logit on the batch and on its reconstructions
  (their last Linear's output, before the Sigmoid; one power-iteration step from the initial u).
- ``iter1/*`` (G steps), ``iter2/*`` (the VAE: G steps again, as it does every iteration;
  swapgan: D only): the draws, their returned losses, the decoded images, the gradients of each
  stepped network, every tensor of the state dicts after the iteration, Adam's moments and step.
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
# pylint: disable=g-import-not-at-top
from experiments.parity import record_authors as recorder  # noqa: E402
from tests import authors_fixtures as fx  # noqa: E402
from tests import authors_fixtures_dsprites as dfx  # noqa: E402
# pylint: enable=g-import-not-at-top

# swapgan's GAN-loss calls in one iteration, in their order (G's terms, then D's).
GAN_CALLS = ("disc_g_recon", "disc_g_mix", "d_real", "d_rec", "d_mix")


def build(fixture: dfx.Fixture):
  """The authors' model as task_launcher.py builds it from the fixture's flags."""
  opt_args = {"lr": 1e-4, "betas": fixture.betas, "weight_decay": 0.0}
  if fixture.authors_model == "vae":
    from models.vae import VAE  # pylint: disable=g-import-not-at-top
    nets = import_module("architectures.arch_dsprite_burgess-g_kyle_d_vae").get_network(
        n_channels=1, ndf=16)
    return VAE(generator=nets["gen"], lamb=fixture.lamb, beta=fixture.beta,
               recon_loss=fixture.recon_loss, opt_args=opt_args, handlers=[])
  from models.twogan import TwoGAN  # pylint: disable=g-import-not-at-top
  nets = import_module("architectures.dsprite_gd").get_network(n_channels=1, ndf=32)
  gan = TwoGAN(generator=nets["gen"], disc_x=nets["disc_x"], class_mixer=None, lamb=fixture.lamb,
               beta=fixture.beta, cls=0.0, mixer="mixup", sigma=0.0,
               recon_loss=fixture.recon_loss, cls_loss="bce", gan_loss="bce", disable_mix=False,
               disable_g_recon=False, cls_enc=None, opt_args=opt_args, update_g_every=5,
               cls_enc_weight_decay=0.0, cls_enc_weight=1.0, cls_enc_backprop_grads=False,
               handlers=[])
  gan.eps = 1e-8
  return gan


def networks(gan) -> dict:
  """The networks their save() writes (no probe, no D for the VAE)."""
  out = {"g": gan.generator}
  if hasattr(gan, "disc_x"):
    out["disc_x"] = gan.disc_x
  return out


class NoiseRecorder:
  """Records what torch's Normal.rsample draws (the VAE's posterior, then prior noise)."""

  def __init__(self, torch):
    self.module = import_module("torch.distributions.normal")
    self.noise = []
    self._original = self.module._standard_normal  # pylint: disable=protected-access
    del torch

  def __enter__(self):
    def recording(*args, **kwargs):
      out = self._original(*args, **kwargs)
      self.noise.append(out.numpy().copy())
      return out
    self.module._standard_normal = recording  # pylint: disable=protected-access
    return self

  def __exit__(self, *exc):
    self.module._standard_normal = self._original  # pylint: disable=protected-access


class StepRecorder:
  """Records each optimiser's gradients right before its step (their VAE has no sampler or GAN
  loss to observe, so record_authors.Recorder does not apply)."""

  def __init__(self, gan):
    self.gan, self.grads = gan, {}

  def __enter__(self):
    for net, optimiser in self.gan.optim.items():
      params = [(n, p) for n, p in networks(self.gan)[net].named_parameters() if p.requires_grad]
      step = optimiser.step

      def recording_step(*args, _step=step, _net=net, _params=params, **kwargs):
        self.grads[_net] = {n: p.grad.detach().numpy().copy() for n, p in _params}
        return _step(*args, **kwargs)

      optimiser.step = recording_step
    return self

  def __exit__(self, *exc):
    for optimiser in self.gan.optim.values():
      del optimiser.step


def record_forward(torch, gan, x) -> dict[str, np.ndarray]:
  out = {}
  with torch.no_grad():
    enc = gan.generator.encode(x)
    dec = gan.generator.decode(enc[:, :dfx.LATENT_DIM])
  out["forward/codes"] = enc.numpy()
  out.update(fx.pack("forward/decoded", "forward/decoded", dec.numpy()))
  if "disc_x" in networks(gan):
    initial = {k: v.clone() for k, v in gan.disc_x.state_dict().items()}
    for label, images in (("real", x), ("rec", dec)):
      seen = {}
      hook = gan.disc_x.encoder[13].register_forward_hook(
          lambda m, i, o, seen=seen: seen.setdefault("out", o))
      with torch.no_grad():
        gan.disc_x(images)
      hook.remove()
      gan.disc_x.load_state_dict(initial)  # each call from the initial u
      out[f"forward/d_logits_{label}"] = seen["out"][:, 0].numpy()
  return out


def record_iteration(torch, gan, fixture, x, iteration: int) -> dict[str, np.ndarray]:
  prefix = f"iter{iteration}"
  torch.manual_seed(1000 * fixture.seed + iteration)
  np.random.seed(1000 * fixture.seed + iteration)
  y = torch.zeros(len(x), 1)
  out = {}
  if fixture.authors_model == "vae":
    with NoiseRecorder(torch) as noise, StepRecorder(gan) as steps:
      losses, outputs = gan.train_on_instance(torch.from_numpy(x), y, iter=iteration)
    assert len(noise.noise) == 2, len(noise.noise)
    out[f"{prefix}/draws/noise"] = noise.noise[0].astype(np.float32)
    out[f"{prefix}/draws/prior_noise"] = noise.noise[1].astype(np.float32)
    grads, images = steps.grads, ("recon", "sample")
  else:
    with recorder.Recorder(torch, gan) as rec:
      losses, outputs = gan.train_on_instance(torch.from_numpy(x), y, iter=iteration)
    assert len(rec.sampler_out) == 1 and len(rec.gan_losses) == len(GAN_CALLS)
    out[f"{prefix}/draws/permutations"] = np.stack(rec.permutations).astype(np.int32)
    out[f"{prefix}/draws/sampler"] = np.asarray(rec.sampler_out[0], np.float32)
    for name, value in zip(GAN_CALLS, rec.gan_losses):
      out[f"{prefix}/loss/{name}"] = np.asarray(value)
    grads, images = rec.grads, ("recon", "mix")
  for name, value in losses.items():
    out[f"{prefix}/returned/{name}"] = np.asarray(value)
  for name in images:
    out.update(fx.pack(f"{prefix}/images/{name}", f"images/{name}",
                       outputs[name].detach().numpy()))
  nets = networks(gan)
  out.update(recorder.record_state(prefix, grads, nets, recorder.adam_state(gan, nets)))
  return out


def record(torch, name: str, fixture: dfx.Fixture) -> dict[str, np.ndarray]:
  gan = build(fixture)
  names = {net: {k: tuple(v.shape) for k, v in module.state_dict().items()}
           for net, module in networks(gan).items()}
  weights = dfx.authors_weights(names, fixture.seed, fixture.spectral_u)
  for net, module in networks(gan).items():
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights[net].items()},
                           strict=True)
  x = dfx.authors_batch(fixture.seed)
  out = record_forward(torch, gan, torch.from_numpy(x))
  for iteration in (1, 2):
    out.update(record_iteration(torch, gan, fixture, x, iteration))
  meta = {"fixture": name, **dataclasses.asdict(fixture), "torch": torch.__version__,
          "names": {net: [[k, list(s)] for k, s in t.items()] for net, t in names.items()}}
  out["meta"] = np.asarray(json.dumps(meta))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reference", default=str(ROOT.parent / "shared" / "reference"))
  parser.add_argument("--extra", default="/tmp/authors_extra")
  parser.add_argument("--only", nargs="*", default=sorted(dfx.FIXTURES))
  args = parser.parse_args()
  konny = pathlib.Path(args.extra) / "architectures" / "konny" / "model.py"
  if not konny.exists():
    raise SystemExit(f"no {konny}: fetch konny's model.py (see this script's docstring)")
  sys.path.insert(0, args.reference)
  import_module("_authors")  # their code on sys.path, with its two patches
  sys.path.insert(1, str(pathlib.Path(args.extra).resolve()))
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  torch.distributions.Distribution.set_default_validate_args(False)  # as their torch 1.0
  fx.FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
  for name in args.only:
    out = record(torch, name, dfx.FIXTURES[name])
    path = fx.FIXTURE_DIR / f"{name}.npz"
    fx.save(path, out)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB, {len(out)} entries")


if __name__ == "__main__":
  main()
