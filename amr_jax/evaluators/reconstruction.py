"""Reconstruction error on the validation split; README.md's "Adding your own metric" shows
this file (the lines between the markers) as the example of an evaluator."""

# [START evaluator]
import jax.numpy as jnp
import numpy as np

from amr_jax import model
from amr_jax import parallel
from amr_jax.evaluators import common


class Evaluator(common.Evaluator):
  """Metric: valid_recon_l1, the mean |dec(enc(x)) - x| of the first ``num_examples``
  validation examples, per seed."""
  OPTIONS = {"num_examples": 1_000}

  def __init__(self, context: common.Context, **options):
    super().__init__(context, **options)
    nets, config = context.nets, context.config

    def error_sum(state, images, weights):  # weights: 0 on the padding of the last batch
      codes = model.encode(nets, config, state.generator["encoder"], images)
      error = jnp.abs(model.decode(nets, config, state.generator["decoder"], codes) - images)
      return jnp.sum(error.reshape(len(images), -1).mean(-1) * weights)

    # Sharded like training; with several seeds, mapped over the state's seeds axis.
    self._error_sum = parallel.jit_data_parallel(
        context.per_seed(error_sum, shared=(1, 2)), context.mesh, batch_args=(1, 2), num_args=3)

  def evaluate(self, state, step: int) -> common.Evaluation:
    images = self.context.dataset.valid.images[:self.options["num_examples"]]
    batches = common.padded_batches(self.context.mesh, {"image": images},
                                    self.context.config.eval_batch_size)
    sums = [self._error_sum(state, b["image"], b["weight"]) for b in batches]
    mean = np.atleast_1d(np.sum(parallel.to_host(sums), axis=0) / len(images))
    return common.Evaluation(metrics={"valid_recon_l1": mean.tolist()})
# [END evaluator]
