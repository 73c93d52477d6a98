"""Reading (and, offline, building) TensorFlow Datasets as numpy arrays; never downloads.

A dataset is read from ``data_dir`` when it is prepared there. Otherwise, when a manual
directory holding the dataset's original files is given, it is built from them first (building
needs TensorFlow; reading an array_record dataset does not). Nothing here ever contacts a
network: a build only starts after every file that TFDS would fetch has been found in the
manual directory, and fetching prepared data from GCS is switched off.
"""

from __future__ import annotations

import importlib.resources
import importlib.resources.abc  # pylint: disable=unused-import
import importlib.util
import os
import sys
import tempfile
from typing import Any, Callable

from absl import logging
import numpy as np

__all__ = ["import_tfds", "builder", "default_data_dir", "missing_manual_files", "prepare",
           "num_examples", "read_split"]

_READ_CHUNK = 8192


def import_tfds() -> Any:
  """Imports ``tensorflow_datasets`` lazily (the 'digits' data never needs it)."""
  # tensorflow-datasets 4.9.10 imports the `importlib_resources` backport when it builds a
  # dataset but only declares it for Python < 3.9 (tensorflow/datasets#11212). The stdlib
  # module has the one attribute it uses (`abc.Traversable`), so stand it in when missing.
  if importlib.util.find_spec("importlib_resources") is None:
    sys.modules.setdefault("importlib_resources", importlib.resources)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def default_data_dir() -> str:
  """TFDS's default data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  import_tfds()
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  return os.path.expanduser(constants.DATA_DIR)


def builder(name: str, data_dir: str) -> Any:
  """Returns the TFDS builder for ``name``; constructing it reads metadata only."""
  tfds = import_tfds()
  # No file_format here: for a dataset prepared as tfrecord, tfds.builder(...,
  # file_format="array_record") raises "File format is already set". `prepare` passes the
  # format to download_and_prepare instead.
  return tfds.builder(name, data_dir=data_dir or None)


def missing_manual_files(dataset_builder: Any, manual_dir: str) -> list[str]:
  """Names of the original files that TFDS would download and ``manual_dir`` lacks."""
  url_infos = dataset_builder.url_infos or {}
  names = sorted({info.filename for info in url_infos.values() if info.filename})
  return [n for n in names if not os.path.exists(os.path.join(manual_dir, n))]


def prepare(dataset_builder: Any, manual_dir: str, data_root: str) -> None:
  """Builds the dataset offline from the original files in ``manual_dir``.

  The caller has checked (with :func:`missing_manual_files`) that every file is there, so
  TFDS finds them all locally and has nothing to download. ``data_root`` is the data_dir the
  builder writes under (scratch space goes there too).
  """
  tfds = import_tfds()
  if importlib.util.find_spec("tensorflow") is None:
    raise ValueError(
        f"building {dataset_builder.name!r} from data.manual_dir={manual_dir!r} needs "
        f"TensorFlow, which is not installed: pip install tensorflow-cpu")
  os.makedirs(data_root, exist_ok=True)
  # TFDS copies the (extracted) originals into download_dir; keep that scratch next to the
  # data (same disk) and delete it afterwards instead of leaving a second copy behind.
  with tempfile.TemporaryDirectory(prefix="amr_jax_build_", dir=data_root) as scratch:
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    logging.info("Building %s from %s into %s", dataset_builder.name, manual_dir,
                 dataset_builder.data_dir)
    dataset_builder.download_and_prepare(download_dir=scratch, download_config=config,
                                         file_format="array_record")


def num_examples(dataset_builder: Any, split: str) -> int:
  """Number of examples in a split of a prepared dataset."""
  try:
    return len(dataset_builder.as_data_source(split=split))
  except NotImplementedError:  # Prepared as tfrecord.
    return int(dataset_builder.info.splits[split].num_examples)


def _nth(batch: Any, i: int) -> Any:
  """Example ``i`` of a batched (nested dict of arrays) example."""
  if isinstance(batch, dict):
    return {k: _nth(v, i) for k, v in batch.items()}
  return batch[i]


def read_split(dataset_builder: Any, split: str, *, indices: np.ndarray | None = None,
               targets: Callable[[dict[str, Any]], Any] | None = None,
               transform: Callable[[np.ndarray], np.ndarray] | None = None,
               chunk: int = _READ_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split, or some of its examples, into memory.

  Args:
    dataset_builder: a prepared builder with an 'image' feature.
    split: the split's name.
    indices: positions in the split of the examples to read (distinct ints), in the order they
      are wanted; None reads all of them, in order.
    targets: maps one decoded example (a dict) to its target; default ``ex["label"]``.
    transform: maps a chunk of decoded images (n, H, W, C) uint8 to what is kept of them
      ((n, ...) any dtype, e.g. cropped and resized), so that the full-size images of a large
      split never all exist at once; default keeps them as they are.
    chunk: examples decoded at once (bounds the memory of a chunk of full-size images).

  Returns:
    images: (N, H, W, C) uint8, or what ``transform`` makes of them.
    targets: (N, ...) as ``targets`` gives them; by default the labels, (N,) int64.
  """
  targets = targets or (lambda ex: ex["label"])
  transform = transform or (lambda x: x)
  try:
    # array_record: random access, decoded by PIL, no TensorFlow needed.
    source = dataset_builder.as_data_source(split=split)
  except NotImplementedError:
    # Prepared as tfrecord (the format `tfds build` writes by default): read through tf.data.
    source = None
  num = len(source) if source is not None else num_examples(dataset_builder, split)
  if num == 0:
    raise ValueError(f"split {split!r} of {dataset_builder.name!r} is empty")
  if indices is None:
    indices = np.arange(num)
  indices = np.asarray(indices, dtype=np.int64).reshape(-1)
  if indices.size and (indices.min() < 0 or indices.max() >= num):
    raise IndexError(f"indices must be in [0, {num}) for split {split!r} of "
                     f"{dataset_builder.name!r}; got [{indices.min()}, {indices.max()}]")
  if len(np.unique(indices)) != len(indices):
    raise ValueError("indices must be distinct")
  # Read in the split's order (sequential reads), and put each example where it is wanted.
  where = np.argsort(indices, kind="stable")
  wanted = indices[where]
  if not len(wanted):
    # Nothing to read, but the result still needs the shapes: process example 0 and drop it.
    images, values = read_split(dataset_builder, split, indices=np.array([0]), targets=targets,
                                transform=transform, chunk=chunk)
    return images[:0], values[:0]

  out_images = out_targets = None

  def store(positions: np.ndarray, examples: list[dict[str, Any]]) -> None:
    nonlocal out_images, out_targets
    x = np.asarray(transform(np.stack([np.asarray(ex["image"]) for ex in examples])))
    y = np.stack([np.asarray(targets(ex)) for ex in examples])
    if out_images is None:
      out_images = np.empty((len(wanted),) + x.shape[1:], x.dtype)
      out_targets = np.empty((len(wanted),) + y.shape[1:], y.dtype)
    out_images[positions] = x
    out_targets[positions] = y

  if source is not None:
    for start in range(0, len(wanted), chunk):
      keys = wanted[start:start + chunk]
      store(where[start:start + chunk], source.__getitems__([int(k) for k in keys]))
  else:
    tfds = import_tfds()
    # Stream the split in batches and keep the wanted examples (tfrecord has no random access).
    done, seen = 0, 0
    for batch in tfds.as_numpy(dataset_builder.as_dataset(split=split, batch_size=chunk)):
      size = len(batch["image"])
      # The wanted positions within this batch: wanted[done:stop] (wanted is sorted).
      stop = int(np.searchsorted(wanted, seen + size))
      if stop > done:
        store(where[done:stop], [_nth(batch, int(k - seen)) for k in wanted[done:stop]])
      done, seen = stop, seen + size
      if done == len(wanted):
        break
  return out_images, out_targets
