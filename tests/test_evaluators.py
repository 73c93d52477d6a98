"""Evaluators (amr_jax/evaluators/): each alone on a tiny state, seeds side by side, the
config.evals registry and its validation, the loop's schedule, pictures in TensorBoard, and an
evaluator from the user's own module."""

import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from amr_jax import model
from amr_jax import parallel
from amr_jax import seeds as seeds_lib
from amr_jax import train
from amr_jax import train_state as train_state_lib
from amr_jax.evaluators import common
from amr_jax.evaluators import frozen_probe
from amr_jax.evaluators import pictures
from amr_jax.evaluators import probe
from amr_jax.evaluators import reconstruction
from amr_jax.evaluators import spiral as spiral_eval
from experiments.configs import spiral as spiral_config
from experiments.configs import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]


def setup(config):
  """The loop's own context and initial state for ``config``."""
  dataset = train.load_dataset(config)
  nets = model.build_networks(config, dataset)
  mesh = parallel.make_mesh()
  seeds = seeds_lib.Seeds.of(config)
  init_state = train.make_init_state(
      config, dataset, nets, train_state_lib.make_optimizers(config.optim), mesh, seeds)
  return train.make_evaluator_context(config, dataset, nets, mesh, seeds), init_state()


def one_seed(state, i, num_seeds):
  return jax.tree.map(lambda a: a[i], state) if num_seeds > 1 else state


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_probe_accuracy_counts_every_example_once_per_seed(num_seeds):
  config = tiny.get_config()
  config.num_seeds = num_seeds
  config.eval_batch_size = 64  # the validation split is not a multiple: the last batch pads
  ctx, state = setup(config)
  assert len(ctx.dataset.valid.labels) % 64
  evaluator = probe.Evaluator(ctx)
  result = evaluator.evaluate(state, step=2)
  for split in ("valid", "test"):
    data = getattr(ctx.dataset, split)
    expected = [float(np.mean(np.argmax(model.probe_logits(
        ctx.nets, config, one_seed(state, i, num_seeds), data.images), -1)
                              == data.labels)) for i in range(num_seeds)]
    np.testing.assert_allclose(result.metrics[f"{split}_probe_acc"], expected, atol=1e-6)
  assert result.metrics["best_valid_probe_acc"] == result.metrics["valid_probe_acc"]
  assert result.metrics["best_step"] == [2] * num_seeds
  assert result.pictures == {}
  # The best so far survives a checkpoint: a new evaluator restored from meta() keeps it.
  again = probe.Evaluator(ctx)
  again.restore(json.loads(json.dumps(evaluator.meta())))
  assert again.meta() == evaluator.meta()


def test_reconstruction_error_matches_a_direct_computation():
  config = tiny.get_config()
  config.num_seeds = 2
  config.eval_batch_size = 32
  ctx, state = setup(config)
  result = reconstruction.Evaluator(ctx, num_examples=50).evaluate(state, step=0)
  images = ctx.dataset.valid.images[:50]
  expected = []
  for i in range(2):
    s = one_seed(state, i, 2)
    decoded = ctx.nets.decoder.apply({"params": s.generator["decoder"]}, model.encode(
        ctx.nets, config, s.generator["encoder"], images))
    expected.append(float(jnp.mean(jnp.abs(decoded - images))))
  np.testing.assert_allclose(result.metrics["valid_recon_l1"], expected, rtol=1e-5)


def test_frozen_probe_fit_is_exact_on_separable_codes_and_chance_on_noise():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 6)) * 5

  def split(n, informative=True):
    labels = rng.integers(0, 4, n)
    codes = rng.normal(size=(n, 6)) + (centres[labels] if informative else 0)
    return codes * [1e3, 1e-3, 1, 1, 1, 1] + 7, labels  # scale and offset must not matter

  scores = frozen_probe.fit_linear_probe(split(400), split(200), split(200))
  assert scores["frozen_probe_valid_acc"] == scores["frozen_probe_test_acc"] == 1.0
  assert scores["frozen_probe_inverse_l2"] in frozen_probe.INVERSE_L2
  noise = frozen_probe.fit_linear_probe(*(split(400, informative=False) for _ in range(3)))
  assert noise["frozen_probe_test_acc"] < 0.45  # 4 classes: chance is 0.25


def test_frozen_probe_evaluator_fits_each_seeds_own_codes():
  config = tiny.get_config()
  config.num_seeds = 2
  config.eval_batch_size = 64
  ctx, state = setup(config)
  result = frozen_probe.Evaluator(ctx, num_train=300, max_iter=1000).evaluate(state, step=0)
  data = ctx.dataset
  for i in range(2):
    encoder = one_seed(state, i, 2).generator["encoder"]
    codes = lambda images: np.asarray(model.encode(ctx.nets, config, encoder, images)
                                      ).reshape(len(images), -1)
    expected = frozen_probe.fit_linear_probe(
        (codes(data.train.images[:300]), data.train.labels[:300]),
        (codes(data.valid.images), data.valid.labels), (codes(data.test.images), data.test.labels))
    # The codes are equal up to float32 rounding: at most one prediction may flip.
    tolerance = 1.5 / min(len(data.valid.labels), len(data.test.labels))
    for name in ("frozen_probe_valid_acc", "frozen_probe_test_acc"):
      assert abs(result.metrics[name][i] - expected[name]) <= tolerance, (name, i)


def test_pictures_are_uint8_grids_of_seed_zero():
  config = tiny.get_config()
  ctx, state = setup(config)
  result = pictures.Evaluator(ctx, scale=2).evaluate(state, step=0)
  assert sorted(result.pictures) == ["interpolation", "mixes"]
  mixes = result.pictures["mixes"]
  n, size = config.num_pictures, config.data.image_size
  assert mixes.dtype == np.uint8
  assert mixes.shape == (2 * (4 * (size + 2) + 2), 2 * (n * (size + 2) + 2), 1)
  assert result.metrics == {}


def test_spiral_evaluator_measures_every_seed_and_draws_seed_zero():
  config = spiral_config.get_config()
  config.num_seeds = 2
  config.batch_size = 16
  ctx, state = setup(config)
  result = spiral_eval.Evaluator(ctx, num_points=100).evaluate(state, step=0)
  assert len(result.metrics["spiral_mix_mean_distance"]) == 2
  assert all(0 <= f <= 1 for f in result.metrics["spiral_mix_within_tol"])
  assert result.pictures["spiral"].shape == (512, 512, 3)


def test_config_evals_is_validated_in_one_line(config_error):
  error = config_error
  assert "no evaluator module 'amr_jax.evaluators.fid'; allowed: one of disentanglement, " \
         "frozen_probe, pictures, probe, reconstruction, spiral" in error(
             lambda c: c.evals.update(fid={"every": 0}))
  assert "config.evals.probe.every=-5" in error(lambda c: setattr(c.evals.probe, "every", -5))
  assert "not allowed with data.name='digits'" in error(
      lambda c: c.evals.update(spiral={"every": 0}))
  assert "config.evals.pictures.colour is not an option" in error(
      lambda c: c.evals.pictures.update(colour=1))
  assert "config.evals.pictures.scale=0" in error(lambda c: c.evals.pictures.update(scale=0))
  assert "'no_such.module'" in error(
      lambda c: c.evals.update(mine={"every": 0, "module": "no_such.module"}))
  assert "config.evals.common" in error(lambda c: c.evals.update(common={"every": 0}))


def test_results_of_two_evaluators_may_not_share_a_name():
  class Same(common.Evaluator):
    def evaluate(self, state, step):
      return common.Evaluation(metrics={"x": [1.0]})

  scheduled = [common.Scheduled("a", 1, Same(None)), common.Scheduled("b", 2, Same(None))]
  assert common.run_due(scheduled, None, step=1, is_last=False).metrics == {"x": [1.0]}
  with pytest.raises(ValueError, match="evaluator 'b' returned metrics \\['x'\\]"):
    common.run_due(scheduled, None, step=2, is_last=False)


def tensorboard_tags(workdir):
  """{kind ("scalars", "images", ...): set of tags} in the run's TensorBoard event files, as
  TensorBoard's reader sees them."""
  # pylint: disable-next=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  return {kind: set(tags) for kind, tags in events.Tags().items() if isinstance(tags, list)}


def test_each_evaluator_runs_at_its_own_period_and_pictures_reach_tensorboard(tmp_path):
  config = tiny.get_config()  # 4 steps, eval_every 2
  config.evals.pictures.every = 4
  config.evals.reconstruction = {"every": 1, "num_examples": 20}
  _, summary = train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = {r["step"]: r for r in map(json.loads, f)}
  assert [s for s, r in records.items() if "valid_probe_acc" in r] == [2, 4]
  assert [s for s, r in records.items() if "valid_recon_l1" in r] == [1, 2, 3, 4]
  assert sorted(os.listdir(tmp_path / "images")) == ["step_0000004_interpolation.png",
                                                      "step_0000004_mixes.png"]
  assert summary["best_step"] in (2, 4)
  tags = tensorboard_tags(tmp_path)
  assert {"interpolation", "mixes"} <= tags["images"]
  assert "valid_recon_l1" in tags["scalars"]


def test_an_evaluator_from_the_users_own_module(tmp_path, monkeypatch):
  """One file (README's example, copied outside the package) plus one config line."""
  package = tmp_path / "my_metrics"
  package.mkdir()
  shutil.copy(reconstruction.__file__, package / "recon.py")
  monkeypatch.syspath_prepend(str(tmp_path))
  config = tiny.get_config()
  config.num_train_steps = 2
  config.evals = ml_collections.ConfigDict({"mine": {"every": 0, "module": "my_metrics.recon",
                                                      "num_examples": 10}})
  _, summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f][-1]
  assert last["step"] == 2 and last["valid_recon_l1"] > 0
  assert summary == {"step": 2}  # no probe configured: nothing checkpointed by evaluators
  assert not (tmp_path / "run" / "images").exists()


def test_readme_shows_the_example_evaluator():
  from tests.test_readme_snippet import readme_section  # pylint: disable=g-import-not-at-top
  source = pathlib.Path(reconstruction.__file__).read_text().splitlines()
  start = source.index("# [START evaluator]")
  example = "\n".join(source[start + 1:source.index("# [END evaluator]")]).strip("\n")
  section = readme_section((ROOT / "README.md").read_text(), "Adding your own metric")
  assert section is not None and example in section
  assert 'config.evals.reconstruction = {"every": 0}' in section
