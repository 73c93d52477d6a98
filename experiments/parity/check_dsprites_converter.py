"""Checks amr_jax.from_authors on the authors' dSprites nets: same outputs after conversion.

Their dSprites nets are konny's (``architectures/konny/model.py`` of christopher-beckham/amr),
which ../shared/reference does not hold. Fetch that file (and, for the beta-VAE's arch,
``architectures/arch_dsprite_burgess-g_kyle_d_vae.py``) from the public repository unchanged into
a folder OUTSIDE the project, as ``EXTRA/architectures/konny/model.py`` and
``EXTRA/architectures/arch_dsprite_burgess-g_kyle_d_vae.py`` (default EXTRA: /tmp/authors_extra;
``architectures`` has no ``__init__.py`` in their code, so the two folders merge into one
namespace package). Never commit them. Then, two processes, never at the same time:

  flock -x /tmp/torch_vs_jax.lock /tmp/torch-ref/bin/python \\
      experiments/parity/check_dsprites_converter.py torch /tmp/dsprites_converter_check
  flock -s /tmp/torch_vs_jax.lock python -m experiments.parity.check_dsprites_converter jax \\
      /tmp/dsprites_converter_check

The torch part builds their models as task_launcher.py does for exps/dsprite/mixup_lamb1.sh
(swapgan on dsprite_gd.py, mixup, bce_sum, lamb 1) and bvae_beta100.sh (vae, bce, beta 100),
trains each for 3 iterations on random binary 64x64 images (Adam's moments and D's u, v move off
their initial values), saves it with their own ``save()``, then records on a fixed batch their
codes, the images decoded from the codes (their Tanh output), D's logit (the last Linear's
output, before their Sigmoid) in eval mode (stored u, v) and in train mode (one power-iteration
step, as amr_jax's ``update_stats=True``).

The JAX part reads each file with ``amr_jax.torch_checkpoint``, converts it with
``from_authors.to_train_state`` under ``arch.decoder_logit_scale`` 2 and 1 (the authors' decoder
as it is, and amr_jax's default with the last layer doubled), and prints one JSON line per model
and scale: the relative L2 difference of each output (images through ``to_image``), and whether
``to_authors`` gives every saved tensor back (``weight_v`` aside, not kept).
"""
import json
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_REFERENCE = os.path.join(_ROOT, "..", "shared", "reference")
_EXTRA = os.environ.get("AUTHORS_EXTRA", "/tmp/authors_extra")
BATCH = 8
# name: (amr_jax dsprites.py variant, with the options the converter needs)
MODELS = {"mixup": "mixup", "beta_vae": "beta_vae"}


def binary_images(rng: np.random.RandomState, count: int) -> np.ndarray:
  """``count`` NCHW 64x64 images in {-1, 1}: a random rectangle each, as dSprites' shapes are."""
  x = -np.ones((count, 1, 64, 64), np.float32)
  for image in x:
    top, left = rng.randint(4, 40, size=2)
    height, width = rng.randint(6, 20, size=2)
    image[0, top:top + height, left:left + width] = 1.0
  return x


def build_authors(torch, name: str):
  """Their model for ``name`` as task_launcher.py builds it from the exps/dsprite/ flags."""
  import importlib  # pylint: disable=g-import-not-at-top
  if name == "beta_vae":
    from models.vae import VAE  # pylint: disable=g-import-not-at-top
    nets = importlib.import_module("architectures.arch_dsprite_burgess-g_kyle_d_vae").get_network(
        n_channels=1, ndf=16)
    return VAE(generator=nets["gen"], lamb=1.0, beta=100.0, recon_loss="bce",
               opt_args={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}, handlers=[])
  from models.twogan import TwoGAN  # pylint: disable=g-import-not-at-top
  nets = importlib.import_module("architectures.dsprite_gd").get_network(n_channels=1, ndf=32)
  del torch
  return TwoGAN(generator=nets["gen"], disc_x=nets["disc_x"], class_mixer=None, lamb=1.0,
                beta=0.0, cls=0.0, mixer="mixup", sigma=0.0, recon_loss="bce_sum",
                cls_loss="bce", gan_loss="bce", disable_mix=False, disable_g_recon=False,
                cls_enc=None, opt_args={"lr": 1e-4, "betas": (0.5, 0.99), "weight_decay": 0.0},
                update_g_every=5, cls_enc_weight_decay=0.0, cls_enc_weight=1.0,
                cls_enc_backprop_grads=False, handlers=[])


def authors_path(extra: str = _EXTRA) -> None:
  """Their code on sys.path (``_authors``: the reference and its two run-time patches) and the
  fetched konny module beside it; torch >= 1.8's argument validation off, as their torch 1.0 had
  none (their VAE's Normal takes a scale of either sign)."""
  if not os.path.exists(os.path.join(extra, "architectures", "konny", "model.py")):
    raise SystemExit(f"no {extra}/architectures/konny/model.py: fetch it (see the docstring)")
  sys.path.insert(0, os.path.abspath(_REFERENCE))
  import _authors  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  sys.path.insert(1, os.path.abspath(extra))
  import torch  # pylint: disable=g-import-not-at-top
  torch.distributions.Distribution.set_default_validate_args(False)


def run_torch(out_dir: str) -> None:
  authors_path()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  os.makedirs(out_dir, exist_ok=True)
  rng = np.random.RandomState(0)
  for name in MODELS:
    torch.manual_seed(0)
    np.random.seed(0)
    gan = build_authors(torch, name)
    for i in range(3):  # G steps on iteration 1 (the VAE's on each): every network has moments
      x = torch.from_numpy(binary_images(rng, 16))
      gan.train_on_instance(x, torch.zeros(16, 1), iter=i + 1)
    gan.save(os.path.join(out_dir, f"{name}.pt"), epoch=3)
    x = torch.from_numpy(binary_images(rng, BATCH))
    out = {"x": x.numpy()}
    with torch.no_grad():
      codes = gan.generator.encode(x)
      out["codes"] = codes.numpy()
      out["decoded"] = gan.generator.decode(codes[:, :10]).numpy()
    if name != "beta_vae":
      last = gan.disc_x.encoder[13]
      for mode in ("eval", "train"):
        state = {k: v.clone() for k, v in gan.disc_x.state_dict().items()}
        getattr(gan.disc_x, mode)()
        seen = {}
        hook = last.register_forward_hook(lambda m, i, o, seen=seen: seen.setdefault("o", o))
        with torch.no_grad():
          gan.disc_x(x)
        hook.remove()
        gan.disc_x.load_state_dict(state)
        out[f"d_logit_{mode}"] = seen["o"][:, 0].numpy()
    np.savez(os.path.join(out_dir, f"{name}_outputs.npz"), **out)
  print(f"wrote {sorted(os.listdir(out_dir))}", flush=True)


def _rel(actual, desired) -> float:
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  return float(np.linalg.norm(actual - desired) / np.linalg.norm(desired))


def amr_config(variant: str, decoder_logit_scale: float = 2.0):
  """dsprites.py's row with the fields the authors' model needs (amr_jax.from_authors)."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module("experiments.configs.dsprites").get_config(variant)
  config.arch.decoder_logit_scale = decoder_logit_scale
  if variant == "beta_vae":
    config.vae_scale = "std"
  return config


def run_jax(out_dir: str) -> None:
  from amr_jax import from_authors  # pylint: disable=g-import-not-at-top
  from amr_jax import torch_checkpoint  # pylint: disable=g-import-not-at-top
  from amr_jax import model  # pylint: disable=g-import-not-at-top
  for name, variant in MODELS.items():
    saved = torch_checkpoint.load(os.path.join(out_dir, f"{name}.pt"))
    out = np.load(os.path.join(out_dir, f"{name}_outputs.npz"))
    x = out["x"].transpose(0, 2, 3, 1)
    for scale in (2.0, 1.0):
      config = amr_config(variant, scale)
      state = from_authors.to_train_state(config, saved)
      nets = from_authors._networks(config)  # pylint: disable=protected-access
      back = from_authors.to_authors(config, state)
      dropped = from_authors.not_kept(config)
      round_trip = all(
          np.array_equal(np.asarray(back[net][k]), np.asarray(v, np.float32))
          for net in from_authors.authors_names(config) for k, v in saved[net].items()
          if k not in dropped.get(net, ())) and all(
              np.array_equal(np.asarray(back[f"optim_{net}"]["state"][i][m]),
                             np.asarray(saved[f"optim_{net}"]["state"][i][m]))
              for net in from_authors.authors_names(config)
              for i in saved[f"optim_{net}"]["state"] for m in ("exp_avg", "exp_avg_sq"))
      codes = nets.encoder.apply({"params": state.generator["encoder"]}, x)
      decoded = model.to_image(nets.decoder.apply({"params": state.generator["decoder"]},
                                                  out["codes"][:, :10]), "bce")
      line = {"model": name, "decoder_logit_scale": scale, "step": int(state.step),
              "codes": _rel(codes, out["codes"]),
              "decoded": _rel(decoded, out["decoded"].transpose(0, 2, 3, 1)),
              "to_authors_round_trip": round_trip}
      if name != "beta_vae":
        variables = {"params": state.discriminator, "spectral": state.spectral}
        line["d_logit_eval"] = _rel(nets.discriminator.apply(variables, x, update_stats=False),
                                    out["d_logit_eval"])
        line["d_logit_train"] = _rel(nets.discriminator.apply(
            variables, x, update_stats=True, mutable=["spectral"])[0], out["d_logit_train"])
      print(json.dumps(line), flush=True)


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] not in ("torch", "jax"):
    raise SystemExit("usage: check_dsprites_converter.py torch|jax OUT_DIR")
  (run_torch if sys.argv[1] == "torch" else run_jax)(sys.argv[2])
