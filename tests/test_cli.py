"""End to end through the real command line on the tiny config: train, then resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import children

ROOT = Path(__file__).resolve().parents[1]


def run_cli(workdir, *overrides, timeout=600, module="amr_jax.main"):
  if module == "amr_jax.main":
    overrides = (f"--compilation_cache={children.XLA_CACHE}", *overrides)
  cmd = [sys.executable, "-m", module, "--config=experiments/configs/tiny.py",
         f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, cwd=ROOT, env=children.env(), capture_output=True, text=True,
                        timeout=timeout)


def read_metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cli") / "run"
  result = run_cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_run_leaves_metrics_checkpoints_and_pictures(first_run):
  workdir, result = first_run
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [2, 4]
  for record in records:
    for name in ("d_loss", "g_loss", "recon", "gan_rec", "gan_mix", "probe_loss", "probe_acc",
                 "d_acc_real", "d_acc_fake", "valid_probe_acc", "test_probe_acc",
                 "best_valid_probe_acc"):
      assert name in record, name
    assert 0.0 <= record["valid_probe_acc"] <= 1.0
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  pictures = sorted(os.listdir(workdir / "images"))
  assert pictures == ["step_0000002_interpolation.png", "step_0000002_mixes.png",
                      "step_0000004_interpolation.png", "step_0000004_mixes.png"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["name"] == "digits" and saved["num_train_steps"] == 4
  assert "done: step 4" in result.stdout


def test_second_invocation_resumes_at_saved_step(first_run):
  workdir, _ = first_run
  result = run_cli(workdir, "--config.num_train_steps=6")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from the checkpoint at step 4" in result.stdout
  assert [r["step"] for r in read_metrics(workdir)] == [2, 4, 6]
  assert "6" in os.listdir(workdir / "checkpoints")


def test_evaluate_reads_the_newest_checkpoint_as_the_loop_measured_it(first_run):
  workdir, _ = first_run
  result = run_cli(workdir, "--evals=probe,frozen_probe", module="amr_jax.evaluate")
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  step = printed["step"]
  assert step == max(int(s) for s in os.listdir(workdir / "checkpoints"))
  logged = {r["step"]: r for r in read_metrics(workdir)}[step]
  assert printed["valid_probe_acc"] == [logged["valid_probe_acc"]]  # the same state, re-read
  assert 0.0 <= printed["frozen_probe_test_acc"][0] <= 1.0
  saved = (workdir / "evaluations.jsonl").read_text().splitlines()
  assert json.loads(saved[-1]) == printed
  bad = run_cli(workdir, "--evals=nope", module="amr_jax.evaluate")
  assert bad.returncode == 2 and "config.evals.nope: no evaluator module" in bad.stderr


def test_bad_config_fails_before_compiling_and_leaves_workdir_alone(tmp_path):
  workdir = tmp_path / "bad"
  result = run_cli(workdir, "--config.mixer=nope")
  assert result.returncode != 0
  assert "config.mixer='nope' is not allowed" in result.stderr
  assert "'mixup'" in result.stderr
  assert not workdir.exists()
