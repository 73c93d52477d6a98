"""Steps per call and device-resident data (amr_jax/stepper.py): K steps in one jitted call, and
batches gathered on the device, end equal to the plain one-step, host-fed loop."""

import json

import ml_collections
import numpy as np
import pytest

from amr_jax import config as config_lib
from amr_jax import data as data_lib
from amr_jax import parallel
from amr_jax import seeds as seeds_lib
from amr_jax import stepper
from amr_jax import train
from experiments.configs import tiny
from experiments.configs import tiny_dsprites
from tests import tolerances


def run(tmp_path, name, steps=4, **fields):
  config = tiny.get_config()  # g_every 2
  config.num_train_steps = steps
  config.log_every = config.eval_every = config.checkpoint_every = 4
  config.evals = ml_collections.ConfigDict()  # they only read the state: not needed here
  for field, value in fields.items():
    config_lib.set_field(config, field.replace("__", "."), value)
  state, _ = train.train_and_evaluate(config, str(tmp_path / name))
  with open(tmp_path / name / "metrics.jsonl") as f:
    records = {r["step"]: r for r in map(json.loads, f)}
  return tolerances.flatten(state), records


@pytest.mark.equivalence
def test_k_steps_per_call_and_device_data_equal_the_plain_loop(tmp_path):
  """2 seeds side by side (one seed: the resumed run below and tests/test_parallel.py), vmapped
  as on accelerators (traced once; unrolled seeds: tests/test_parallel.py)."""
  seeds = dict(num_seeds=2, seed_batching="vmap")
  plain, plain_log = run(tmp_path, "plain", steps_per_call=1, data__placement="host", **seeds)
  # The K steps of a call as a lax.scan and unrolled (XLA:CPU's default: see stepper.py).
  for name, k, placement, loop in (("k2", 2, "host", "unroll"), ("k4_device", 4, "device", "scan"),
                                   ("k1_device", 1, "device", "auto")):
    state, log = run(tmp_path, name, steps_per_call=k, data__placement=placement,
                     steps_per_call_loop=loop, **seeds)
    tolerances.assert_close(state, plain)
    for metric in ("d_loss", "g_loss", "recon", "probe_loss"):  # window means over 4 steps
      np.testing.assert_allclose(log[4][metric], plain_log[4][metric], rtol=1e-4)
  # Negative control: one more step fails the same check.
  more, _ = run(tmp_path, "more", steps=5, steps_per_call=1, **seeds)
  tolerances.assert_differs(more, plain)


@pytest.mark.equivalence
def test_a_run_resumed_with_another_k_continues_the_same_steps(tmp_path):
  """4 steps at K=2 (checkpoints at 2 and 4), then to 10 at K=4 with the data on the device:
  calls (4, 4), (8, 1), (9, 1)."""
  straight, _ = run(tmp_path, "straight", steps=10, steps_per_call=1)
  run(tmp_path, "resumed", steps=4, steps_per_call=2, checkpoint_every=2)
  resumed, _ = run(tmp_path, "resumed", steps=10, steps_per_call=4, data__placement="device")
  tolerances.assert_close(resumed, straight)


@pytest.mark.equivalence
def test_calls_stop_at_periods_that_k_does_not_divide(tmp_path):
  """K = 4 (g_every 2) with logging every 3, checkpoints every 5, evaluations every 6: the calls
  stop at each of them (a line at 3, 5, 6 and the end, a checkpoint at 5 and the end) and the
  steps are the plain loop's."""
  periods = dict(log_every=3, checkpoint_every=5, eval_every=6)
  plain, plain_log = run(tmp_path, "plain", steps=7, steps_per_call=1, **periods)
  state, log = run(tmp_path, "k4", steps=7, steps_per_call=4, **periods)
  tolerances.assert_close(state, plain)
  assert sorted(log) == sorted(plain_log) == [3, 5, 6, 7]
  saved = sorted(int(p.name) for p in (tmp_path / "k4" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved[-2:] == [5, 7]


def test_plan_runs_whole_calls_from_g_steps_and_single_steps_elsewhere():
  plan = lambda start, stop, **kw: stepper.plan_calls(start, stop, per_call=4, **kw)
  assert plan(3, 14) == [(3, 4), (7, 4), (11, 1), (12, 1), (13, 1)]
  assert plan(3, 14, g_every=2) == [(3, 1), (4, 4), (8, 4), (12, 1), (13, 1)]
  assert plan(0, 8) == [(0, 4), (4, 4)]
  assert plan(8, 8) == []


def test_plan_never_runs_a_call_across_a_period():
  plan = stepper.plan_calls(0, 30, per_call=4, g_every=2, periods=(10, 15))
  assert plan == [(0, 4), (4, 4), (8, 1), (9, 1), (10, 4), (14, 1), (15, 1), (16, 4), (20, 4),
                  (24, 4), (28, 1), (29, 1)]
  ends = {first + n for first, n in plan}
  assert {10, 15, 20, 30} <= ends  # every multiple of a period ends a call


def test_steps_per_call_zero_is_chosen_for_the_backend():
  config = tiny.get_config()
  config.update(g_every=5, log_every=100, eval_every=1562, checkpoint_every=2000,
                num_train_steps=100_000, steps_per_call=0)
  resolve = lambda **kw: stepper.resolve_steps_per_call(config, **kw)
  assert resolve(backend="cpu") == stepper.CPU_STEPS_PER_CALL == 10
  assert resolve(backend="gpu") == stepper.ACCELERATOR_STEPS_PER_CALL == 100
  assert resolve(backend="cpu", seed_copies=2) == 5  # 2 seeds unrolled: 5 steps each
  config.g_every = 3
  assert resolve(backend="cpu") == 9  # whole G cycles
  config.g_every, config.log_every = 1, 4
  assert resolve(backend="gpu") == 4  # at most the shortest period
  config.num_train_steps = 999  # too short to pay for compiling 10 unrolled steps
  config.log_every = 100
  assert resolve(backend="cpu") == 1 and resolve(backend="gpu") == 100
  config.steps_per_call = 2
  assert resolve(backend="cpu") == 2  # an explicit K is kept


def test_device_batches_are_the_host_batches():
  config = tiny.get_config()
  config.num_seeds = 2
  dataset = train.load_dataset(config)
  mesh = parallel.make_mesh()
  gathered = []
  for placement in ("host", "device"):
    steps = stepper.Stepper(config, dataset.train, lambda s, b, flag: (s, b), mesh,
                            seeds_lib.Seeds.of(config), placement=placement,
                            loop=stepper.resolve_loop(config.steps_per_call_loop),
                            steps_per_call=2)
    _, batches = steps.run({}, 6, 2, steps.inputs(6, 2))  # the "step" returns its batch
    gathered.append(parallel.to_host(batches).per_step())
  for step, (host, device) in enumerate(zip(*gathered), start=6):
    assert host["image"].shape == (2, 8, 32, 32, 1)  # (seeds, batch, ...)
    for i, seed in enumerate((0, 1)):
      idx = data_lib.batch_indices(seed, step, len(dataset.train.labels), 8)
      np.testing.assert_array_equal(host["label"][i], dataset.train.labels[idx])
    for name in ("image", "label"):
      np.testing.assert_array_equal(device[name], host[name])


def test_steps_per_call_and_placement_are_validated_in_one_line(config_error):
  error = config_error
  assert ("config.steps_per_call=3 is not allowed; allowed: 0 (chosen for the backend), 1 or a "
          "multiple of g_every=2") in error(lambda c: setattr(c, "steps_per_call", 3))
  assert "config.steps_per_call=-1" in error(lambda c: setattr(c, "steps_per_call", -1))
  assert "config.steps_per_call_loop='while'" in error(
      lambda c: setattr(c, "steps_per_call_loop", "while"))
  assert "config.data.placement='gpu'" in error(lambda c: setattr(c.data, "placement", "gpu"))
  assert "'host' or 'auto' for data.name='dsprites'" in error(
      lambda c: setattr(c.data, "placement", "device"), get=tiny_dsprites.get_config)
