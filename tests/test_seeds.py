"""Several seeds side by side in one jitted step equal each seed trained alone."""

import json

import jax
import numpy as np
import pytest

from amr_jax import seeds
from amr_jax import train
from experiments.configs import tiny
from tests import tolerances


def tiny_config(**overrides):
  config = tiny.get_config()
  config.num_train_steps = 2
  for name, value in overrides.items():
    setattr(config, name, value)
  return config


@pytest.mark.equivalence
def test_each_seed_of_a_side_by_side_run_equals_that_seed_alone(tmp_path):
  """Seeds 3 and 4 side by side, vmapped and unrolled, against each trained alone."""
  alone, alone_summary = {}, {}
  for seed in (3, 4):
    alone[seed], alone_summary[seed] = train.train_and_evaluate(tiny_config(seed=seed),
                                                                str(tmp_path / f"s{seed}"))
    assert int(alone[seed].step) == 2
  last = lambda run: json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1])
  for batching in ("vmap", "unroll"):
    both, summary = train.train_and_evaluate(
        tiny_config(seed=3, num_seeds=2, seed_batching=batching), str(tmp_path / batching))
    assert jax.tree.leaves(both)[0].shape[0] == 2  # a leading seeds axis
    seed_slice = lambda i: jax.tree.map(lambda leaf, i=i: np.asarray(leaf)[i], both)
    for i, seed in enumerate((3, 4)):
      # Batched code fuses and orders float sums differently: equal to float32 rounding.
      tolerances.assert_close(seed_slice(i), alone[seed])
      assert summary["best_step_per_seed"][i] == alone_summary[seed]["best_step"]
      # Rounding may flip one example whose two best classes tie; a wrong seed moves many more.
      for name in ("best_valid_probe_acc", "test_probe_acc_at_best"):
        assert abs(summary[f"{name}_per_seed"][i] - alone_summary[seed][name]) <= 1 / 297 + 1e-9
    # Negative control: the other seed, trained alone, fails the same check.
    tolerances.assert_differs(seed_slice(0), alone[4])
    tolerances.assert_differs(seed_slice(1), alone[3])
    # The log holds each seed's own training curve beside the mean over seeds.
    record = last(batching)
    assert record["recon"] == pytest.approx(np.mean(record["recon_per_seed"]))
    tolerances.assert_close(record["recon_per_seed"],
                            [last(f"s{seed}")["recon"] for seed in (3, 4)])


def test_auto_batching_unrolls_on_cpu_and_vmaps_elsewhere():
  expected = "unroll" if jax.default_backend() == "cpu" else "vmap"
  assert seeds.resolve_batching("auto") == expected
  assert seeds.resolve_batching("vmap") == "vmap"


def test_shared_arguments_are_seen_whole_by_every_seed():
  fn = lambda w, x: w * x
  w, x = np.arange(3.0)[:, None], np.ones((3, 4))  # x: not per seed, though its axis 0 is 3
  for mode in ("vmap", "unroll"):
    np.testing.assert_array_equal(seeds.over_seeds(fn, mode, shared=(1,))(w, x), w[:, :, None] * x)
