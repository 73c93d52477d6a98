"""TFDS downloads (data.download) without network: tests/fake_download.py replaces the HTTP
transport (serving a small fake MNIST, or failing as on a machine without network) and MNIST's
registered checksums; TFDS's downloader, checksum check and build run for real (they need
TensorFlow: skipped without it)."""

from __future__ import annotations

import collections
import errno
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from amr_jax import config as config_lib
from amr_jax import data
from amr_jax.data import tfds_source
from tests import children
from tests import fake_download

ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = [name for pair in fake_download.FILES.values() for name in pair]


@pytest.fixture
def fake(monkeypatch):
  """``fake(failure="", delay_s=0)``: installs the fake transport; returns its request log."""
  pytest.importorskip("tensorflow")

  def install(failure: str = "", delay_s: float = 0.0) -> list[tuple[str, str]]:
    requests_sent = []
    fake_download.install(monkeypatch.setattr, lambda *r: requests_sent.append(r),
                          failure=failure, delay_s=delay_s)
    return requests_sent

  return install


@pytest.fixture
def prepare_calls(monkeypatch):
  """Records the keyword arguments of every DatasetBuilder.download_and_prepare call."""
  tfds = tfds_source.import_tfds()
  calls = []
  real = tfds.core.DatasetBuilder.download_and_prepare

  def recorded(self, **kwargs):
    calls.append(kwargs)
    return real(self, **kwargs)

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", recorded)
  return calls


def _examples(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
  """Multiset of (label, pixels): TFDS stores a split's examples in its own order."""
  return collections.Counter((int(y), x.tobytes()) for x, y in zip(images, labels))


def _as_uint8(split: data.Split) -> np.ndarray:
  """Images at 28x28 (not resized) back from [-1, 1] to 0..255."""
  return np.rint((split.images[..., 0] + 1) * 127.5).astype(np.uint8)


def _assert_names_both_ways(message: str, reason: str) -> None:
  assert "\n" not in message
  assert reason in message
  assert "data.download=True" in message and "network" in message  # way 1: download
  assert "--config.data.manual_dir=DIR" in message  # way 2: the originals, each named
  assert all(name in message for name in MNIST_FILES)


def test_download_prepares_into_data_dir_and_later_loads_read_it(fake, prepare_calls,
                                                                  tmp_path):
  sent = fake()
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match="data.download=False"):  # Off: nothing is fetched.
    data.check_available("mnist", data_dir=data_dir)
  assert sent == []

  ds = data.load("mnist", seed=0, image_size=28, data_dir=data_dir, num_valid=10, download=True)
  # One reachability check of the host, then each original file once.
  assert sent[0][0] == "HEAD" and sent[0][1].startswith(fake_download.URL)
  assert sorted(sent[1:]) == sorted(("GET", fake_download.URL + n) for n in MNIST_FILES)
  # TFDS's usual download_and_prepare: no manual_dir, array_record, the downloads kept in
  # data_dir/downloads; nothing else left in data_dir (no lock file).
  (call,) = prepare_calls
  assert call["file_format"] == "array_record" and call.get("download_dir") is None
  assert call["download_config"].manual_dir is None
  assert sorted(os.listdir(data_dir)) == ["downloads", "mnist"]
  # What was served is what is read: every example of the fake's splits.
  train_images, train_labels = fake_download.fake_split("train")
  test_images, test_labels = fake_download.fake_split("test")
  assert _examples(_as_uint8(ds.test), ds.test.labels) == _examples(test_images, test_labels)
  assert (_examples(_as_uint8(ds.train), ds.train.labels)
          + _examples(_as_uint8(ds.valid), ds.valid.labels)
          == _examples(train_images, train_labels))

  # Prepared now: later loads read it, without a request or a build, download on or off.
  again = data.load("mnist", seed=0, image_size=28, data_dir=data_dir, num_valid=10)
  data.load("mnist", seed=0, image_size=28, data_dir=data_dir, num_valid=10, download=True)
  assert len(sent) == 5 and len(prepare_calls) == 1
  np.testing.assert_array_equal(again.test.images, ds.test.images)


def test_manual_dir_builds_offline_even_with_download_on(fake, prepare_calls, tmp_path):
  sent = fake()
  manual_dir = tmp_path / "originals"
  manual_dir.mkdir()
  for name, body in fake_download.original_files().items():
    (manual_dir / name).write_bytes(body)
  data_dir = str(tmp_path / "tfds")
  ds = data.load("mnist", seed=0, image_size=28, data_dir=data_dir, num_valid=10,
                 manual_dir=str(manual_dir), download=True)
  assert sent == []  # No request at all, not even the reachability check.
  (call,) = prepare_calls
  assert call["download_config"].manual_dir == str(manual_dir)
  assert sorted(os.listdir(data_dir)) == ["mnist"]  # The build's scratch is gone.
  test_images, test_labels = fake_download.fake_split("test")
  assert _examples(_as_uint8(ds.test), ds.test.labels) == _examples(test_images, test_labels)
  # Files missing from manual_dir are named; it never falls back to downloading them.
  (manual_dir / MNIST_FILES[0]).unlink()
  with pytest.raises(ValueError, match=MNIST_FILES[0]) as e:
    data.check_available("mnist", data_dir=str(tmp_path / "other"), manual_dir=str(manual_dir),
                         download=True)
  assert "leave data.manual_dir empty to let TFDS download" in str(e.value)
  assert sent == []


def test_no_network_fails_at_once_in_one_line_naming_both_ways(fake, prepare_calls, tmp_path):
  sent = fake(failure="offline")
  data_dir = tmp_path / "tfds"
  reason = "cannot reach storage.googleapis.com: ConnectionError:"
  with pytest.raises(ValueError) as e:
    data.check_available("mnist", data_dir=str(data_dir), download=True)
  _assert_names_both_ways(str(e.value), reason)
  with pytest.raises(ValueError) as e:
    data.load("mnist", seed=0, data_dir=str(data_dir), download=True)
  _assert_names_both_ways(str(e.value), reason)
  # One request per check, no retries, no download started, nothing written.
  assert [method for method, _ in sent] == ["HEAD", "HEAD"]
  assert prepare_calls == [] and not data_dir.exists()


@pytest.mark.parametrize("failure, reason", [
    # What TFDS raised here (no network) after retrying each file for about 200 s.
    ("download", "downloading failed: ConnectionError: HTTPSConnectionPool("),
    ("http404", "downloading failed: DownloadError: Failed to get url"),
])
def test_a_failing_download_fails_in_one_line_naming_both_ways(fake, prepare_calls, tmp_path,
                                                                failure, reason):
  fake(failure=failure)
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError) as e:
    data.load("mnist", seed=0, data_dir=str(data_dir), download=True)
  _assert_names_both_ways(str(e.value), reason)
  assert len(prepare_calls) == 1
  assert not tfds_source.builder("mnist", str(data_dir)).is_prepared()
  assert not (data_dir / ".mnist.amr_jax.lock").exists()


def test_download_off_never_touches_the_network(fake, tmp_path):
  sent = fake(failure="offline")
  with pytest.raises(ValueError) as e:
    data.load("mnist", seed=0, data_dir=str(tmp_path))
  _assert_names_both_ways(str(e.value), "TFDS cannot download it here: data.download=False")
  assert sent == []


def test_download_needs_tensorflow_to_build(fake, monkeypatch, tmp_path):
  sent = fake()
  monkeypatch.setattr(tfds_source, "building_available", lambda: False)
  with pytest.raises(ValueError) as e:
    data.check_available("mnist", data_dir=str(tmp_path), download=True)
  _assert_names_both_ways(str(e.value), "TensorFlow, which building needs, is not installed")
  assert sent == []


def test_config_data_download(fake, config_error, tmp_path):
  assert config_lib.base_config().data.download is True
  # (ConfigDict keeps a bool field bool, but lets None replace it.)
  assert config_error(lambda c: c.data.update(download=None)) == (
      "config.data.download=None is not allowed; allowed: True or False")
  config = config_lib.base_config()
  config.data.data_dir = str(tmp_path)
  sent = fake()
  config_lib.validate(config, num_devices=1)  # Not prepared, but TFDS can download it.
  assert [method for method, _ in sent] == ["HEAD"]
  config.data.download = False
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config, num_devices=1)
  _assert_names_both_ways(str(e.value), "data.download=False")
  assert len(sent) == 1


def test_processes_sharing_a_data_dir_download_once(tmp_path):
  """Two processes load at the same moment into one data_dir: one downloads and builds, the
  other waits for it and reads; both get the same data."""
  pytest.importorskip("tensorflow")
  data_dir, log, go = tmp_path / "tfds", tmp_path / "requests.log", tmp_path / "go"
  procs = []
  for i in range(2):
    args = [str(data_dir), str(tmp_path / f"ready{i}"), str(go), str(log),
            str(tmp_path / f"labels{i}.npy")]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.fake_download", *args], cwd=ROOT, env=children.env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  deadline = time.monotonic() + 300
  while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.05)
  go.touch()  # Both start loading now; each GET takes 0.5 s, so the first holds the lock.
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  gets = [line.split() for line in log.read_text().splitlines() if " GET " in line]
  assert len(gets) == len(MNIST_FILES) and len({pid for pid, _, _ in gets}) == 1
  assert sum("Waiting for" in out for out in outputs) == 1, outputs  # The other one waited.
  np.testing.assert_array_equal(np.load(tmp_path / "labels0.npy"),
                                np.load(tmp_path / "labels1.npy"))
  assert sorted(os.listdir(data_dir)) == ["downloads", "mnist"]


def test_a_dead_holder_does_not_block_the_build_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\n"
       "from amr_jax.data import tfds_source\n"
       "with tfds_source._build_lock(sys.argv[1], 'mnist'):\n"
       "  print('held', flush=True)\n"
       "  time.sleep(600)\n", str(tmp_path)],
      cwd=ROOT, env=children.env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    lock = tmp_path / ".mnist.amr_jax.lock"
    assert f"pid {holder.pid}" in lock.read_text()  # Names its holder, for those who wait.
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  assert lock.exists()  # A killed holder cannot remove it; its lock went with it.
  holders = []

  def take_lock():
    with tfds_source._build_lock(str(tmp_path), "mnist"):  # pylint: disable=protected-access
      holders.append(lock.read_text())

  taker = threading.Thread(target=take_lock, daemon=True)
  taker.start()
  taker.join(timeout=60)  # A deadline, not a timing: a lock left blocked would wait forever.
  assert holders == [f"{socket.gethostname()} pid {os.getpid()}"]
  assert not lock.exists()


def test_without_flock_a_build_that_lost_a_race_reads_the_winners(fake, monkeypatch, tmp_path):
  """Where the file system has no flock, processes build side by side; the one whose rename
  fails (TFDS's FileExistsError) reads what the other built."""
  fake()
  import fcntl  # pylint: disable=g-import-not-at-top

  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_flock)
  real_download = tfds_source.download

  def lose_the_race(dataset_builder):
    real_download(tfds_source.builder("mnist", str(tmp_path)))  # "The other process".
    raise FileExistsError("Cannot rename incomplete.X: destination already exists")

  monkeypatch.setattr(tfds_source, "download", lose_the_race)
  ds = data.load("mnist", seed=0, image_size=28, data_dir=str(tmp_path), num_valid=10,
                 download=True)
  assert len(ds.test) == fake_download.NUM_TEST
  # A failure with nothing prepared is still reported.
  def fail(dataset_builder):
    raise FileExistsError("nothing prepared")

  monkeypatch.setattr(tfds_source, "download", fail)
  with pytest.raises(FileExistsError, match="nothing prepared"):
    data.load("mnist", seed=0, data_dir=str(tmp_path / "empty"), download=True)
