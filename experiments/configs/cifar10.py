"""CIFAR10, dim 256 (Table 3): AMR with mixup, lamb 50.

Dim 1024: --config.arch.latent_channels=64.
"""

from amr_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "cifar10"
  config.arch.latent_channels = 16
  config.lamb = 50.0
  config.num_train_steps = 40_000 * 100 // 64
  return config
