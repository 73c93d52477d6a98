"""Tests of CelebA loading (TFDS mocked: no network here) and of dSprites' binary attributes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from amr_jax import data
from amr_jax.data import dsprites
from amr_jax.data import image as image_lib
from amr_jax.data import tfds_source

ATTRS = ("Male", "Smiling", "Eyeglasses")


def _raw(data_dir: str, split: str) -> list[dict]:
  """The mocked examples of a CelebA split, as TFDS decodes them (call inside mock_data)."""
  source = tfds_source.builder("celeb_a", data_dir).as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_load_celeb_a(mock_tfds, tmp_path):
  with mock_tfds(20):
    ds = data.load("celeb_a", seed=0, image_size=32, data_dir=str(tmp_path), num_valid=5,
                   num_train=12, attributes=ATTRS)
    raw_test = _raw(str(tmp_path), "test")
  assert (ds.name, ds.num_classes, ds.image_channels) == ("celeb_a", 2, 3)
  assert ds.attribute_names == ATTRS
  # mock_data gives every split 20 examples; the official splits are kept, then capped.
  for split, n in [(ds.train, 12), (ds.valid, 5), (ds.test, 20)]:
    x = split.images[np.arange(n)]
    assert split.images.shape == (n, 32, 32, 3) and len(split) == n
    assert x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
    assert split.images.pixels.dtype == np.uint8  # Held as uint8, scaled when indexed.
    assert split.attributes.shape == (n, 3) and split.attributes.dtype == np.float32
    assert set(np.unique(split.attributes)) <= {0.0, 1.0}
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.labels, split.attributes[:, 0])
  # The test split is read whole and in order: attributes and pixels match the raw examples.
  want_attrs = [[ex["attributes"][a] for a in ATTRS] for ex in raw_test]
  np.testing.assert_array_equal(ds.test.attributes, np.array(want_attrs, np.float32))
  # Central 178x178 square (rows 20..197), bilinear resize (jax's, as an independent
  # reference), kept as uint8 (Pillow rounds twice: within 1.5 uint8 steps).
  raw = np.stack([ex["image"] for ex in raw_test])
  assert raw.shape == (20, 218, 178, 3)
  want = jax.image.resize(raw[:, 20:198].astype(np.float32), (20, 32, 32, 3), "bilinear")
  np.testing.assert_allclose(np.asarray(ds.test.images), np.asarray(want) / 127.5 - 1,
                             atol=1.5 / 127.5)


def test_celeb_a_caps_seed_and_size(mock_tfds, tmp_path):
  with mock_tfds(20):
    load = lambda **kw: data.load("celeb_a", data_dir=str(tmp_path), attributes=ATTRS, **kw)
    full = load(seed=1, image_size=64)
    small = load(seed=1, image_size=64, num_train=6, num_valid=3)
    other = load(seed=2, image_size=64, num_train=6, num_valid=3)
    with pytest.raises(ValueError, match="num_train=21"):
      load(seed=1, num_train=21)
    with pytest.raises(ValueError, match="num_valid=21"):
      load(seed=1, num_valid=21)
    # Defaults: the whole official splits, and the default attributes.
    default = data.load("celeb_a", seed=1, data_dir=str(tmp_path))
  assert full.train.images.shape == (20, 64, 64, 3)
  assert (len(full.train), len(full.valid), len(full.test)) == (20, 20, 20)
  assert (len(small.train), len(small.valid)) == (6, 3)
  # A cap keeps a prefix of the seeded order, and capping train never changes validation.
  np.testing.assert_array_equal(small.train.images.pixels, full.train.images.pixels[:6])
  np.testing.assert_array_equal(small.valid.images.pixels, full.valid.images.pixels[:3])
  np.testing.assert_array_equal(small.test.images.pixels, full.test.images.pixels)
  assert not np.array_equal(other.train.images.pixels, small.train.images.pixels)
  assert default.attribute_names == data.CELEBA_DEFAULT_ATTRIBUTES
  assert default.train.attributes.shape == (20, 3)


def test_celeb_a_unknown_attribute(tmp_path):
  for call in (lambda: data.check_available("celeb_a", data_dir=str(tmp_path),
                                            attributes=("Male", "Beard")),
               lambda: data.load("celeb_a", seed=0, data_dir=str(tmp_path),
                                 attributes=("Male", "Beard"))):
    with pytest.raises(ValueError, match=r"\['Beard'\]") as e:
      call()
    msg = str(e.value)
    assert "\n" not in msg
    assert all(a in msg for a in ("5_o_Clock_Shadow", "No_Beard", "Wearing_Lipstick", "Young"))
  with pytest.raises(ValueError, match="twice"):
    data.check_available("celeb_a", data_dir=str(tmp_path), attributes=("Male", "Male"))


def test_check_available_celeb_a_says_how_to_provide_it(tmp_path):
  with pytest.raises(ValueError) as e:
    data.check_available("celeb_a", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg
  assert f"data_dir={str(tmp_path)!r}" in msg and "Google Drive" in msg
  assert "tfds build celeb_a" in msg and "~/tensorflow_datasets/celeb_a" in msg
  # The original files TFDS would download, for a manual_dir.
  for name in ("img_align_celeba.zip", "list_eval_partition.txt", "list_attr_celeba.txt",
               "list_landmarks_align_celeba.txt", "identity_CelebA.txt"):
    assert name in msg
  # With a manual_dir lacking them, the missing files are named.
  with pytest.raises(ValueError, match="img_align_celeba.zip"):
    data.check_available("celeb_a", manual_dir=str(tmp_path), data_dir=str(tmp_path))


def test_read_split_tfrecord_path(mock_tfds, tmp_path, monkeypatch):
  """A dataset prepared as tfrecord (`tfds build`'s default) is streamed in chunks."""
  monkeypatch.setattr(tfds_source, "num_examples", lambda builder, split: 20)
  targets = lambda ex: [ex["attributes"]["Male"], ex["attributes"]["Young"]]
  crop = lambda x: image_lib.center_crop(x, 178, 178)[:, :2, :2]  # Something small to keep.
  with mock_tfds(20):
    builder = tfds_source.builder("celeb_a", str(tmp_path))

    def no_data_source(**kwargs):
      raise NotImplementedError

    builder.as_data_source = no_data_source
    everything = tfds_source.read_split(builder, "test", targets=targets, transform=crop,
                                        chunk=8)
    some = tfds_source.read_split(builder, "test", indices=np.array([17, 2, 9, 8]),
                                  targets=targets, transform=crop, chunk=8)
  assert everything[0].shape == (20, 2, 2, 3) and everything[1].shape == (20, 2)
  for got, want in zip(some, everything):
    np.testing.assert_array_equal(got, want[[17, 2, 9, 8]])


@pytest.mark.parametrize("shape,size", [((3, 178, 178, 3), 64), ((2, 8, 6, 1), 20)])
def test_resize_bilinear_uint8_is_resize_bilinear_rounded(shape, size):
  # Smooth images (as photos are), where Pillow's two roundings are rarely both one way.
  low = np.random.default_rng(0).uniform(0, 255, (shape[0], 4, 4, shape[-1]))
  x = np.clip(image_lib.resize_bilinear(low, shape[1]), 0, 255)[:, :, :shape[2]]
  x = np.rint(x).astype(np.uint8)
  got = image_lib.resize_bilinear_uint8(x, size)
  want = image_lib.resize_bilinear(x, size)
  assert got.shape == (shape[0], size, size, shape[-1]) and got.dtype == np.uint8
  diff = np.abs(got - want)
  assert diff.max() <= 1.0 and diff.mean() < 0.35  # Rounding alone: mean 0.25.


def test_lazy_uint8_images():
  pixels = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
  lazy = image_lib.LazyUint8Images(pixels)
  want = pixels.astype(np.float32) / 127.5 - 1
  assert lazy.shape == (5, 4, 4, 3) and len(lazy) == 5 and lazy.dtype == np.float32
  np.testing.assert_array_equal(lazy[np.array([3, 0])], want[[3, 0]])
  np.testing.assert_array_equal(lazy[1:3], want[1:3])
  np.testing.assert_array_equal(lazy[4], want[4])
  np.testing.assert_array_equal(np.asarray(lazy), want)
  assert lazy[np.array([0])].min() >= -1 and image_lib.LazyUint8Images(
      np.full((1, 1, 1, 1), 255, np.uint8))[0].max() == 1.0
  with pytest.raises(TypeError):
    lazy[np.array([True, False, True, False, True])]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError):
    image_lib.LazyUint8Images(want)


def test_dsprites_attributes_follow_factors():
  ds = data.load("dsprites", seed=0, image_size=64)
  assert ds.attribute_names == data.DSPRITES_ATTRIBUTES == ("pos_x>=16", "pos_y>=16",
                                                            "scale>=3")
  for split in (ds.train, ds.valid, ds.test):
    f = split.factors
    want = np.stack([f[:, 3] >= 16, f[:, 4] >= 16, f[:, 1] >= 3], axis=1).astype(np.float32)
    assert split.attributes.dtype == np.float32
    np.testing.assert_array_equal(split.attributes, want)
  # Each attribute splits its factor in halves, so about half the examples have it.
  np.testing.assert_allclose(ds.train.attributes.mean(0), 0.5, atol=0.01)
  # What they mean in the pictures: the shape's centre is right of / below the middle. Squares
  # and ellipses are point-symmetric, so there the centre of mass is the centre.
  symmetric = np.flatnonzero(ds.valid.factors[:256, 0] != dsprites.SHAPES.index("heart"))
  x = ds.valid.images[symmetric][..., 0] > 0  # (n, 64, 64) bool
  rows, cols = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5, indexing="ij")
  mass = x.sum((1, 2))
  centre_x = (x * cols).sum((1, 2)) / mass
  centre_y = (x * rows).sum((1, 2)) / mass
  np.testing.assert_array_equal(centre_x > 32, ds.valid.attributes[symmetric, 0] == 1)
  np.testing.assert_array_equal(centre_y > 32, ds.valid.attributes[symmetric, 1] == 1)
  assert dsprites.FACTOR_NAMES[1] == "scale" and dsprites.FACTOR_NAMES[3:] == ("pos_x", "pos_y")
