"""Worker for tests/test_xla_flags.py: ``python -m tests.xla_flags_worker OUT`` trains the tiny
config's step 3 times (plus one more, the negative control) after ``xla_flags.apply_defaults()``
(on or off by AMR_JAX_DEFAULT_XLA_FLAGS) and saves the states and the XLA_FLAGS it ran with."""

import os
import sys

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

from amr_jax import xla_flags  # noqa: E402

xla_flags.apply_defaults()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from amr_jax import networks  # noqa: E402
from amr_jax import train_state as train_state_lib  # noqa: E402
from amr_jax import train_step as train_step_lib  # noqa: E402
from experiments.configs import tiny  # noqa: E402


def flatten(tree, prefix):
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def main(out):
  config = tiny.get_config()  # g_every 2: both step variants run
  nets = networks.build("acai32", image_channels=1, num_classes=10, width=config.arch.width,
                        latent_channels=config.arch.latent_channels)
  optimizers = train_state_lib.make_optimizers(config.optim)
  state = train_state_lib.create(nets, optimizers, jax.random.key(0), (32, 32, 1), (4, 4, 2))
  step = jax.jit(train_step_lib.make_train_step(config, nets, optimizers), static_argnums=3)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  for i in range(4):
    if i == 3:
      saved = flatten(state, "state")
    state, _ = step(state, batch, jax.random.key(i), i % config.g_every == 0)
  np.savez(out, xla_flags=np.asarray(os.environ.get("XLA_FLAGS", "")), **saved,
           **flatten(state, "extra"))


if __name__ == "__main__":
  main(sys.argv[1])
