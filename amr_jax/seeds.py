"""The seeds axis: ``config.num_seeds`` seeds ``seed, seed + 1, ...`` trained side by side.

With more than one seed every leaf of the train state has a leading seeds axis, and each seed
computes what it would compute alone: its own parameters, random draws and batch order. This
module owns the seed list, the seeds' keys and the streams derived from them, how a function is
mapped over the axis (``seed_batching``), one seed's state taken out, and per-seed results
summarised.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Streams of randomness, each derived from a seed's key; a step's key is fold_in(stream, step).
# (Stream 2 draws the pictures: amr_jax/evaluators/pictures.py.)
INIT_STREAM, TRAIN_STREAM = 0, 1


def resolve_batching(mode: str) -> str:
  """'auto' -> 'unroll' on CPU (vmapped per-seed weights make every convolution a slow grouped
  one there; see benchmarks/README.md), else 'vmap'."""
  if mode == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "vmap"
  return mode


def over_seeds(fn: Callable, mode: str, shared: tuple[int, ...] = ()) -> Callable:
  """``fn`` applied over a leading seeds axis of its arguments (except those in ``shared``,
  which every seed sees whole), inside one traced function: ``jax.vmap`` (one batched
  computation) or 'unroll' (one copy of ``fn`` per seed, results stacked). Either way each seed
  computes what it would compute alone."""
  if mode not in ("vmap", "unroll"):
    raise ValueError(f"seed batching must be 'vmap' or 'unroll'; got {mode!r}")

  def seeded(*args):
    if mode == "vmap":
      in_axes = tuple(None if i in shared else 0 for i in range(len(args)))
      return jax.vmap(fn, in_axes=in_axes)(*args)
    num_seeds = jax.tree.leaves([a for i, a in enumerate(args) if i not in shared])[0].shape[0]
    outs = [fn(*(a if i in shared else jax.tree.map(lambda x: x[s], a)
                 for i, a in enumerate(args))) for s in range(num_seeds)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return seeded


@dataclasses.dataclass(frozen=True)
class Seeds:
  """A run's seeds and how functions map over them (``batching``: 'vmap' or 'unroll', resolved).

  ``Seeds.of(config)`` is made once per run (:func:`amr_jax.train.set_up`); everything that
  touches the seeds axis asks it.
  """
  seeds: tuple[int, ...]
  batching: str

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> "Seeds":
    return cls(seeds=tuple(config.seed + i for i in range(config.num_seeds)),
               batching=resolve_batching(config.seed_batching))

  @property
  def multi(self) -> bool:
    """Whether the state has a seeds axis (more than one seed)."""
    return len(self.seeds) > 1

  def per_seed(self, fn: Callable, shared: tuple[int, ...] = ()) -> Callable:
    """``fn`` over the seeds axis (see :func:`over_seeds`); ``fn`` itself for one seed."""
    return over_seeds(fn, self.batching, shared) if self.multi else fn

  def keys(self) -> jax.Array:
    """The seeds' keys ([seeds] for several), made inside jitted functions: every process
    computes the same ones and no host-local array enters a multi-process computation."""
    if self.multi:
      return jax.vmap(jax.random.key)(jnp.asarray(self.seeds))
    return jax.random.key(self.seeds[0])

  def make_select(self, out_sharding: jax.sharding.Sharding
                  ) -> Callable[[Any, int], Any]:
    """Jitted ``select(state, i)``: seed ``i``'s state alone (the state itself for one seed)."""
    multi = self.multi
    return jax.jit(lambda s, i: jax.tree.map(lambda a: a[i], s) if multi else s,
                   static_argnums=1, out_shardings=out_sharding)


def summarise(per_seed: dict[str, list]) -> dict[str, Any]:
  """Per-seed lists -> plain values for one seed; for several, the mean under the plain name
  and the list under NAME_per_seed."""
  out = {}
  for name, values in per_seed.items():
    if len(values) == 1:
      out[name] = values[0]
    else:
      out[name] = float(np.mean(values))
      out[f"{name}_per_seed"] = values
  return out
