"""Runs survive kills, pre-emption, NaNs, damaged checkpoints and bad input."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from amr_jax import checkpointing
from amr_jax import config as config_lib
from amr_jax import train
from amr_jax import train_step as train_step_lib
from tests import children

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.configs import tiny  # noqa: E402
from tests.test_cli import ROOT, run_cli  # noqa: E402


def tiny_config(**overrides):
  config = tiny.get_config()
  for name, value in overrides.items():
    config_lib.set_field(config, name, value)
  return config


def final_state(workdir, config):
  """The state in the newest checkpoint of workdir, restored into config's structure."""
  state, _ = train.train_and_evaluate(config, str(workdir))  # resumes at the end: 0 steps
  return state


# --- exact resume after SIGKILL ---------------------------------------------------------------

@pytest.mark.equivalence
def test_killed_run_resumes_to_the_same_parameters_bit_for_bit(tmp_path):
  steps = 8
  overrides = [f"--config.num_train_steps={steps}", "--config.checkpoint_every=1",
               "--config.eval_every=4", "--config.log_every=1"]
  straight = tmp_path / "straight"
  assert run_cli(straight, *overrides).returncode == 0

  killed = tmp_path / "killed"
  proc = subprocess.Popen(
      [sys.executable, "-m", "amr_jax.main", "--config=experiments/configs/tiny.py",
       f"--workdir={killed}", f"--compilation_cache={children.XLA_CACHE}", *overrides],
      cwd=ROOT, env=children.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill at a random moment once training is under way (a step in [1, steps - 2] was logged).
  target = random.Random(os.getpid()).randint(1, steps - 2)
  deadline = time.time() + 300
  metrics = killed / "metrics.jsonl"
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= target:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert run_cli(killed, *overrides).returncode == 0

  config = tiny_config(num_train_steps=steps)
  a, b = final_state(straight, config), final_state(killed, config)
  assert int(a.step) == int(b.step) == steps
  chex.assert_trees_all_equal(a, b)  # exact, not to a tolerance
  steps_logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert steps_logged == list(range(1, steps + 1))  # one consistent history, no duplicates


# --- pre-emption: SIGTERM saves and exits cleanly ----------------------------------------------

def test_sigterm_saves_a_checkpoint_at_the_current_step_and_exits_cleanly(tmp_path):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(
      [sys.executable, "-m", "amr_jax.main", "--config=experiments/configs/tiny.py",
       f"--workdir={workdir}", f"--compilation_cache={children.XLA_CACHE}",
       "--config.num_train_steps=100000", "--config.checkpoint_every=100000",
       "--config.eval_every=100000", "--config.log_every=1"],
      cwd=ROOT, env=children.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  steps = checkpointing.Checkpointer(str(workdir / "checkpoints")).all_steps()
  assert len(steps) == 1, (out, err[-3000:], os.listdir(workdir / "checkpoints"))
  assert len(steps) == 1 and 1 <= steps[0] < 100000
  assert f"SIGTERM: saved the checkpoint at step {steps[0]}" in out


# --- non-finite losses ---------------------------------------------------------------------------

@pytest.mark.parametrize("poison_metric, log_every, expected", [
    (True, 2, r"non-finite loss at step 5: recon=nan.*last good checkpoint is step 4"),
    # Logged every step, metrics are read one window late (step 5's at step 6): still caught
    # before the checkpoint at step 6.
    (True, 1, r"non-finite loss at step 5: recon=nan.*last good checkpoint is step 4"),
    # Parameters that turn NaN in step 4 show in no loss until step 5: the state itself is
    # checked before the checkpoint at step 4.
    (False, 2, r"step 4: non-finite values in the state's probe.*last good checkpoint is step 2"),
])
def test_non_finite_values_stop_the_run_and_keep_the_last_good_checkpoint(
    tmp_path, monkeypatch, poison_metric, log_every, expected):
  real_make = train_step_lib.make_train_step
  poisoned_step = 4 if poison_metric else 3  # 0-based index of the step that goes bad

  def poisoned_make(config, nets, optimizers):
    step_fn = real_make(config, nets, optimizers)

    def step(state, batch, key, update_generator=None):
      new_state, metrics = step_fn(state, batch, key, update_generator)
      poison = jnp.where(state.step >= poisoned_step, jnp.nan, 0.0)
      if poison_metric:
        metrics = dict(metrics, recon=metrics["recon"] + poison)
      new_state = new_state.replace(probe=jax.tree.map(lambda p: p + poison, new_state.probe))
      return new_state, metrics

    return step

  monkeypatch.setattr(train_step_lib, "make_train_step", poisoned_make)
  config = tiny_config(num_train_steps=8, checkpoint_every=2, log_every=log_every)
  config.evals = ml_collections.ConfigDict()  # they only read the state: not needed here
  with pytest.raises(train.NonFiniteLossError, match=expected):
    train.train_and_evaluate(config, str(tmp_path))
  good = checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps()[-1]
  monkeypatch.undo()
  state, _ = train.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path))
  assert int(state.step) == 8
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))
  assert good in (2, 4)


# --- damaged checkpoints -------------------------------------------------------------------------

def test_damaged_newest_checkpoint_falls_back_to_an_older_one(tmp_path, caplog):
  config = tiny_config(num_train_steps=4)
  _, summary = train.train_and_evaluate(config, str(tmp_path))
  newest = tmp_path / "checkpoints" / "4"
  for path in newest.rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "manifest" not in path.name:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncate
  state, resumed = train.train_and_evaluate(config, str(tmp_path))
  assert "checkpoint at step 4 is unreadable" in caplog.text
  assert int(state.step) == 4 and resumed == summary  # redone from step 2, same result
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  assert len(os.listdir(tmp_path / "checkpoints_damaged")) == 1  # kept aside, not deleted
  restored = checkpointing.Checkpointer(str(tmp_path / "checkpoints")).restore_latest(state)
  assert restored[0] == 4
  chex.assert_trees_all_equal(restored[1], state)


# --- bad input fails before anything compiles, workdir untouched -----------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("mixer", "nope", "config.mixer='nope' is not allowed; allowed: 'mixup'"),
    ("model", "vae2", "config.model='vae2' is not allowed; allowed: 'amr', 'ae_gan'"),
    ("data.name", "imagenet", "data.name='imagenet'"),
    ("arch.name", "resnet", "config.arch.name='resnet' is not allowed"),
    ("k", 1, "config.k=1 is not allowed; allowed: an integer >= 2"),
    ("lamb", -1.0, "config.lamb=-1.0 is not allowed; allowed: a number >= 0"),
    ("beta", -0.5, "config.beta=-0.5 is not allowed"),
    ("data.image_size", 28, "config.data.image_size=28 is not allowed; allowed: 32"),
    ("data.name", "cifar10", "data.manual_dir"),
    ("arch.init", "torch", "config.arch.init='torch' is not allowed; allowed: 'flax', 'authors'"),
    ("arch.input_conv_padding", 2,
     "config.arch.input_conv_padding=2 is not allowed; allowed: 0, 1"),
    ("arch.spectral_power_iterations", 0,
     "config.arch.spectral_power_iterations=0 is not allowed; allowed: an integer >= 1"),
])
def test_bad_config_fails_in_one_line_before_compiling(tmp_path, field, value, expected):
  config = tiny_config(**{field: value})
  workdir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError) as info:
    train.train_and_evaluate(config, str(workdir))
  message = str(info.value)
  assert expected in message
  assert "\n" not in message
  assert not workdir.exists()


def test_batch_size_must_divide_over_devices():
  config = tiny_config(batch_size=6)
  with pytest.raises(config_lib.ConfigError, match=r"config.batch_size=6 is not allowed; allowed: "
                     r"a multiple of the number of devices \(4\)"):
    config_lib.validate(config, num_devices=4)


def test_workdir_with_different_shapes_is_refused_and_left_alone(tmp_path):
  train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path))
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  config_json = (tmp_path / "config.json").read_text()
  with pytest.raises(config_lib.ConfigError, match=r"config.arch.latent_channels: saved 2, now 16"):
    train.train_and_evaluate(tiny_config(num_train_steps=2, **{"arch.latent_channels": 16}),
                             str(tmp_path))
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before
  assert (tmp_path / "config.json").read_text() == config_json
