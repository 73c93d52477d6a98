"""SVHN (cropped, no 'extra'), dim 32 (Table 1): AMR with mixup, lamb 10.

Dim 256 (Table 3): --config.arch.latent_channels=16 --config.lamb=5.
Training-set ablation (Table 2): --config.data.num_train=1000 (5000, 10000, 20000).
"""

from amr_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "svhn_cropped"
  config.lamb = 10.0
  config.num_train_steps = 66_000 * 100 // 64
  return config
