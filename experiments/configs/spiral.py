"""The appendix toy (Figure 12): AMR with mixup on a 2-D spiral, an MLP autoencoder, 2-D codes.

  python -m amr_jax.main --config=experiments/configs/spiral.py:beta=0.1 --workdir=runs/spiral_b0.1

The argument is comma-separated key=value pairs: ``beta`` (consistency weight, default 0) and
``lamb`` (reconstruction weight). The paper's claim: decoded random mixes lie on the spiral more
often as beta gets smaller; sweep e.g. beta=0, 0.1, 1, 10 and compare the logged
``spiral_mix_within_tol`` / ``spiral_mix_mean_distance`` and the scatter pictures. Other fields
as usual, e.g. ``--config.num_train_steps=500``.
"""

from __future__ import annotations

import ml_collections

from amr_jax.config import base_config

_ARGS = {"beta": 0.0, "lamb": 10.0}


def _parse(arg: str | None) -> dict[str, float]:
  """'beta=0.1,lamb=5' -> {'beta': 0.1, 'lamb': 5.0}, over the defaults in _ARGS."""
  values = dict(_ARGS)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in _ARGS:
      raise ValueError(f"spiral config argument {item!r} is not allowed; expected "
                       f"comma-separated key=value with keys {sorted(_ARGS)} (other fields: "
                       f"--config.FIELD=VALUE)")
    try:
      values[key] = float(value)
    except ValueError:
      raise ValueError(f"spiral config argument {item!r}: {value!r} is not a number") from None
  return values


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = _parse(arg)
  config = base_config()
  config.model = "amr"
  config.mixer = "mixup"
  config.k = 2
  config.lamb = args["lamb"]
  config.beta = args["beta"]
  config.g_every = 1
  config.recon_loss = "l2"

  config.data.name = "spiral"
  config.data.image_size = 2  # for mlp2d: the point dimension
  config.arch.name = "mlp2d"
  config.arch.width = 64  # hidden units of every MLP layer (3 layers in G and D)
  config.arch.latent_dim = 2
  config.arch.leaky_slope = 0.2

  config.optim.lr = 1e-3
  config.optim.probe_lr = 1e-3
  config.batch_size = 128
  config.num_train_steps = 6_000
  config.log_every = 100
  config.eval_every = 1_000
  # Points, not images: the decoded mixes against the curve (and a scatter) instead of grids.
  config.evals = {"probe": {"every": 0}, "spiral": {"every": 0}}
  config.checkpoint_every = 2_000
  config.eval_batch_size = 500
  return config
