"""Deterministic batch order: the batch at a step is a pure function of (seed, step).

The stream of training examples is the concatenation of per-epoch permutations; epoch ``e``
uses ``np.random.default_rng([seed, e]).permutation(num_examples)``. A resumed run therefore
sees exactly the batches it would have seen without the interruption, with nothing to
checkpoint but the step.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["batch_indices", "epoch_permutation"]


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """Returns the read-only (num_examples,) int64 permutation used in ``epoch``."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)
  perm.flags.writeable = False  # Shared through the cache.
  return perm


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Indices of the training examples in the batch at ``step``.

  The batch is positions ``[step * batch_size, (step + 1) * batch_size)`` of the stream of
  epoch permutations, so it may straddle two (or, if ``batch_size > num_examples``, more)
  epochs; every example appears exactly once per epoch.

  Args:
    seed: non-negative data seed.
    step: non-negative step number.
    num_examples: size of the training set.
    batch_size: examples per batch.

  Returns:
    (batch_size,) int64 array of indices in ``[0, num_examples)``.
  """
  if seed < 0 or step < 0:
    raise ValueError(f"seed and step must be non-negative; got seed={seed}, step={step}")
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(f"num_examples and batch_size must be positive; got "
                     f"num_examples={num_examples}, batch_size={batch_size}")
  start = step * batch_size
  stop = start + batch_size
  first_epoch, last_epoch = start // num_examples, (stop - 1) // num_examples
  if first_epoch == last_epoch:
    offset = first_epoch * num_examples
    return epoch_permutation(seed, first_epoch, num_examples)[start - offset:stop - offset].copy()
  stream = np.concatenate([epoch_permutation(seed, e, num_examples)
                           for e in range(first_epoch, last_epoch + 1)])
  offset = first_epoch * num_examples
  return stream[start - offset:stop - offset]
