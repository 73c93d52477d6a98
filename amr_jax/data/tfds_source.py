"""Reading, building and downloading TensorFlow Datasets as numpy arrays.

A dataset is read from ``data_dir`` when it is prepared there. Otherwise it is prepared there
first (building needs TensorFlow; reading an array_record dataset does not), in one of two ways:

- offline, from a manual directory holding the dataset's original files: the build only starts
  after every file that TFDS would fetch has been found there, so nothing is downloaded;
- by TFDS's usual ``download_and_prepare`` (the originals are kept in ``data_dir/downloads``),
  after a bounded check that the download hosts answer: with no network TFDS itself retries
  each file for about 200 s before failing.

Processes that share a data directory take turns (a lock file beside the data), so only one
builds a dataset while the others wait and then read it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.resources
import importlib.resources.abc  # pylint: disable=unused-import
import importlib.util
import os
import socket
import sys
import tempfile
from typing import Any, Callable, Iterator
import urllib.parse

from absl import logging
import numpy as np

__all__ = ["import_tfds", "builder", "default_data_dir", "missing_manual_files",
           "original_files", "building_available", "DownloadUnavailable",
           "download_unavailable", "prepare", "download", "ensure_prepared", "num_examples",
           "read_split"]

_READ_CHUNK = 8192
# Seconds to wait for a download host to accept a connection and answer a HEAD request.
PROBE_TIMEOUT_S = 10.0


class DownloadUnavailable(Exception):
  """TFDS cannot download (or build) a dataset here; the message says why, in one line."""


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


def original_files(dataset_builder: Any) -> list[tuple[str, int]]:
  """(file name, size in bytes) of each original file TFDS downloads for the dataset."""
  return sorted((info.filename, int(info.size))
                for info in (dataset_builder.url_infos or {}).values() if info.filename)


def building_available() -> bool:
  """Whether TFDS can build (prepare) a dataset here: that needs TensorFlow."""
  return importlib.util.find_spec("tensorflow") is not None


def _one_line(error: BaseException) -> str:
  return " ".join(f"{type(error).__name__}: {error}".split())


def download_unavailable(dataset_builder: Any) -> str | None:
  """Why TFDS could not download and build the dataset here, or None if it can.

  Building needs TensorFlow. Each host the original files come from gets one HEAD request,
  bounded by :data:`PROBE_TIMEOUT_S` (proxies from the environment apply, as for TFDS's own
  download): failing to connect means no network to it. Any HTTP answer counts as reachable;
  an error status or a bad file is then TFDS's to report, and :func:`download` reports it.
  """
  if not building_available():
    return "TensorFlow, which building needs, is not installed (pip install tensorflow-cpu)"
  import requests  # pylint: disable=g-import-not-at-top  (a dependency of TFDS)
  hosts = {}
  for url in (dataset_builder.url_infos or {}):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
      hosts.setdefault(parts.netloc, url)
  for host, url in sorted(hosts.items()):
    try:
      requests.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=False).close()
    except requests.RequestException as e:
      # requests wraps urllib3's MaxRetryError, whose `reason` says what failed.
      reason = getattr(e.args[0], "reason", None) if e.args else None
      return f"cannot reach {host}: {_one_line(reason or e)}"
  return None


def download(dataset_builder: Any) -> None:
  """Downloads the original files and builds the dataset: TFDS's usual ``download_and_prepare``.

  The originals stay in TFDS's download directory (``data_dir/downloads``), so a rebuild needs
  no second download. The caller has checked :func:`download_unavailable`.

  Raises:
    DownloadUnavailable: a download failed (network, HTTP status, checksum), in one line.
  """
  tfds = import_tfds()
  # pylint: disable=g-import-not-at-top
  import requests
  from tensorflow_datasets.core.download import download_manager
  # pylint: enable=g-import-not-at-top
  logging.info("Downloading and building %s into %s", dataset_builder.name,
               dataset_builder.data_dir)
  # Prepared copies on GCS are tfrecord only; array_record is always built from the originals.
  config = tfds.download.DownloadConfig(try_download_gcs=False)
  try:
    dataset_builder.download_and_prepare(download_config=config, file_format="array_record")
  except (requests.RequestException, tfds.download.DownloadError,
          download_manager.NonMatchingChecksumError) as e:
    raise DownloadUnavailable(f"downloading failed: {_one_line(e)}") from e


def _lock_file(path: str) -> int | None:
  """An open descriptor of ``path`` holding its exclusive flock (waits for it); None where the
  file system has no flock. Retries when the holder removed the file while this one waited."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        logging.info("Waiting for %s, which holds %s", holder, path)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        logging.warning("No file locks at %s (%s): not waiting for other processes", path, e)
        return None
      raise
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # The holder removed the file as this one waited: lock the current file.


@contextlib.contextmanager
def _build_lock(data_root: str, name: str) -> Iterator[None]:
  """Holds ``data_root/.NAME.amr_jax.lock``: one process (of any host sharing ``data_root``)
  builds NAME at a time. The kernel releases the lock of a process that dies; the file is
  removed on release. Where the file system has no flock, each process builds on its own
  (TFDS writes into a temporary folder and renames it when done)."""
  os.makedirs(data_root, exist_ok=True)
  path = os.path.join(data_root, f".{name}.amr_jax.lock")
  fd = _lock_file(path)
  if fd is None:
    yield
    return
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}".encode(), 0)
    yield
  finally:
    os.unlink(path)  # Before unlocking: a waiter that then gets this file sees it is gone.
    os.close(fd)


def ensure_prepared(name: str, data_dir: str, *, manual_dir: str) -> Any:
  """The builder of ``name``, prepared in ``data_dir`` (TFDS's default when empty) first if
  needed: built from ``manual_dir`` when it is given (see :func:`prepare`), else downloaded
  (see :func:`download`). Processes sharing the data directory build one at a time, each
  checking again once it has the lock, so the first builds and the others read.

  Raises:
    DownloadUnavailable: the download failed.
  """
  dataset_builder = builder(name, data_dir)
  if dataset_builder.is_prepared():
    return dataset_builder
  data_root = data_dir or default_data_dir()
  with _build_lock(data_root, name):
    dataset_builder = builder(name, data_dir)  # Another process may have built it meanwhile.
    if dataset_builder.is_prepared():
      return dataset_builder
    try:
      if manual_dir:
        prepare(dataset_builder, manual_dir, data_root)
      else:
        download(dataset_builder)
    except Exception:
      # Without flock (or where it is not shared between hosts) two builds can race: TFDS
      # builds into a temporary folder and the later rename fails; the other's data is good.
      if not builder(name, data_dir).is_prepared():
        raise
      logging.info("%s was prepared in %s by another process meanwhile", name, data_root)
  return builder(name, data_dir)  # Re-read the metadata just written.


def prepare(dataset_builder: Any, manual_dir: str, data_root: str) -> None:
  """Builds the dataset offline from the original files in ``manual_dir``.

  The caller has checked (with :func:`missing_manual_files`) that every file is there, so
  TFDS finds them all locally and has nothing to download. ``data_root`` is the data_dir the
  builder writes under (scratch space goes there too).
  """
  tfds = import_tfds()
  if not building_available():
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
