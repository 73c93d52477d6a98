"""A tiny dSprites config for tests: a few steps and cheap disentanglement metrics."""

import pathlib
import sys

if __package__ != "experiments.configs":  # loaded by path (--config=...) from any directory
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root
from experiments.configs import dsprites  # pylint: disable=g-import-not-at-top


def get_config(arg: str | None = None):
  config = dsprites.get_config(arg or "mixup")
  config.batch_size = 8
  config.g_every = 2
  config.num_train_steps = 2
  config.log_every = config.eval_every = config.checkpoint_every = 2
  config.eval_batch_size = 64
  config.num_pictures = 3
  config.data.num_valid = 64
  config.data.num_train = 256
  config.evals.disentanglement.update(num_votes=10, votes_batch=8, beta_vae_train=20,
                                      beta_vae_eval=10, beta_vae_batch=4)
  return config
