"""Supervised AMR on CelebA (section 2.2, Figure 5): a mixer conditioned on the attributes
male, heavy makeup and wearing lipstick.

  python -m amr_jax.main --config=experiments/configs/celeba.py --workdir=runs/celeba \
      --config.data.data_dir=DIR_WITH_PREPARED_CELEB_A

TFDS downloads celeb_a from Google Drive, which often refuses (quotas): otherwise prepare it
with its original files in --config.data.manual_dir=DIR, or elsewhere with `tfds build celeb_a`
and copy ~/tensorflow_datasets/celeb_a (README: "Getting the data").
Faces are cropped and resized to 32x32; the probe predicts the first attribute (male).
"""

import pathlib
import sys

if __package__ != "experiments.configs":  # loaded by path (--config=...) from any directory
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root
from amr_jax.config import base_config  # pylint: disable=g-import-not-at-top

ATTRIBUTES = ("Male", "Heavy_Makeup", "Wearing_Lipstick")


def get_config(arg: str | None = None):
  del arg
  config = base_config()
  config.data.name = "celeb_a"
  config.data.attributes = ATTRIBUTES
  config.arch.width = 32
  config.arch.latent_channels = 16  # dim 256
  config.lamb = 10.0
  config.mixer = "bernoulli"
  config.supervised.enabled = True
  config.supervised.mask = "sampled"  # the paper's sampled mask (straight-through)
  config.supervised.mask_eps = 1e-4
  config.num_train_steps = 162_770 * 30 // 64  # about 30 epochs
  config.eval_every = config.checkpoint_every = 5_000
  return config
