"""The appendix toy of the paper (its Figure 12): noisy points on a 2-D Archimedean spiral.

The curve, for a parameter ``t`` in [0, 1]::

    theta(t) = THETA_MIN + t * (THETA_MAX - THETA_MIN)     (2.5 turns)
    r(t)     = theta(t) / THETA_MAX                          (r = b * theta, b = 1 / THETA_MAX)
    c(t)     = (r cos theta, r sin theta)

so the curve lies in the unit disc (r from about 0.09 to 1; neighbouring turns are
2 pi / THETA_MAX ~ 0.36 apart) and noisy samples lie in roughly [-1, 1]^2. A sample is
``c(t) + noise * N(0, I)`` with ``t ~ U(0, 1)``: uniform along the parameter, so denser (per unit
of arc length) near the centre, and every quarter of ``t`` (a class of :func:`segments`) holds the
same expected number of points.

Everything is numpy and seeded; element ``i`` of a sample does not depend on how many points are
drawn, so ``make_spiral(n, seed=s)`` is a prefix of ``make_spiral(m, seed=s)`` for ``n <= m``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["THETA_MIN", "THETA_MAX", "NOISE", "NUM_SEGMENTS", "curve", "make_spiral", "segments"]

THETA_MIN = 0.5 * np.pi
THETA_MAX = THETA_MIN + 5.0 * np.pi  # 2.5 turns
NOISE = 0.02  # default std of the isotropic Gaussian noise, in data units
NUM_SEGMENTS = 4  # classes: equal quarters of the curve parameter t


def curve(t: np.ndarray) -> np.ndarray:
  """The noise-free spiral. ``t`` (...,) in [0, 1] -> points (..., 2) float64."""
  t = np.asarray(t, np.float64)
  theta = THETA_MIN + t * (THETA_MAX - THETA_MIN)
  r = theta / THETA_MAX
  return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1)


def segments(t: np.ndarray, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
  """Which of ``num_segments`` equal parts of [0, 1] each ``t`` (N,) falls in: (N,) int32."""
  t = np.asarray(t)
  return np.clip(np.floor(t * num_segments), 0, num_segments - 1).astype(np.int32)


def make_spiral(num: int, *, seed: int | Sequence[int],
                noise: float = NOISE) -> tuple[np.ndarray, np.ndarray]:
  """Samples ``num`` noisy points of the spiral.

  Args:
    num: number of points, >= 0.
    seed: an int or a sequence of ints (``numpy.random.SeedSequence`` entropy); the same seed
      always gives the same points, and a smaller ``num`` gives a prefix of a larger one.
    noise: std of the Gaussian noise added to each coordinate (0 gives clean curve points).

  Returns:
    ``points`` (num, 2) float32 and ``t`` (num,) float32, the curve parameter in [0, 1] of the
    clean point each sample was drawn around.
  """
  if num < 0:
    raise ValueError(f"num must be >= 0; got {num}")
  if noise < 0:
    raise ValueError(f"noise must be >= 0; got {noise}")
  # Separate streams for t and the noise keep the prefix property (each draws sequentially).
  t_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
  t = np.random.default_rng(t_seq).uniform(0.0, 1.0, size=num)
  eps = np.random.default_rng(noise_seq).standard_normal((num, 2))
  points = curve(t) + noise * eps
  return points.astype(np.float32), t.astype(np.float32)
