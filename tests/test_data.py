"""Tests of amr_jax.data: splits, resizing, batch order, TFDS reading (mocked and real MNIST).

No network. The real-MNIST test builds the dataset from the original files in
../shared/data/mnist (relative to the project root) once per session, and is skipped when they
are absent.
"""

from __future__ import annotations

import collections
from pathlib import Path
import time

import jax
import numpy as np
import pytest

from amr_jax import data
from amr_jax.data import batching
from amr_jax.data import image as image_lib

jax.config.update("jax_disable_most_optimizations", True)

MNIST_DIR = Path(__file__).parents[2] / "shared/data/mnist"
# Class counts of the official MNIST splits.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _rows(split: data.Split) -> collections.Counter:
  """Multiset of (label, image bytes): identifies examples, duplicates included."""
  return collections.Counter(
      (int(y), x.tobytes()) for x, y in zip(split.images, split.labels))


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_dtypes_range():
  ds = data.load("digits", seed=0)
  assert (ds.name, ds.num_classes, ds.image_channels) == ("digits", 10, 1)
  for split, n in [(ds.train, 1200), (ds.valid, 300), (ds.test, 297)]:
    assert split.images.shape == (n, 32, 32, 1)
    assert split.images.dtype == np.float32
    assert split.labels.shape == (n,) and split.labels.dtype == np.int32
    assert split.images.min() == -1.0 and split.images.max() <= 1.0
    assert split.images.max() > 0.9
    assert set(np.unique(split.labels)) <= set(range(10))


def test_digits_splits_partition_the_dataset():
  from sklearn.datasets import load_digits
  raw = load_digits()
  # At image_size=8 nothing is resized, so values are exact: x / 8 - 1.
  ds = data.load("digits", seed=3, image_size=8)
  everything = data.Split(
      images=(raw.images[..., None].astype(np.float32) / 8 - 1).astype(np.float32),
      labels=raw.target.astype(np.int32))
  union = _rows(ds.train) + _rows(ds.valid) + _rows(ds.test)
  assert union == _rows(everything)  # Each example in exactly one split.


def test_digits_same_seed_same_split_other_seed_other_split():
  a, b, c = (data.load("digits", seed=s, image_size=8) for s in (1, 1, 2))
  for name in ("train", "valid", "test"):
    np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)
    np.testing.assert_array_equal(getattr(a, name).labels, getattr(b, name).labels)
  assert _rows(a.test) != _rows(c.test)
  assert not np.array_equal(a.train.labels, c.train.labels)


def test_digits_num_valid_and_num_train():
  full = data.load("digits", seed=0, image_size=8, num_valid=100)
  capped = data.load("digits", seed=0, image_size=8, num_valid=100, num_train=50)
  assert (len(full.train), len(full.valid), len(full.test)) == (1400, 100, 297)
  assert (len(capped.train), len(capped.valid)) == (50, 100)
  # Capping the training set keeps the validation set and takes a prefix of the train set.
  np.testing.assert_array_equal(capped.valid.images, full.valid.images)
  np.testing.assert_array_equal(capped.train.images, full.train.images[:50])
  with pytest.raises(ValueError, match="num_train"):
    data.load("digits", seed=0, image_size=8, num_train=5000)
  with pytest.raises(ValueError, match="num_valid"):
    data.load("digits", seed=0, image_size=8, num_valid=1500)


def _stored_positions(raw_images: np.ndarray, raw_labels: np.ndarray, split: data.Split
                      ) -> list[int]:
  """Positions in the stored dataset of a split's examples, ascending (duplicates, which cannot
  be told apart, take the lowest free positions)."""
  left = _rows(split)
  positions = []
  for i, (x, y) in enumerate(zip(raw_images, raw_labels)):
    if left[(int(y), x.tobytes())] > 0:
      left[(int(y), x.tobytes())] -= 1
      positions.append(i)
  assert not +left  # every example found
  return positions


@pytest.mark.parametrize("split_seed", [0, 5])
def test_digits_first_train_subset_is_the_first_examples_of_the_stored_split(split_seed):
  from sklearn.datasets import load_digits
  raw = load_digits()
  images = (raw.images[..., None].astype(np.float32) / 8 - 1).astype(np.float32)
  load = lambda **kw: data.load("digits", seed=split_seed, image_size=8, num_valid=100, **kw)
  full, first, seeded = load(), load(num_train=50, train_subset="first"), load(num_train=50)
  # The 50 training examples that come first in the stored dataset, in that order, whatever
  # order the split seed gave the training split; validation and test as without a cap.
  expected = _stored_positions(images, raw.target, full.train)[:50]
  np.testing.assert_array_equal(first.train.images, images[expected])
  np.testing.assert_array_equal(first.train.labels, raw.target[expected])
  for name in ("valid", "test"):
    np.testing.assert_array_equal(getattr(first, name).images, getattr(full, name).images)
  # Negative control: the seeded cap keeps another subset (a random one of the same split).
  assert _rows(seeded.train) != _rows(first.train)
  assert _rows(seeded.train) == _rows(data.Split(full.train.images[:50], full.train.labels[:50]))


def test_first_train_subset_ignores_the_order_of_the_training_split():
  from amr_jax.data import datasets
  order = np.random.default_rng(0).permutation(40)
  shuffled = np.concatenate([order[:10], np.random.default_rng(1).permutation(order[10:])])
  # Same validation set, the training part in two orders: 'first' keeps the same examples.
  for o in (order, shuffled):
    train, valid = datasets._train_valid_indices(o, 10, 7, "first")
    np.testing.assert_array_equal(train, np.sort(order[10:])[:7])
    np.testing.assert_array_equal(valid, order[:10])
  seeded = [datasets._train_valid_indices(o, 10, 7, "seeded")[0] for o in (order, shuffled)]
  assert not np.array_equal(np.sort(seeded[0]), np.sort(seeded[1]))  # negative control
  # No cap: every training example, whichever rule.
  np.testing.assert_array_equal(datasets._train_valid_indices(order, 10, -1, "first")[0],
                                order[10:])
  with pytest.raises(ValueError, match="train_subset"):
    datasets._train_valid_indices(order, 10, 7, "last")


def test_train_subset_config_field_is_validated():
  from amr_jax import config as config_lib
  config = config_lib.base_config()
  config.data.train_subset = "random"
  with pytest.raises(config_lib.ConfigError, match="data.train_subset.*'seeded', 'first'"):
    config_lib.validate(config, check_data=False)
  config.data.train_subset = "first"
  config_lib.validate(config, check_data=False)


# ---------------------------------------------------------------------------------------------
# resizing


@pytest.mark.parametrize("in_size,out_size", [(28, 32), (8, 32), (32, 16), (32, 32)])
def test_resize_matches_jax_image_resize(in_size, out_size):
  x = np.random.default_rng(0).uniform(-1, 1, (3, in_size, in_size, 2)).astype(np.float32)
  want = jax.image.resize(x, (3, out_size, out_size, 2), method="bilinear")
  got = image_lib.resize_bilinear(x, out_size, chunk=2)  # chunk < N exercises the loop.
  assert got.shape == (3, out_size, out_size, 2) and got.dtype == np.float32
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def test_resize_uint8_keeps_range():
  x = np.zeros((2, 28, 28, 1), np.uint8)
  x[0] = 255
  got = image_lib.resize_bilinear(x, 32)
  np.testing.assert_allclose(got[0], 255.0, rtol=1e-6)
  np.testing.assert_array_equal(got[1], 0.0)


# ---------------------------------------------------------------------------------------------
# batch_indices


def test_batch_indices_is_pure():
  a = data.batch_indices(7, 123, 1000, 32)
  batching.epoch_permutation.cache_clear()
  b = data.batch_indices(7, 123, 1000, 32)
  assert a.dtype == np.int64 and a.shape == (32,)
  np.testing.assert_array_equal(a, b)


def test_batch_indices_every_example_once_per_epoch():
  n, bs = 10, 5
  for epoch in range(3):
    seen = np.concatenate([data.batch_indices(0, s, n, bs)
                           for s in range(epoch * n // bs, (epoch + 1) * n // bs)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    np.testing.assert_array_equal(seen, batching.epoch_permutation(0, epoch, n))
  # Epochs are shuffled differently.
  assert not np.array_equal(batching.epoch_permutation(0, 0, n),
                            batching.epoch_permutation(0, 1, n))


def test_batch_indices_straddle_epochs():
  n, bs = 7, 3
  stream = np.concatenate([data.batch_indices(5, s, n, bs) for s in range(7)])  # 3 epochs
  for e in range(3):
    np.testing.assert_array_equal(stream[e * n:(e + 1) * n], batching.epoch_permutation(5, e, n))
  perm0, perm1 = batching.epoch_permutation(5, 0, n), batching.epoch_permutation(5, 1, n)
  np.testing.assert_array_equal(data.batch_indices(5, 2, n, bs), [perm0[6], perm1[0], perm1[1]])
  # A batch larger than the dataset spans several epochs.
  big = data.batch_indices(5, 0, 3, 8)
  assert big.shape == (8,) and np.array_equal(np.sort(big[:3]), np.arange(3))


def test_batch_indices_seeds_differ_and_results_are_not_shared():
  a = data.batch_indices(0, 0, 1000, 64)
  assert not np.array_equal(a, data.batch_indices(1, 0, 1000, 64))
  a[:] = -1  # The caller owns the result: the cached permutation must be unaffected.
  assert data.batch_indices(0, 0, 1000, 64).min() >= 0


# ---------------------------------------------------------------------------------------------
# TFDS with mock data


def test_load_tfds_mock_mnist(mock_tfds, tmp_path):
  with mock_tfds(40):
    ds = data.load("mnist", seed=0, data_dir=str(tmp_path), num_valid=10)
  assert (ds.name, ds.num_classes, ds.image_channels) == ("mnist", 10, 1)
  # mock_data gives every split num_examples examples.
  for split, n in [(ds.train, 30), (ds.valid, 10), (ds.test, 40)]:
    assert split.images.shape == (n, 32, 32, 1) and split.images.dtype == np.float32
    assert split.labels.shape == (n,) and split.labels.dtype == np.int32
    assert -1.0 <= split.images.min() and split.images.max() <= 1.0
  assert ds.train.images.std() > 0.1  # Random pixels, not a constant.


def test_load_tfds_mock_svhn_default_valid_and_num_train(mock_tfds, tmp_path):
  with mock_tfds(50):
    ds = data.load("svhn_cropped", seed=1, data_dir=str(tmp_path), num_train=20)
  assert ds.image_channels == 3
  assert (len(ds.train), len(ds.valid), len(ds.test)) == (20, 5, 50)  # valid = 10% of 50
  assert ds.train.images.shape[1:] == (32, 32, 3)


# ---------------------------------------------------------------------------------------------
# check_available


def test_check_available_unknown_name():
  with pytest.raises(ValueError, match=r"data.name='imagenet'.*digits") as e:
    data.check_available("imagenet")
  assert "\n" not in str(e.value)


def test_check_available_digits():
  data.check_available("digits")
  data.check_available("digits", manual_dir="/does/not/matter", data_dir="/nor/this")


def test_check_available_missing_dataset(tmp_path):
  with pytest.raises(ValueError, match="manual_dir") as e:
    data.check_available("cifar10", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "data.name='cifar10'" in msg and str(tmp_path) in msg
  with pytest.raises(ValueError, match="manual_dir"):  # load checks before anything else.
    data.load("cifar10", seed=0, data_dir=str(tmp_path))


def test_check_available_bad_manual_dir(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    data.check_available("mnist", manual_dir=str(tmp_path / "nope"), data_dir=str(tmp_path))
  # An existing folder without the original files: names the missing ones.
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
    data.check_available("mnist", manual_dir=str(tmp_path), data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# real MNIST, built offline from the original files


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory):
  if not MNIST_DIR.is_dir():
    pytest.skip(f"original MNIST files not found at {MNIST_DIR}")
  data_dir = tmp_path_factory.mktemp("tfds")
  data.check_available("mnist", manual_dir=str(MNIST_DIR), data_dir=str(data_dir))
  start = time.perf_counter()
  ds = data.load("mnist", seed=0, manual_dir=str(MNIST_DIR), data_dir=str(data_dir))
  print(f"built and loaded MNIST in {time.perf_counter() - start:.1f} s")
  return data_dir, ds


def test_real_mnist(real_mnist):
  data_dir, ds = real_mnist
  assert (ds.num_classes, ds.image_channels) == (10, 1)
  for split, n in [(ds.train, 50_000), (ds.valid, 10_000), (ds.test, 10_000)]:
    assert split.images.shape == (n, 32, 32, 1) and split.images.dtype == np.float32
    assert split.images.min() == -1.0 and split.images.max() <= 1.0
  np.testing.assert_array_equal(np.bincount(ds.test.labels), MNIST_TEST_COUNTS)
  np.testing.assert_array_equal(
      np.bincount(ds.train.labels) + np.bincount(ds.valid.labels), MNIST_TRAIN_COUNTS)
  # Now prepared: available without the manual folder; the build left no scratch behind.
  data.check_available("mnist", data_dir=str(data_dir))
  assert sorted(p.name for p in data_dir.iterdir()) == ["mnist"]
