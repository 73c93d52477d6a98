"""The device's matmul roofline: the best FLOP/s of a jitted square matrix multiply."""

from __future__ import annotations

import time
from typing import Any


def roofline(n: int, dtype_name: str, reps: int, windows: int) -> dict[str, Any]:
  """Best FLOP/s of a jitted (n, n) @ (n, n) matmul, 2 n^3 FLOPs each."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype_name)
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(windows):
    t0 = time.perf_counter()
    outs = [matmul(a, b) for _ in range(reps)]
    jax.block_until_ready(outs)
    best = min(best, time.perf_counter() - t0)
    del outs
  return {"flops_per_s": 2.0 * n**3 * reps / best, "n": n, "dtype": dtype_name, "reps": reps,
          "windows": windows}
