"""A small fake MNIST behind a fake HTTP transport, so that TFDS's download runs without network.

Only the transport (``requests.adapters.HTTPAdapter.send``, what every requests Session sends
through, TFDS's downloader and amr_jax's reachability check alike) and MNIST's registered
checksums and example counts are replaced; TFDS's downloader, checksum check, extraction and
build run for real. Used in-process by tests/test_data_download.py and by the processes it
starts (``python -m tests.fake_download``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import time
from typing import Any, Callable

import numpy as np

NUM_TRAIN, NUM_TEST = 30, 20
URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fake_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The fake split's images (N, 28, 28) uint8 and labels (N,) uint8, seeded."""
  num = NUM_TRAIN if split == "train" else NUM_TEST
  rng = np.random.default_rng(0 if split == "train" else 1)
  return (rng.integers(0, 256, (num, 28, 28), dtype=np.uint8),
          rng.integers(0, 10, num, dtype=np.uint8))


def original_files() -> dict[str, bytes]:
  """File name -> gzipped IDX bytes, as MNIST's originals are laid out."""
  out = {}
  for split, (images_name, labels_name) in FILES.items():
    images, labels = fake_split(split)
    header = np.array([2051, len(images), 28, 28], ">u4").tobytes()
    out[images_name] = gzip.compress(header + images.tobytes(), mtime=0)
    out[labels_name] = gzip.compress(np.array([2049, len(labels)], ">u4").tobytes()
                                     + labels.tobytes(), mtime=0)
  return out


def install(setattr_fn: Callable[[Any, str, Any], None], record: Callable[[str, str], None], *,
            failure: str = "", delay_s: float = 0.0) -> None:
  """Replaces the HTTP transport and MNIST's checksums and sizes with the fake's.

  Args:
    setattr_fn: ``monkeypatch.setattr`` (undone after a test) or ``setattr``.
    record: called with (method, url) for every request sent.
    failure: '' serves the files; 'offline' fails every request as with no network (the
      error requests raised here when a host did not resolve); 'download' answers HEAD
      requests but fails each GET the same way; 'http404' answers every request with 404.
    delay_s: seconds each GET takes.
  """
  import requests  # pylint: disable=g-import-not-at-top
  from amr_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  tfds_source.import_tfds()
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

  files = original_files()
  setattr_fn(mnist.MNIST, "url_infos", {
      URL + name: checksums.UrlInfo(size=len(body), checksum=hashlib.sha256(body).hexdigest(),
                                    filename=name) for name, body in files.items()})
  setattr_fn(mnist, "_TRAIN_EXAMPLES", NUM_TRAIN)
  setattr_fn(mnist, "_TEST_EXAMPLES", NUM_TEST)

  def send(self, request, **kwargs):
    del self, kwargs
    record(request.method, request.url)
    if failure == "offline" or (failure == "download" and request.method == "GET"):
      host = request.url.split("/")[2]
      raise requests.exceptions.ConnectionError(
          f"HTTPSConnectionPool(host={host!r}, port=443): Max retries exceeded (Caused by "
          f"NameResolutionError(\"Failed to resolve {host!r} ([Errno -2] Name or service not "
          f"known)\"))", request=request)
    name = request.url.rsplit("/", 1)[-1]
    status = 404 if failure == "http404" or name not in files else 200
    body = files.get(name, b"") if request.method == "GET" and status == 200 else b""
    if request.method == "GET":
      time.sleep(delay_s)
    response = requests.Response()
    response.status_code, response.url, response.request = status, request.url, request
    response.headers["Content-Length"] = str(len(body))
    response.raw = io.BytesIO(body)
    return response

  setattr_fn(requests.adapters.HTTPAdapter, "send", send)


def main(data_dir: str, ready: str, go: str, log: str, out: str) -> None:
  """A process that loads MNIST with downloads on, through the fake (its GETs slowed), once the
  test creates ``go``; appends its requests to ``log`` and writes its test labels to ``out``."""
  import logging  # pylint: disable=g-import-not-at-top
  from amr_jax import data  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=logging.INFO)  # Shows who waited for whom.

  def record(method: str, url: str) -> None:
    with open(log, "a") as f:
      f.write(f"{os.getpid()} {method} {url}\n")

  install(setattr, record, delay_s=0.5)
  open(ready, "w").close()
  while not os.path.exists(go):
    time.sleep(0.01)
  ds = data.load("mnist", seed=0, image_size=28, data_dir=data_dir, num_valid=10, download=True)
  np.save(out, ds.test.labels)


if __name__ == "__main__":
  main(*sys.argv[1:])
