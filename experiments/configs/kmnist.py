"""KMNIST, dim 32 (Table 1): AMR with mixup, lamb 10."""

from amr_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "kmnist"
  config.lamb = 10.0
  config.num_train_steps = 50_000 * 100 // 64
  return config
