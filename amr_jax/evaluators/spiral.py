"""The appendix toy (the paper's Figure 12): do decoded mixes of spiral points lie on the spiral?

Per seed: the mean distance of decoded mixes to the curve and the fraction within
``amr_jax.spiral.TOLERANCE`` (see :func:`amr_jax.spiral.evaluate_mixes`); seed 0's mixes as a
scatter picture ('spiral').
"""

from __future__ import annotations

from typing import Any

import jax

from amr_jax import model
from amr_jax import parallel
from amr_jax import spiral
from amr_jax.evaluators import common
from amr_jax.train_state import TrainState


class Evaluator(common.Evaluator):
  """Metrics: spiral_mix_mean_distance, spiral_mix_within_tol; picture: spiral."""
  OPTIONS = {"num_points": spiral.NUM_MIX_POINTS}  # training points whose codes are mixed
  DATASETS = ("spiral",)

  def __init__(self, context: common.Context, **options: Any):
    super().__init__(context, **options)
    config, nets, mesh = context.config, context.nets, context.mesh
    self._host_points = context.dataset.train.images[:self.options["num_points"]]
    self._points = parallel.replicate(mesh, self._host_points)
    self._encode = jax.jit(
        lambda s, x: model.encode(nets, config, s.generator["encoder"], x),
        out_shardings=parallel.replicated(mesh))
    self._decode = jax.jit(
        lambda s, h: model.decode(nets, config, s.generator["decoder"], h),
        out_shardings=parallel.replicated(mesh))

  def evaluate(self, state: TrainState, step: int) -> common.Evaluation:
    config = self.context.config
    result = common.Evaluation(metrics={"spiral_mix_mean_distance": [],
                                        "spiral_mix_within_tol": []})
    for i, seed in enumerate(self.context.seeds):
      seed_state = self.context.select(state, i)
      stats, mixes = spiral.evaluate_mixes(
          self._points, seed, encode_fn=lambda x: self._encode(seed_state, x),
          decode_fn=lambda h: self._decode(seed_state, h), k=config.k, mixer=config.mixer)
      result.metrics["spiral_mix_mean_distance"].append(stats["mean_distance"])
      result.metrics["spiral_mix_within_tol"].append(stats["fraction_within_tolerance"])
      if i == 0:
        result.pictures["spiral"] = spiral.render(
            self._host_points, mixes, title=f"step {step}, beta={config.beta}: mean distance "
            f"{stats['mean_distance']:.3f}, within {spiral.TOLERANCE}: "
            f"{stats['fraction_within_tolerance']:.2f}")
    return result
