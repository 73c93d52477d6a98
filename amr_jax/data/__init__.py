"""Input pipeline: in-memory datasets and a resumable, seeded batch order.

``load`` returns train / valid / test splits as numpy arrays ((N, H, W, C) float32 in [-1, 1],
(N,) int32 labels, and for 'dsprites' and 'celeb_a' (N, A) float32 binary attributes);
``batch_indices(seed, step, ...)`` says which training examples form the batch at a step, as a
pure function, so resumed runs see the same batches; ``Prefetcher`` builds them ahead in a
background thread.
``check_available`` tells, before anything compiles, whether ``load`` can get the data: prepared,
built offline from its original files, or (``download=True``) downloaded by TFDS.
"""

from __future__ import annotations

from amr_jax.data.batching import batch_indices
from amr_jax.data.datasets import CELEBA_DEFAULT_ATTRIBUTES
from amr_jax.data.datasets import DATASETS
from amr_jax.data.datasets import DSPRITES_ATTRIBUTES
from amr_jax.data.datasets import Dataset
from amr_jax.data.datasets import Split
from amr_jax.data.datasets import check_available
from amr_jax.data.datasets import check_name
from amr_jax.data.datasets import load
from amr_jax.data.prefetch import Prefetcher

__all__ = ["DATASETS", "CELEBA_DEFAULT_ATTRIBUTES", "DSPRITES_ATTRIBUTES", "Dataset", "Split",
           "load", "batch_indices", "Prefetcher", "check_available", "check_name"]
