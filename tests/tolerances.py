"""Comparing two float computations of the same thing so that the verdict holds on any host.

XLA:CPU compiles different code for each instruction set (and each fusion path), so two ways of
computing one thing (seeds side by side vs alone, 1 vs 4 devices, two processes vs one, a cond vs
two compiled variants) order their float32 sums differently, and how differently depends on the
host. A leaf's own maximum is no yardstick: a leaf of values near 2e-4 (a bias's gradient moment)
carries rounding from the much larger terms it was computed from. So differences are measured per
*group* (the leaves that play one role: the generator's parameters, the discriminator's Adam first
moments, the metrics, ...) as a relative L2 norm, ``||actual - desired|| / ||desired||`` over the
whole group:

- An L2 norm, not a maximum: Adam divides each gradient by its own RMS, so a gradient component
  that rounding leaves near zero can flip its update's sign (a move of up to 2 x lr), as large as
  a real step. Such components are few; a real difference (one more step, another seed) moves
  every component.
- ``RTOL`` = 3e-5 for parameters, spectral-norm state and metrics. Measured on the tiny config
  (tests/test_seeds.py, vmap, 2 steps): 3.6e-6 at worst (the discriminator's parameters); one
  more step: 4.2e-4 at least (the generator's parameters, lr 1e-4).
- ``RTOL_MOMENTS`` = 1e-3 for the optimisers' moments: they are gradients, in which terms of O(1)
  cancel (the last bias's gradient is mean(sigmoid(real) - 1) + mean(sigmoid(fake)), ~0), so their
  rounding scales with the loss terms, not with the gradient. Measured: 1.5e-4 at worst (the
  discriminator's first moment); one more step: 0.17 at least.

Every test that uses them also shows that a real difference (another seed, one more step) fails
the same check: ``assert_differs``.

The bounds hold where the training is a continuous function of its rounding. AMR's is not:
LeakyReLU has a kink at 0 (the L1 loss one at each zero residual), so a pre-activation within
rounding of 0 lands on either side depending on the summation order, and its slope jumps between
0.01 and 1. Measured on the tiny config (batch 16, step 0): one decoder unit of 32,768, at 2.6e-6
in float64, came out negative on 1 device and positive on 4 devices (4 examples each). That one
unit moves G's gradient by 1.2e-2 relative (float64: its channel's bias moved 4e-6 across 0,
against 3e-6 for the same move away from 0); after 6 steps G's Adam first moment differed by
1.9e-2, 19x its bound. A rounding-only change on 1 device (instance norm's two-pass variance)
moved it by the same 1.9e-2. Which two programs meet such a unit is luck: with XLA's
optimisations off (the tests' setting), 4 x 4 agreed and 2 x 8 came to 0.64 of that bound. So
tests that compare two programs over training steps train ``kink_free(config)``: there 1 vs 4
devices stayed within 2e-3 of every bound after 6 steps.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

RTOL = 3e-5
RTOL_MOMENTS = 1e-3
# Against the authors' PyTorch code (tests/test_authors_parity.py): their model cannot be made
# kink-free, so a LeakyReLU pre-activation (or an L1 residual) within rounding of 0 may take the
# other slope there than here, or on another host. One such unit moved G's gradient by 1.2e-2 (the
# 4-device case above) and, in the ACAI fixture under XLA's other convolution path, by 2.6e-3
# (2.6x RTOL_MOMENTS; 3e-5 on the default path). Gradients and Adam's first moments of those
# tests get this bound; another draw or one more step moves them by 0.2 or more.
RTOL_KINK = 2e-2

# Dict keys are layer / parameter names inside a group ("['encoder']['Conv_0']['kernel']");
# attributes and sequence indices name the group (".generator_opt[1].mu").
_DICT_KEY = re.compile(r"\['[^']*'\]")
_MOMENTS = re.compile(r"_opt\[\d+\]\.(mu|nu)$")


def kink_free(config: Any) -> Any:
  """``config`` (a train config, edited in place and returned) with a gradient continuous in every
  activation: LeakyReLU slope 1 in G and D, the L2 reconstruction loss (see the docstring)."""
  config.arch.leaky_slope = 1.0
  config.recon_loss = "l2"
  return config


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """``{path: array}`` of a pytree's leaves (``jax.tree_util.keystr`` paths); a flat dict of
  arrays (as saved by a worker process) is taken as it is."""
  if isinstance(tree, Mapping) and all(isinstance(v, np.ndarray) for v in tree.values()):
    return {k: np.asarray(v) for k, v in tree.items()}
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def group_of(name: str) -> str:
  """The group a leaf belongs to: its path without the dict keys below its role."""
  return _DICT_KEY.sub("", name) or name


def rtol_of(group: str) -> float:
  return RTOL_MOMENTS if _MOMENTS.search(group) else RTOL


def relative_errors(actual: Any, desired: Any, check_integers: bool = True) -> dict[str, float]:
  """``{group: ||actual - desired|| / ||desired||}`` over each group's float leaves; the integer
  leaves (step counters) must be equal if ``check_integers``."""
  actual, desired = flatten(actual), flatten(desired)
  assert sorted(actual) == sorted(desired), sorted(set(actual) ^ set(desired))
  squared_diff: dict[str, float] = {}
  squared_norm: dict[str, float] = {}
  for name, value in desired.items():
    assert actual[name].shape == value.shape, (name, actual[name].shape, value.shape)
    if np.issubdtype(value.dtype, np.floating):
      group, value = group_of(name), value.astype(np.float64)
      diff = actual[name].astype(np.float64) - value
      squared_diff[group] = squared_diff.get(group, 0.0) + float(np.sum(diff * diff))
      squared_norm[group] = squared_norm.get(group, 0.0) + float(np.sum(value * value))
    elif check_integers:
      np.testing.assert_array_equal(actual[name], value, err_msg=name)
  return {group: np.sqrt(squared_diff[group] / max(squared_norm[group], 1e-30))
          for group in squared_diff}


def _worst(errors: dict[str, float]) -> tuple[str, float]:
  """The group furthest beyond (or closest to) its bound, and its error as a fraction of it."""
  group = max(errors, key=lambda g: errors[g] / rtol_of(g))
  return group, errors[group] / rtol_of(group)


def assert_close(actual: Any, desired: Any) -> None:
  """Every group equal to float32 rounding (see the module's docstring)."""
  group, fraction = _worst(relative_errors(actual, desired))
  print(f"tolerances: worst group {group}: {fraction:.3g} of its bound")
  assert fraction <= 1, (
      f"{group}: relative difference {fraction * rtol_of(group):.3g} > {rtol_of(group):g}")


def assert_differs(actual: Any, desired: Any) -> None:
  """The negative control: a real difference fails the check ``assert_close`` makes."""
  group, fraction = _worst(relative_errors(actual, desired, check_integers=False))
  print(f"tolerances: negative control's worst group {group}: {fraction:.3g} of its bound")
  assert fraction > 1, f"no group differs beyond its bound (at most {fraction:.3g} of it)"
