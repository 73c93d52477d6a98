"""Pictures of what the model does: reconstructions, decoded mixes and interpolation strips.

Seed 0's model on the first ``config.num_pictures`` validation images, with a fixed key (the
same partners and mixes at every evaluation, so pictures compare across steps). See
``visualize.grids`` for the layout of 'mixes', 'interpolation' and 'attribute_mixes'.
"""

from __future__ import annotations

from typing import Any

import jax

from amr_jax import data as data_lib
from amr_jax import model
from amr_jax import parallel
from amr_jax import visualize
from amr_jax.evaluators import common
from amr_jax.train_state import TrainState

_PICTURES = 2  # the pictures' random stream of the seed (init 0, train 1)


class Evaluator(common.Evaluator):
  OPTIONS = {"scale": 2}  # enlargement of the grids, so small digits show
  DATASETS = tuple(name for name in data_lib.DATASETS if name != "spiral")  # images only

  def __init__(self, context: common.Context, **options: Any):
    super().__init__(context, **options)
    config, nets = context.config, context.nets
    seed = context.seeds[0]
    # The key is made inside the jitted function: no host-local array enters it (multi-process).
    self._generate = jax.jit(
        lambda s, x: model.generated_images(
            config, nets, s, x, jax.random.fold_in(jax.random.key(seed), _PICTURES)),
        out_shardings=parallel.replicated(context.mesh))
    self._images = parallel.replicate(context.mesh,
                                      context.dataset.valid.images[:config.num_pictures])

  def evaluate(self, state: TrainState, step: int) -> common.Evaluation:
    del step
    pictures = parallel.to_host(self._generate(self.context.select(state, 0), self._images))
    return common.Evaluation(pictures=visualize.grids(pictures, self.options["scale"]))
