"""A tiny config for tests: a few steps of a narrow model on the scikit-learn digits."""

from amr_jax.config import base_config


def get_config(arg: str | None = None):
  """``arg``: optionally a row name for runner tests: 'ae_gan', 'mixup' (default) or 'bern'."""
  config = base_config()
  if arg == "ae_gan":
    config.model = "ae_gan"
  elif arg == "bern":
    config.mixer = "bernoulli"
  elif arg not in (None, "mixup"):
    raise ValueError(f"unknown tiny row {arg!r}; allowed: ae_gan, mixup, bern")
  config.data.name = "digits"
  config.data.download = False  # Tests never download (one that sets a TFDS dataset, too).
  config.arch.width = 2
  config.batch_size = 8
  config.g_every = 2
  config.num_train_steps = 4
  config.log_every = 2
  config.eval_every = 2
  config.checkpoint_every = 2
  config.eval_batch_size = 100
  config.num_pictures = 4
  return config
