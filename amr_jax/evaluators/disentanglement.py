"""Disentanglement metrics of the codes on dSprites (the paper's Table 4): FactorVAE, beta-VAE
and the AMR authors' FactorVAE variant, per seed (see :mod:`amr_jax.disentanglement`).

Images are rendered from factor indices on the host; codes are computed by the encoder, sharded
like training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amr_jax import disentanglement
from amr_jax.data import dsprites
from amr_jax.evaluators import common
from amr_jax.train_state import TrainState


class Evaluator(common.Evaluator):
  """Metrics: factor_vae_accuracy, factor_vae_active_dims, authors_factor_vae_accuracy,
  beta_vae_accuracy."""
  OPTIONS = {
      "num_votes": 800,  # FactorVAE votes (the authors: 800 of 800 samples)
      "votes_batch": 800,
      "beta_vae_train": 10_000,  # beta-VAE metric: classifier points
      "beta_vae_eval": 5_000,
      "beta_vae_batch": 64,
  }
  DATASETS = ("dsprites",)

  def __init__(self, context: common.Context, **options: Any):
    super().__init__(context, **options)
    self._encode = common.make_encode(context)

  def scores(self, state: TrainState, seed: int) -> dict[str, float]:
    """The metrics of one seed's ``state`` (no seeds axis); ``seed`` draws the factors."""
    o, ctx = self.options, self.context

    def represent(factors: np.ndarray) -> np.ndarray:
      images = dsprites.LazyImages(factors)[:]
      return common.encode_all(self._encode, state, ctx.mesh, images, ctx.config.eval_batch_size)

    sizes = dsprites.FACTOR_SIZES
    factor_vae = disentanglement.factor_vae_metric(
        represent, sizes, seed=seed, num_votes=o["num_votes"], batch_size=o["votes_batch"])
    authors = disentanglement.authors_factor_vae_metric(
        represent, sizes, seed=seed, num_votes=o["num_votes"], batch_size=o["votes_batch"])
    beta_vae = disentanglement.beta_vae_metric(
        represent, sizes, seed=seed, num_train=o["beta_vae_train"],
        num_eval=o["beta_vae_eval"], batch_size=o["beta_vae_batch"])
    return {"factor_vae_accuracy": float(factor_vae["factor_vae_accuracy"]),
            "factor_vae_active_dims": float(factor_vae["num_active_dims"]),
            "authors_factor_vae_accuracy": float(authors["authors_factor_vae_accuracy"]),
            "beta_vae_accuracy": float(beta_vae["beta_vae_accuracy"])}

  def evaluate(self, state: TrainState, step: int) -> common.Evaluation:
    del step
    per_seed = [self.scores(self.context.select(state, i), seed)
                for i, seed in enumerate(self.context.seeds)]
    return common.Evaluation(metrics={k: [s[k] for s in per_seed] for k in per_seed[0]})
