"""amr_jax.from_authors: the authors' saved state into a TrainState and back, without torch.

The saved states here are made from a numpy seed with ``authors_names`` (whose names, order and
shapes experiments/parity/check_converter.py checks against the authors' own networks, with the
converted forward outputs). Reading torch files is tests/test_torch_checkpoint.py's.
"""

import jax
import numpy as np
import optax
import pytest

from amr_jax import from_authors
from amr_jax import networks
from amr_jax import train
from amr_jax import train_state as train_state_lib
from experiments.configs import mnist
from experiments.configs import svhn


def _config(arg="mixup,authors", get=mnist.get_config):
  return get(arg)


def _adam(names, shapes_seed, step, torch10=False):
  """A torch Adam state_dict for parameters ``names`` (torch 1.0 keys them by python id)."""
  rng = np.random.default_rng(shapes_seed)
  ids = [140_000_000 + 8 * i for i in range(len(names))] if torch10 else list(range(len(names)))
  state = {}
  for param_id, shape in zip(ids, names.values()):
    state[param_id] = {"step": step if torch10 else np.array(float(step), np.float32),
                       "exp_avg": rng.standard_normal(shape).astype(np.float32),
                       "exp_avg_sq": rng.random(shape).astype(np.float32)}
  return {"state": state, "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.99), "eps": 1e-8,
                                            "weight_decay": 1e-5, "amsgrad": False,
                                            "params": ids}]}


def _saved(config, seed=0, steps=(3, 15, 15), torch10=False):
  """An authors' save() dict for ``config`` from a numpy seed, with Adam states."""
  rng = np.random.default_rng(seed)
  names = from_authors.authors_names(config)
  saved = {net: {n: rng.standard_normal(s).astype(np.float32) for n, s in d.items()}
           for net, d in names.items()}
  for net, step in zip(("g", "disc_x", "cls_enc"), steps):
    trainable = {n: s for n, s in names[net].items()
                 if not n.endswith(("weight_u", "weight_v"))}
    saved[f"optim_{net}"] = _adam(trainable, seed + 1 + len(net), step, torch10)
  saved["epoch"] = 7
  return saved


def _kept(config, saved):
  dropped = from_authors.not_kept(config)
  return {net: {k: v for k, v in saved[net].items() if k not in dropped.get(net, ())}
          for net in ("g", "disc_x", "cls_enc")}


@pytest.mark.parametrize("arg,get", [("mixup,authors", mnist.get_config),
                                     ("mixup,dim=256,authors", svhn.get_config)])
def test_round_trip_exact(arg, get):
  config = _config(arg, get)
  saved = _saved(config)
  back = from_authors.to_authors(config, from_authors.to_train_state(config, saved))
  kept = _kept(config, saved)
  for net, tensors in kept.items():
    assert list(back[net]) == list(saved[net])  # every name, in their order
    for name, value in tensors.items():
      np.testing.assert_array_equal(back[net][name], value, err_msg=f"{net} {name}")
  for net in ("g", "disc_x", "cls_enc"):
    ids = saved[f"optim_{net}"]["param_groups"][0]["params"]
    for i, param_id in enumerate(ids):
      name = list(n for n in saved[net] if not n.endswith(("weight_u", "weight_v")))[i]
      if name in from_authors.not_kept(config).get(net, ()):
        continue
      for moment in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(back[f"optim_{net}"]["state"][i][moment],
                                      saved[f"optim_{net}"]["state"][param_id][moment])
  # What is not kept: the biases come back zero, weight_v as their next forward sets it.
  assert not np.array_equal(back["g"]["encoder.1.bias"], saved["g"]["encoder.1.bias"])
  np.testing.assert_array_equal(back["g"]["encoder.1.bias"], 0)
  w = back["disc_x"]["encoder.3.module.weight_bar"].reshape(16, -1)
  v = w.T @ back["disc_x"]["encoder.3.module.weight_u"]
  np.testing.assert_allclose(back["disc_x"]["encoder.3.module.weight_v"], v / np.linalg.norm(v),
                             rtol=1e-5, atol=1e-7)


def test_state_is_the_one_create_makes():
  config = _config()
  state = from_authors.to_train_state(config, _saved(config))
  nets = networks.build("acai32", image_channels=1, num_classes=10, init="authors",
                        input_conv_padding=1, spectral_input_conv=False)
  expected = jax.eval_shape(lambda: train_state_lib.create(
      nets, train_state_lib.make_optimizers(config.optim), jax.random.key(0), (32, 32, 1),
      (4, 4, 2)))
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
    assert (got.shape, got.dtype) == (want.shape, want.dtype)


@pytest.mark.parametrize("torch10", [False, True])
def test_optimiser_state_and_step(torch10):
  config = _config()
  saved = _saved(config, steps=(3, 15, 14), torch10=torch10)
  state = from_authors.to_train_state(config, saved)
  assert int(state.step) == 15  # D's count: their iterations
  adams = [s[1] for s in (state.generator_opt, state.discriminator_opt, state.probe_opt)]
  assert all(isinstance(a, optax.ScaleByAdamState) for a in adams)
  assert [int(a.count) for a in adams] == [3, 15, 14]
  ids = saved["optim_cls_enc"]["param_groups"][0]["params"]
  exp_avg = saved["optim_cls_enc"]["state"][ids[0]]["exp_avg"]  # the probe's weight (10, 2*4*4)
  mu = np.asarray(adams[2].mu["Dense_0"]["kernel"])
  np.testing.assert_array_equal(mu, exp_avg.reshape(10, 2, 4, 4).transpose(2, 3, 1, 0)
                                .reshape(32, 10))
  d_ids = saved["optim_disc_x"]["param_groups"][0]["params"]  # encoder.0.weight first
  np.testing.assert_array_equal(np.asarray(adams[1].nu["Conv_0"]["kernel"]),
                                saved["optim_disc_x"]["state"][d_ids[0]]["exp_avg_sq"]
                                .transpose(2, 3, 1, 0))
  fresh = {k: v for k, v in saved.items() if not k.startswith("optim_")}
  state = from_authors.to_train_state(config, fresh)
  assert int(state.step) == 0 and int(state.discriminator_opt[1].count) == 0


def test_layouts_compute_what_theirs_compute():
  """The probe (their rows flatten codes NCHW) and a 3x3 conv (OIHW) give torch's outputs."""
  config = _config()
  saved = _saved(config)
  state = from_authors.to_train_state(config, saved)
  rng = np.random.default_rng(1)
  codes_nchw = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
  theirs = codes_nchw.reshape(3, -1) @ saved["cls_enc"]["weight"].T + saved["cls_enc"]["bias"]
  nets = from_authors._networks(config)  # pylint: disable=protected-access
  ours = nets.probe.apply({"params": state.probe}, codes_nchw.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  wrong = codes_nchw.transpose(0, 2, 3, 1).reshape(3, -1) @ saved["cls_enc"]["weight"].T
  assert np.abs(wrong + saved["cls_enc"]["bias"] - theirs).max() > 0.1  # negative control
  # D's last conv: torch's cross-correlation, padding 1, on a 4x4 map.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  weight, bias = saved["disc_x"]["encoder.18.module.weight_bar"], saved["disc_x"][
      "encoder.18.module.bias"]
  x = rng.standard_normal((1, 128, 4, 4)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  theirs = np.stack([np.einsum("oihw,ihw->o", weight, padded[0, :, i:i + 3, j:j + 3])
                     for i in range(4) for j in range(4)]).reshape(4, 4, -1) + bias
  params = {"kernel": state.discriminator["Conv_8"]["kernel"],
            "bias": state.discriminator["Conv_8"]["bias"]}
  ours = nn.Conv(2, (3, 3), padding="SAME").apply({"params": params}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(ours[0], theirs, rtol=1e-4, atol=1e-4)


def test_spectral_state():
  config = _config()
  saved = _saved(config)
  state = from_authors.to_train_state(config, saved)
  prefix = "encoder.6.module."  # their third normalised conv: amr_jax's Conv_3
  entry = state.spectral["SpectralNorm_2"]
  np.testing.assert_array_equal(entry["Conv_3/kernel/u"][0], saved["disc_x"][prefix + "weight_u"])
  w = saved["disc_x"][prefix + "weight_bar"].reshape(32, -1).astype(np.float64)
  sigma = saved["disc_x"][prefix + "weight_u"] @ (w @ saved["disc_x"][prefix + "weight_v"])
  np.testing.assert_allclose(float(entry["Conv_3/kernel/sigma"]), sigma, rtol=1e-6)


def _error(config, saved) -> str:
  with pytest.raises(ValueError) as e:
    from_authors.to_train_state(config, saved)
  message = str(e.value)
  assert "\n" not in message
  return message


def test_misfits_fail_in_one_line_naming_the_tensor():
  config = _config()
  saved = _saved(config)
  missing = {**saved, "g": {k: v for k, v in saved["g"].items() if k != "encoder.4.weight"}}
  assert "'encoder.4.weight'" in _error(config, missing)
  extra = {**saved, "disc_x": {**saved["disc_x"], "fc.weight": np.zeros((2, 32), np.float32)}}
  assert "'fc.weight'" in _error(config, extra)
  wrong = {**saved, "cls_enc": {**saved["cls_enc"], "bias": np.zeros(11, np.float32)}}
  assert "['cls_enc']['bias']" in _error(config, wrong)
  # Another width: a dim-256 state into a dim-32 config (the first tensor that differs).
  other = _saved(_config("mixup,dim=256,authors", svhn.get_config))
  other = {**other, "g": {k: v[:, :1] if k == "encoder.0.weight" else v
                          for k, v in other["g"].items()}}
  assert "'encoder.25.weight'" in _error(config, other)
  # Another model: a state with a class mixer (supervised), or without D (their VAE).
  assert "'class_mixer'" in _error(config, {**saved, "class_mixer": {}})
  assert "'disc_x'" in _error(config, {k: v for k, v in saved.items() if k != "disc_x"})
  # Three image channels where the config has one.
  rgb = {**saved, "g": {**saved["g"], "encoder.0.weight": np.zeros((16, 3, 1, 1), np.float32)}}
  assert "'encoder.0.weight'" in _error(config, rgb)
  # Optimiser states: a moment of another shape, different step counts.
  bad = _saved(config)
  ids = bad["optim_g"]["param_groups"][0]["params"]
  bad["optim_g"]["state"][ids[2]]["exp_avg"] = np.zeros(3, np.float32)
  assert "'encoder.1.weight'" in _error(config, bad)
  bad = _saved(config)
  bad["optim_disc_x"]["state"][0]["step"] = np.array(3.0, np.float32)
  assert "step counts" in _error(config, bad)


def test_config_fields_that_change_outputs_but_no_shape():
  saved = _saved(_config())
  config = _config("mixup")  # amr_jax's own arch: no input padding, normalised input conv
  assert "config.arch.input_conv_padding=0" in _error(config, saved)
  config = _config()
  config.arch.leaky_slope = 0.2
  assert "config.arch.leaky_slope" in _error(config, saved)
  config = _config()
  config.model = "beta_vae"
  assert "config.model='beta_vae'" in _error(config, saved)


def test_every_paper_width():
  for latent, get, arg in ((2, mnist.get_config, "mixup,authors"),
                           (16, svhn.get_config, "mixup,dim=256,authors")):
    names = from_authors.authors_names(get(arg))
    assert names["g"]["encoder.25.weight"] == (latent, 128, 3, 3)
    assert names["cls_enc"]["weight"] == (10, 16 * latent)
  config = svhn.get_config("mixup,dim=256,authors")
  config.arch.latent_channels = 64  # CIFAR10 dim 1024
  names = from_authors.authors_names(config)
  assert names["disc_x"]["encoder.18.module.weight_bar"] == (64, 128, 3, 3)
  assert names["g"]["encoder.0.weight"] == (16, 3, 1, 1)
  state = from_authors.to_train_state(config, _saved(config))
  assert state.probe["Dense_0"]["kernel"].shape == (1024, 10)


def test_import_checkpoint_writes_what_training_restores(tmp_path, monkeypatch):
  """The CLI's path, on the digits dataset (no download): a misfit writes nothing; a fitting
  state becomes the checkpoint that train.set_up restores, at D's step."""
  from amr_jax import torch_checkpoint  # pylint: disable=g-import-not-at-top
  config = _config()
  config.data.name = "digits"
  saved = _saved(config, steps=(2, 9, 9))
  workdir = str(tmp_path / "run")
  broken = {**saved, "g": {k: v for k, v in saved["g"].items() if k != "decoder.24.bias"}}
  monkeypatch.setattr(torch_checkpoint, "load", lambda path: broken)
  with pytest.raises(ValueError, match="'decoder.24.bias'"):
    from_authors.import_checkpoint(config, "authors.pt", workdir)
  assert not (tmp_path / "run").exists()
  monkeypatch.setattr(torch_checkpoint, "load", lambda path: saved)
  assert from_authors.import_checkpoint(config, "authors.pt", workdir) == 9
  run = train.set_up(config, workdir)
  try:
    step, restored = run.restore_latest()
  finally:
    run.checkpointer.close()
  assert step == 9 and int(restored.step) == 9
  expected = from_authors.to_train_state(config, saved)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  with pytest.raises(ValueError, match="already holds checkpoints"):
    from_authors.import_checkpoint(config, "authors.pt", workdir)
