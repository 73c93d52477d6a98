"""Data parallelism: 1 device vs 4, and two processes on loopback, on simulated CPU devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import children
from tests import tolerances

# Every test here compares two computations (CI also runs them under another XLA:CPU code path).
pytestmark = pytest.mark.equivalence

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "parallel_worker.py"


def worker_env(devices):
  # The caller's XLA flags (e.g. another XLA:CPU code path, as CI runs) apply to workers too.
  xla_flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return children.env(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags.strip(), PYTHONPATH=str(ROOT))


def run_worker(*args, devices, timeout=600, **env):
  result = subprocess.run([sys.executable, str(WORKER), *map(str, args)], cwd=ROOT,
                          env={**worker_env(devices), **env}, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_one_step_on_4_devices_equals_1_device(tmp_path):
  out = tmp_path / "step.npz"
  run_worker("step", out, devices=4)
  saved = np.load(out)
  runs = {run: {k.split("|", 1)[1]: saved[k] for k in saved.files if k.startswith(run + "|")}
          for run in ("1", "4", "1+1")}
  names = list(runs["1"])
  assert any("spectral" in n for n in names) and any("opt" in n for n in names)
  assert any(n.startswith("metrics") for n in names)
  # A sum over devices adds the per-device parts in another order than one device does.
  tolerances.assert_close(runs["4"], runs["1"])
  # Negative control: one more step on 1 device fails the same check.
  state = lambda run: {k: v for k, v in runs[run].items() if k.startswith("state")}
  tolerances.assert_differs(state("1+1"), state("1"))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multiprocess")
  workdir = tmp / "run"
  coordinator = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), "train", str(tmp / f"p{i}.npz"), str(workdir), "4",
       coordinator, "2", str(i)], cwd=ROOT, env=worker_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=600))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  return tmp, workdir, outputs


def test_two_processes_agree_with_each_other_and_with_one_process(two_process_run, tmp_path):
  tmp, workdir, outputs = two_process_run
  assert "devices 4 processes 2" in outputs[0][0]
  p0, p1 = np.load(tmp / "p0.npz"), np.load(tmp / "p1.npz")
  assert p0.files == p1.files
  for name in p0.files:  # the same program on the same host: bit-equal
    np.testing.assert_array_equal(p0[name], p1[name], err_msg=name)
  # Only process 0 writes metrics and pictures; both took part in checkpointing.
  assert (workdir / "metrics.jsonl").exists() and (workdir / "images").exists()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]

  single = tmp_path / "single.npz"
  run_worker("train", single, tmp_path / "run", 4, devices=4)
  one = dict(np.load(single))
  tolerances.assert_close(dict(p0), one)
  # Negative control: the single-process run continued by one step fails the same check.
  run_worker("train", tmp_path / "five.npz", tmp_path / "run", 5, devices=4)
  tolerances.assert_differs(dict(p0), dict(np.load(tmp_path / "five.npz")))


def test_two_process_checkpoint_restores_in_one_process_and_continues(two_process_run):
  tmp, workdir, _ = two_process_run
  result = run_worker("train", tmp / "continued.npz", workdir, 6, devices=1)
  assert "'step': 6" in result.stdout
  assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "6"


def test_seeds_side_by_side_on_4_devices_with_device_data_and_two_steps_per_call(tmp_path):
  """2 seeds side by side on 4 devices, the training split sharded over them (each batch
  gathered there) and 2 steps per call: the same training, and the same evaluations, as the
  host-fed, one-step loop on 1 device."""
  # The batch of a multi-seed run is (seeds, rows, ...), split over devices along the rows.
  run_worker("train", tmp_path / "d1.npz", tmp_path / "run1", 4, devices=1,
             AMR_TEST_NUM_SEEDS="2")
  run_worker("train", tmp_path / "d4.npz", tmp_path / "run4", 4, devices=4,
             AMR_TEST_NUM_SEEDS="2", AMR_TEST_PLACEMENT="device", AMR_TEST_STEPS_PER_CALL="2")
  one, four = dict(np.load(tmp_path / "d1.npz")), dict(np.load(tmp_path / "d4.npz"))
  assert one[".step"].shape == (2,)
  tolerances.assert_close(four, one)
  # The evaluators too: per seed, over the same examples, on 1 and 4 devices.
  evals = {}
  for devices in (1, 4):
    with open(tmp_path / f"run{devices}" / "metrics.jsonl") as f:
      evals[devices] = [json.loads(line) for line in f][-1]
  np.testing.assert_allclose(evals[4]["valid_recon_l1_per_seed"],
                             evals[1]["valid_recon_l1_per_seed"], rtol=1e-4)
  # An accuracy may move by one example where a logit ties within float error.
  np.testing.assert_allclose(evals[4]["valid_probe_acc_per_seed"],
                             evals[1]["valid_probe_acc_per_seed"], atol=1.5 / 300)
  # Negative control: each seed against the other seed fails the same check.
  tolerances.assert_differs({k: v[::-1] for k, v in four.items()}, one)


def test_cli_training_is_the_same_on_1_2_and_4_devices(tmp_path):
  """``train_and_evaluate`` with a global batch of 16 on 1 device, 2 x 8 and 4 x 4 examples: the
  same parameters and Adam moments after 4 steps (2 of them G's). Trained ``kink_free``: with
  LeakyReLU's kink, one unit within rounding of 0 moves G's gradient by ~1e-2 on any two
  programs, one device included (tests/tolerances.py)."""
  env = {"AMR_TEST_BATCH_SIZE": "16", "AMR_TEST_KINK_FREE": "1", "AMR_TEST_EVALS": "0"}
  states = {}
  for devices in (1, 4, 2):
    run_worker("train", tmp_path / f"d{devices}.npz", tmp_path / f"run{devices}", 4,
               devices=devices, **env)
    states[devices] = dict(np.load(tmp_path / f"d{devices}.npz"))
  assert any("generator_opt" in name for name in states[1])
  tolerances.assert_close(states[4], states[1])
  tolerances.assert_close(states[2], states[1])
  # Negative control: the 1-device run resumed for one more step (a step of G) fails the check.
  run_worker("train", tmp_path / "five.npz", tmp_path / "run1", 5, devices=1, **env)
  tolerances.assert_differs(dict(np.load(tmp_path / "five.npz")), states[1])
