"""Datasets as in-memory numpy splits, resized and scaled for the models.

Every dataset comes back as :class:`Dataset`: train / valid / test :class:`Split` s of images
(N, H, W, C) float32 in [-1, 1] at the model's size, and int32 labels. The train/validation
division is a seeded permutation of the official training split (the official test split stays
the test set), following the paper's protocol (see docs: "Data and evaluation"):

- digits: seeded test 297, validation 300, train 1,200 (of 1,797).
- mnist, kmnist, fashion_mnist: validation 10,000 of the 60,000 train; official test 10,000.
- svhn_cropped: validation 10% of the 73,257 train ('extra' unused); official test 26,032.
- cifar10: validation 10,000 of the 50,000 train; official test 10,000.

'digits' is scikit-learn's 8x8 digits (shipped with it, so always available, handy for tests
and smoke runs); the others are TensorFlow Datasets, read or built offline by
:mod:`amr_jax.data.tfds_source`.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import numpy as np

from amr_jax.data import image
from amr_jax.data import tfds_source

__all__ = ["DATASETS", "Split", "Dataset", "load", "check_available"]

DATASETS = ("digits", "mnist", "kmnist", "fashion_mnist", "svhn_cropped", "cifar10")

# Validation examples taken from the official train split: a count, or a fraction of it.
_DEFAULT_VALID: dict[str, int | float] = {
    "digits": 300,
    "mnist": 10_000,
    "kmnist": 10_000,
    "fashion_mnist": 10_000,
    "svhn_cropped": 0.1,
    "cifar10": 10_000,
}
_DIGITS_TEST = 297


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in memory.

  Attributes:
    images: (N, H, W, C) float32 in [-1, 1], at the model's image size.
    labels: (N,) int32 class ids.
  """
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's three splits and what a model needs to know about them."""
  name: str
  train: Split
  valid: Split
  test: Split
  num_classes: int
  image_channels: int


def _not_available(msg: str) -> ValueError:
  # One line, so that it reads whole in a log or a failed-job summary.
  return ValueError(" ".join(msg.split()))


def check_available(name: str, *, manual_dir: str = "", data_dir: str = "") -> None:
  """Checks, without loading anything, that :func:`load` can get ``name`` offline.

  Meant to run before anything compiles. 'digits' is always available; a TFDS dataset is if it
  is prepared in ``data_dir`` (TFDS's default when empty), or if ``manual_dir`` holds all of
  its original files.

  Raises:
    ValueError: (one line) naming the offending field and value and how to provide the data.
  """
  if name not in DATASETS:
    raise _not_available(f"data.name={name!r} is not a known dataset; choose one of {DATASETS}")
  if name == "digits":
    return
  if manual_dir and not os.path.isdir(manual_dir):
    raise _not_available(
        f"data.manual_dir={manual_dir!r} does not exist (needed for data.name={name!r}); "
        f"set it to a folder with the dataset's original files, or leave it empty to read a "
        f"prepared copy from data.data_dir")
  builder = tfds_source.builder(name, data_dir)
  if builder.is_prepared():
    return
  shown_dir = data_dir or tfds_source.default_data_dir()
  if manual_dir:
    missing = tfds_source.missing_manual_files(builder, manual_dir)
    if missing:
      raise _not_available(
          f"data.manual_dir={manual_dir!r} lacks {missing}, needed to build "
          f"data.name={name!r}, which is not prepared in data_dir={shown_dir!r}; this machine "
          f"cannot download them: copy those original files (byte-exact) into the folder")
    return
  raise _not_available(
      f"data.name={name!r} is not prepared in data_dir={shown_dir!r} and data.manual_dir is "
      f"empty; this machine cannot download it: prepare it with tfds on a machine with "
      f"network (tfds build {name} --file_format=array_record) and copy "
      f"~/tensorflow_datasets/{name} into data_dir, or set --config.data.manual_dir=DIR to a "
      f"folder with its original files")


def _num_valid(name: str, num_available: int, num_valid: int) -> int:
  """Validation size: ``num_valid`` when >= 0, else the dataset's default."""
  if num_valid < 0:
    default = _DEFAULT_VALID[name]
    num_valid = (int(round(default * num_available)) if isinstance(default, float)
                 else default)
  if num_valid >= num_available:
    raise ValueError(f"data.num_valid={num_valid} leaves no training examples for "
                     f"data.name={name!r} ({num_available} to divide)")
  return num_valid


def _train_valid_indices(order: np.ndarray, num_valid: int,
                         num_train: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits a permutation into (train, valid) index arrays.

  Validation comes first, so capping the training set (``num_train >= 0``) never changes the
  validation set: runs of an ablation over training-set sizes are compared on the same one.
  """
  valid, train = order[:num_valid], order[num_valid:]
  if num_train >= 0:
    if num_train > len(train):
      raise ValueError(f"data.num_train={num_train} is more than the {len(train)} training "
                       f"examples left after {num_valid} validation examples")
    train = train[:num_train]
  return train, valid


def _to_split(images: np.ndarray, labels: np.ndarray, image_size: int, lo: float,
              hi: float) -> Split:
  """Resizes (N, H, W, C) images with values in [lo, hi] and maps them onto [-1, 1]."""
  x = image.resize_bilinear(images, image_size)
  # Resizing is linear with weights summing to 1, so rescaling after it equals before it.
  x *= np.float32(2.0 / (hi - lo))
  x += np.float32(-1.0 - 2.0 * lo / (hi - lo))
  np.clip(x, -1.0, 1.0, out=x)  # Float rounding only.
  return Split(images=x, labels=labels.astype(np.int32))


def _load_digits(seed: int, image_size: int, num_valid: int, num_train: int) -> Dataset:
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  images = digits.images.reshape(-1, 8, 8, 1)  # (1797, 8, 8, 1), values 0..16
  labels = digits.target
  # One permutation gives all three splits: test first, then validation, then train.
  order = np.random.default_rng(seed).permutation(len(labels))
  test, rest = order[:_DIGITS_TEST], order[_DIGITS_TEST:]
  train, valid = _train_valid_indices(rest, _num_valid("digits", len(rest), num_valid), num_train)

  def split(idx: np.ndarray) -> Split:
    return _to_split(images[idx], labels[idx], image_size, 0.0, 16.0)

  return Dataset(name="digits", train=split(train), valid=split(valid), test=split(test),
                 num_classes=10, image_channels=1)


def _load_tfds(name: str, seed: int, image_size: int, manual_dir: str, data_dir: str,
               num_valid: int, num_train: int) -> Dataset:
  builder = tfds_source.builder(name, data_dir)
  if not builder.is_prepared():
    # check_available has made sure manual_dir holds every original file.
    tfds_source.prepare(builder, manual_dir, data_dir or tfds_source.default_data_dir())
    builder = tfds_source.builder(name, data_dir)  # Re-read the metadata just written.
  features = builder.info.features
  num_classes = int(features["label"].num_classes)
  channels = int(features["image"].shape[-1])

  train_images, train_labels = tfds_source.read_split(builder, "train")
  order = np.random.default_rng(seed).permutation(len(train_labels))
  train, valid = _train_valid_indices(
      order, _num_valid(name, len(train_labels), num_valid), num_train)
  test_images, test_labels = tfds_source.read_split(builder, "test")

  def split(images: np.ndarray, labels: np.ndarray) -> Split:
    return _to_split(images, labels, image_size, 0.0, 255.0)

  return Dataset(
      name=name,
      train=split(train_images[train], train_labels[train]),
      valid=split(train_images[valid], train_labels[valid]),
      test=split(test_images, test_labels),
      num_classes=num_classes,
      image_channels=channels)


def load(name: str, *, seed: int, image_size: int = 32, manual_dir: str = "",
         data_dir: str = "", num_valid: int = -1, num_train: int = -1) -> Dataset:
  """Loads a dataset into memory: seeded train/valid split, resized, scaled to [-1, 1].

  Args:
    name: one of :data:`DATASETS` ('svhn_cropped' never uses 'extra').
    seed: seeds the permutation that divides the official train split into train/valid
      (for 'digits' also test); the same seed always gives the same splits.
    image_size: height and width of the returned images (bilinear resize; 28 -> 32 for the
      MNIST family, 8 -> 32 for digits, 32 stays as is).
    manual_dir: folder with the dataset's original files, to build it offline when it is not
      prepared in ``data_dir``. Never downloads.
    data_dir: TFDS data directory; empty means TFDS's default (~/tensorflow_datasets).
    num_valid: validation size when >= 0; otherwise the paper's (see module docstring).
    num_train: when >= 0, keep only the first ``num_train`` training examples of the seeded
      permutation (the validation set does not change).

  Returns:
    A :class:`Dataset`; images (N, image_size, image_size, C) float32, labels (N,) int32.

  Raises:
    ValueError: the data is not available offline (see :func:`check_available`) or the
      requested split sizes do not fit.
  """
  check_available(name, manual_dir=manual_dir, data_dir=data_dir)
  if image_size <= 0:
    raise ValueError(f"image_size must be positive; got {image_size}")
  if name == "digits":
    ds = _load_digits(seed, image_size, num_valid, num_train)
  else:
    ds = _load_tfds(name, seed, image_size, manual_dir, data_dir, num_valid, num_train)
  logging.info("Loaded %s: train %d, valid %d, test %d, images %s", name, len(ds.train),
               len(ds.valid), len(ds.test), ds.train.images.shape[1:])
  return ds
