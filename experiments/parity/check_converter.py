"""Checks amr_jax.from_authors against the authors' own networks: same outputs after conversion.

Two processes, never at the same time (the torch part in the torch venv, see
../shared/reference/README.md; the JAX part in the project's Python):

  flock -x /tmp/torch_vs_jax.lock /tmp/torch-ref/bin/python \\
      experiments/parity/check_converter.py torch /tmp/converter_check
  flock -s /tmp/torch_vs_jax.lock python -m experiments.parity.check_converter jax \\
      /tmp/converter_check

The torch part builds the authors' MNIST dim-32 (1 channel) and SVHN dim-256 (3 channels) models
as their task_launcher does (TwoGAN, mixup; ../shared/reference/_authors.py), trains each for a
few iterations on random images (so that Adam's moments and the spectral-norm u, v are not their
initial values), saves it with their own ``save()`` in both torch file formats, then records on
a fixed batch: their codes, the images decoded from them, D's logit (the mean before their
sigmoid; their forward advances the power iteration once from the saved u, as amr_jax's does with
``arch.spectral_power_iterations=1``) and the probe's logits. For dim 32 it also saves, untrained,
their ThreeGAN, KGAN (k=3) and ACAIF3 models and the AE+GAN (``disable_mix``) one.

The JAX part reads each file with ``amr_jax.torch_checkpoint`` (no torch), converts it with
``from_authors.to_train_state`` under the row's ``authors`` config, and prints one JSON line per
model: the relative L2 difference ||amr_jax - authors|| / ||authors|| of each output, whether the
zip and legacy files gave the same state, and whether ``to_authors`` gives the saved tensors back.
"""
import json
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_REFERENCE = os.path.join(_ROOT, "..", "shared", "reference")
# name: (their architecture, amr_jax config file, config argument)
MODELS = {"mnist_dim32": ("mnist_dim32", "mnist", "mixup,authors"),
          "svhn_dim256": ("svhn_dim256", "svhn", "mixup,dim=256,authors")}
# Other models of theirs (dim 32, untrained): (their class, extra kwargs, amr_jax row).
OTHER_MODELS = {"threegan": ("models.threegan.ThreeGAN", {}, "mixup_k3,authors"),
                "kgan3": ("models.kgan.KGAN", {"k": 3}, "mixup_k3,authors"),
                "acaif3": ("models.acai_f3.ACAIF3", {}, "acai,authors"),
                "ae_gan": ("models.twogan.TwoGAN", {"disable_mix": True}, "ae_gan,authors"),
                "bernoulli": ("models.twogan.TwoGAN", {"mixer": "fm2"}, "bern,authors")}
BATCH = 8


def _save_both(gan, out_dir: str, name: str, torch) -> None:
  """Their ``save()`` twice: torch's default zip format, then the legacy one (torch 1.0-1.5)."""
  gan.save(os.path.join(out_dir, f"{name}_zip.pt"), epoch=3)
  save = torch.save
  torch.save = lambda obj, f: save(obj, f, _use_new_zipfile_serialization=False)
  try:
    gan.save(os.path.join(out_dir, f"{name}_legacy.pt"), epoch=3)
  finally:
    torch.save = save


def run_torch(out_dir: str) -> None:
  sys.path.insert(0, os.path.abspath(_REFERENCE))
  import importlib  # pylint: disable=g-import-not-at-top
  import _authors  # pylint: disable=g-import-not-at-top  (the torch venv)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  os.makedirs(out_dir, exist_ok=True)
  for name, (arch, _, _) in MODELS.items():
    torch.manual_seed(0)
    np.random.seed(0)
    gan, probe, channels, code = _authors.build(arch, g_every=2)
    for i in range(4):  # G steps on iterations 1 and 3 (g_every 2): every network has moments
      x = torch.rand(16, channels, 32, 32) * 2 - 1
      gan.train_on_instance(x, torch.eye(10)[torch.randint(0, 10, (16,))], iter=i + 1)
    _save_both(gan, out_dir, name, torch)
    x = torch.rand(BATCH, channels, 32, 32) * 2 - 1
    with torch.no_grad():
      codes = gan.generator.encode(x)
      decoded = gan.generator.decode(codes)
      d_logit = gan.disc_x.encoder(x).reshape(BATCH, -1).mean(-1)
      probe_logits = probe(codes.reshape(-1, code))
    np.savez(os.path.join(out_dir, f"{name}_outputs.npz"), x=x.numpy(), codes=codes.numpy(),
             decoded=decoded.numpy(), d_logit=d_logit.numpy(), probe_logits=probe_logits.numpy())
  for name, (cls_path, kwargs, _) in OTHER_MODELS.items():
    torch.manual_seed(1)
    module, _, cls_name = cls_path.rpartition(".")
    nets = importlib.import_module("architectures.arch_acai_kyle").get_network(n_channels=1)
    probe = importlib.import_module("architectures.cls_probes.linear_legacy").get_network(
        n_in=32, n_classes=10)
    args = dict(generator=nets["gen"], disc_x=nets["disc_x"], class_mixer=None, lamb=10.0,
                beta=0.0, cls=0.0, mixer="mixup", sigma=0.0, recon_loss="l1", cls_loss="bce",
                gan_loss="bce", disable_mix=False, disable_g_recon=False, cls_enc=probe,
                opt_args={"lr": 1e-4, "betas": (0.5, 0.99), "weight_decay": 1e-5},
                update_g_every=5, cls_enc_weight_decay=0.0, cls_enc_weight=1.0,
                cls_enc_backprop_grads=False, handlers=[])
    args.update(kwargs)
    gan = getattr(importlib.import_module(module), cls_name)(**args)
    gan.save(os.path.join(out_dir, f"{name}_zip.pt"), epoch=0)
  print(f"wrote {sorted(os.listdir(out_dir))}", flush=True)


def _rel(actual, desired) -> float:
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  return float(np.linalg.norm(actual - desired) / np.linalg.norm(desired))


def _config(file: str, arg: str):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"experiments.configs.{file}").get_config(arg)
  config.arch.spectral_power_iterations = 1  # their forward: one power-iteration step
  return config


def _same_tensors(a, b) -> bool:
  return all(np.array_equal(np.asarray(a[net][k], np.float32), np.asarray(b[net][k], np.float32))
             for net in ("g", "disc_x", "cls_enc") for k in b[net])


def run_jax(out_dir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from amr_jax import from_authors  # pylint: disable=g-import-not-at-top
  from amr_jax import torch_checkpoint  # pylint: disable=g-import-not-at-top
  for name, (_, file, arg) in MODELS.items():
    config = _config(file, arg)
    saved = torch_checkpoint.load(os.path.join(out_dir, f"{name}_zip.pt"))
    legacy = torch_checkpoint.load(os.path.join(out_dir, f"{name}_legacy.pt"))
    state = from_authors.to_train_state(config, saved)
    state_legacy = from_authors.to_train_state(config, legacy)
    same_files = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state),
                                                           jax.tree.leaves(state_legacy)))
    back = from_authors.to_authors(config, state)
    dropped = from_authors.not_kept(config)
    kept = {net: {k: v for k, v in saved[net].items() if k not in dropped.get(net, ())}
            for net in ("g", "disc_x", "cls_enc")}
    nets = from_authors._networks(config)  # pylint: disable=protected-access
    out = np.load(os.path.join(out_dir, f"{name}_outputs.npz"))
    x = out["x"].transpose(0, 2, 3, 1)
    codes = nets.encoder.apply({"params": state.generator["encoder"]}, x)
    decoded = nets.decoder.apply({"params": state.generator["decoder"]},
                                 out["codes"].transpose(0, 2, 3, 1))
    d_logit = nets.discriminator.apply({"params": state.discriminator, "spectral": state.spectral},
                                       x, update_stats=False)
    probe_logits = nets.probe.apply({"params": state.probe}, out["codes"].transpose(0, 2, 3, 1))
    print(json.dumps({
        "model": name, "config": f"{file}.py:{arg}", "step": int(state.step),
        "codes": _rel(codes, out["codes"].transpose(0, 2, 3, 1)),
        "decoded": _rel(decoded, out["decoded"].transpose(0, 2, 3, 1)),
        "d_logit": _rel(d_logit, out["d_logit"]),
        "probe_logits": _rel(probe_logits, out["probe_logits"]),
        "zip_equals_legacy": same_files,
        "round_trip_exact": _same_tensors(back, kept),
        "adam_counts": [int(s[1].count) for s in (state.generator_opt, state.discriminator_opt,
                                                   state.probe_opt)]}), flush=True)
  for name, (_, _, arg) in OTHER_MODELS.items():
    config = _config("mnist", arg)
    saved = torch_checkpoint.load(os.path.join(out_dir, f"{name}_zip.pt"))
    state = from_authors.to_train_state(config, saved)
    print(json.dumps({"model": name, "config": f"mnist.py:{arg}", "converted": True,
                      "step": int(state.step)}), flush=True)


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] not in ("torch", "jax"):
    sys.exit(__doc__)
  (run_torch if sys.argv[1] == "torch" else run_jax)(sys.argv[2])
