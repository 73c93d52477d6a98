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
from typing import Any

from absl import logging
import numpy as np

__all__ = ["import_tfds", "builder", "default_data_dir", "missing_manual_files", "prepare",
           "read_split"]

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


def read_split(dataset_builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split into memory.

  Returns:
    images: (N, H, W, C) uint8.
    labels: (N,) int64.
  """
  try:
    # array_record: random access, decoded by PIL, no TensorFlow needed.
    source = dataset_builder.as_data_source(split=split)
  except NotImplementedError:
    # Prepared as tfrecord (the format `tfds build` writes by default): read through tf.data.
    tfds = import_tfds()
    arrays = tfds.as_numpy(dataset_builder.as_dataset(split=split, batch_size=-1))
    return np.asarray(arrays["image"]), np.asarray(arrays["label"])
  num = len(source)
  if num == 0:
    raise ValueError(f"split {split!r} of {dataset_builder.name!r} is empty")
  first = np.asarray(source[0]["image"])
  images = np.empty((num,) + first.shape, dtype=first.dtype)
  labels = np.empty((num,), dtype=np.int64)
  # Decoding in chunks keeps the per-example dicts from piling up for a whole split.
  for start in range(0, num, _READ_CHUNK):
    keys = list(range(start, min(start + _READ_CHUNK, num)))
    for i, ex in zip(keys, source.__getitems__(keys)):
      images[i] = ex["image"]
      labels[i] = ex["label"]
  return images, labels
