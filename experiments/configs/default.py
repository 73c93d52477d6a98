"""A first run that needs no network: AMR (mixup) on scikit-learn's 1,797 8x8 digits.

  python -m amr_jax.main --config=experiments/configs/default.py --workdir=/tmp/amr_default

Minutes on a laptop CPU. The full experiment is experiments/configs/mnist.py.
"""

from amr_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "digits"
  config.arch.width = 8
  config.batch_size = 64
  config.g_every = 1  # few steps: let the generator learn on every one
  config.optim.probe_lr = 1e-3  # a short run: let the probe catch up with the codes quickly
  config.num_train_steps = 1_000
  config.log_every = 50
  config.eval_every = 250
  config.checkpoint_every = 250
  config.eval_batch_size = 100
  return config
