"""MNIST, dim 32 (Table 1): AMR with mixup, lamb 10.

  python -m amr_jax.main --config=experiments/configs/mnist.py --workdir=runs/mnist \
      --config.data.manual_dir=../shared/data/mnist

Rows of Table 1 by overrides: --config.model=ae_gan --config.lamb=5 (AE+GAN);
--config.mixer=bernoulli (Bern); --config.k=3 --config.lamb=20 (mixup k=3).
"""

from amr_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "mnist"
  config.lamb = 10.0
  config.num_train_steps = 50_000 * 100 // 64  # about 100 epochs of 50k images
  return config
