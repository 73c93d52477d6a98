"""Tests of amr_jax.data.dsprites (the procedural dSprites) and of load('dsprites').

The real-frame test compares the generator with 320 real dSprites images kept outside the
project, at ../shared/data/dsprites_reference/frames.npz (relative to the project root), and is
skipped when they are absent.
"""

from __future__ import annotations

from pathlib import Path
import time

import numpy as np
import pytest

from amr_jax import data
from amr_jax.data import dsprites

FRAMES = Path(__file__).resolve().parents[2] / "shared/data/dsprites_reference/frames.npz"
MIN_AGREEMENT = 4076  # of 4096 pixels: 99.5%


# ---------------------------------------------------------------------------------------------
# against real dSprites frames


def _centroids(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(N, 64, 64) {0, 1} -> area (N,), centroid x (N,), centroid y (N,) in pixel coordinates."""
  im = images.astype(np.float64)
  area = im.sum((1, 2))
  centres = np.arange(dsprites.IMAGE_SIZE) + 0.5
  cx = (im.sum(1) * centres).sum(1) / area
  cy = (im.sum(2) * centres).sum(1) / area
  return area, cx, cy


def _best_match(frame: np.ndarray, ref: tuple[np.ndarray, ...]) -> tuple[int, np.ndarray]:
  """Best-agreeing generated image for a real frame (64, 64) -> (agreement, factors (5,)).

  Searches every (shape, scale, orientation) whose area is within 40 pixels of the frame's
  (a match with at most 20 wrong pixels has an area within 20; the rest is the area's small
  change with the position), at the 2 x 2 positions nearest to where the centroids put the
  centre.
  """
  base, area, off_x, off_y = ref
  frame_area, fx, fy = (v[0] for v in _centroids(frame[None]))
  cands = []
  for k in np.flatnonzero(np.abs(area - frame_area) <= 40):
    # centre = 16 + 32 pos; the centroid sits at a fixed offset from the centre.
    px = (fx - off_x[k] - 16) * 31 / 32
    py = (fy - off_y[k] - 16) * 31 / 32
    for qx in {np.floor(px), np.floor(px) + 1}:
      for qy in {np.floor(py), np.floor(py) + 1}:
        cands.append([*base[k, :3], np.clip(qx, 0, 31), np.clip(qy, 0, 31)])
  cands = np.unique(np.array(cands, np.int64), axis=0)
  agreement = (dsprites.render(cands) == frame[None]).sum((1, 2))
  j = int(agreement.argmax())
  return int(agreement[j]), cands[j]


def test_every_real_frame_has_a_matching_generated_image(record_property):
  if not FRAMES.is_file():
    pytest.skip(f"real dSprites frames not found at {FRAMES}")
  frames = np.load(FRAMES)["frames"]
  assert frames.shape == (320, 64, 64)
  start = time.perf_counter()
  # Every (shape, scale, orientation) at pos (0, 0): its area and centroid offset.
  grid = np.stack(np.meshgrid(np.arange(3), np.arange(6), np.arange(40), [0], [0],
                              indexing="ij"), -1).reshape(-1, 5)
  area, cx, cy = _centroids(dsprites.render(grid))
  ref = (grid, area, cx - 16, cy - 16)
  unique, inverse = np.unique(frames.reshape(320, -1), axis=0, return_inverse=True)
  results = [_best_match(f.reshape(64, 64), ref) for f in unique]
  agreement = np.array([results[i][0] for i in inverse.ravel()])
  seconds = time.perf_counter() - start
  print(f"\nreal frames: agreement min {agreement.min()} mean {agreement.mean():.2f} of 4096 "
        f"({len(unique)} distinct frames, {seconds:.1f} s)")
  record_property("min_agreement", int(agreement.min()))
  record_property("mean_agreement", float(agreement.mean()))
  worst = int(agreement.argmin())
  assert agreement.min() >= MIN_AGREEMENT, (worst, results[inverse.ravel()[worst]])
  # The animation's first frames are the heart (shape 2) at pos (0, 0), growing from scale 0.5.
  assert [results[inverse.ravel()[i]][1].tolist() for i in (0, 5)] == [[2, 0, 0, 0, 0],
                                                                         [2, 5, 0, 0, 0]]


# ---------------------------------------------------------------------------------------------
# order


def test_counts_and_factor_sizes():
  assert dsprites.num_images() == 737_280 == int(np.prod(dsprites.FACTOR_SIZES))
  assert dsprites.FACTOR_SIZES == (3, 6, 40, 32, 32)
  assert dsprites.FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
  assert dsprites.SHAPES == ("square", "ellipse", "heart")
  np.testing.assert_allclose(dsprites.SCALES, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
  assert dsprites.ORIENTATIONS[0] == 0 and np.isclose(dsprites.ORIENTATIONS[-1], 2 * np.pi)
  assert len(dsprites.POSITIONS) == 32 and dsprites.POSITIONS[-1] == 1


def test_index_factor_round_trip():
  every = np.arange(dsprites.num_images())
  factors = dsprites.index_to_factors(every)
  assert factors.shape == (737_280, 5)
  np.testing.assert_array_equal(factors.max(0) + 1, dsprites.FACTOR_SIZES)
  np.testing.assert_array_equal(dsprites.factors_to_index(factors), every)
  assert dsprites.index_to_factors(12345).shape == (5,)
  assert int(dsprites.factors_to_index(dsprites.index_to_factors(12345))) == 12345
  with pytest.raises(IndexError):
    dsprites.index_to_factors(737_280)
  with pytest.raises(ValueError):
    dsprites.factors_to_index(np.array([3, 0, 0, 0, 0]))


def test_order_is_row_major_with_pos_y_fastest():
  f = dsprites.index_to_factors
  np.testing.assert_array_equal(f(0), [0, 0, 0, 0, 0])
  np.testing.assert_array_equal(f(1), [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(f(32), [0, 0, 0, 1, 0])
  np.testing.assert_array_equal(f(32 * 32), [0, 0, 1, 0, 0])
  np.testing.assert_array_equal(f(40 * 32 * 32), [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(f(6 * 40 * 32 * 32), [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(f(737_279), [2, 5, 39, 31, 31])


def test_first_and_last_images():
  first, second, after_x, last = dsprites.render_indices(np.array([0, 1, 32, 737_279]))
  # Image 0: the smallest square (half-side 4.8 px) centred at (16, 16), the top-left.
  want = np.zeros((64, 64), np.uint8)
  want[11:21, 11:21] = 1
  np.testing.assert_array_equal(first, want)
  # pos_y moves the shape down, pos_x to the right, by 32/31 px a step.
  _, x0, y0 = _centroids(first[None])
  _, x1, y1 = _centroids(second[None])
  _, x2, y2 = _centroids(after_x[None])
  assert y1 - y0 > 0.5 and x1 == x0 and x2 - x0 > 0.5 and y2 == y0
  # The last image: the largest heart at orientation 2 pi (= 0) in the bottom-right.
  area, x, y = _centroids(last[None])
  assert x > 40 and y > 40 and last[:32].sum() == 0 and last[:, :32].sum() == 0
  assert area[0] > 200


def test_shape_conventions():
  # shape, scale 1, orientation, pos (0, 0): centre at (16, 16).
  square, ellipse, heart, heart_10, heart_2pi = dsprites.render(np.array(
      [[0, 5, 0, 0, 0], [1, 5, 0, 0, 0], [2, 5, 0, 0, 0], [2, 5, 10, 0, 0], [2, 5, 39, 0, 0]]))
  want = np.zeros((64, 64), np.uint8)
  want[6:26, 6:26] = 1  # Half-side 9.6 px.
  np.testing.assert_array_equal(square, want)
  ys, xs = np.nonzero(ellipse)
  assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3, 28, 9, 22)  # Wide at orientation 0.
  # The heart points down at orientation 0: widest above the centre, a narrow tip below.
  ys, xs = np.nonzero(heart)
  assert np.argmax(heart.sum(1)) < 16 and heart[ys.max()].sum() <= 2
  assert xs.min() + xs.max() == 31  # Mirror-symmetric about x = 16.
  # Orientation turns it counter-clockwise as seen: after about 92 degrees the lobes (the
  # heavier side) are on the left and the tip points right.
  ys, xs = np.nonzero(heart_10)
  _, x, _ = _centroids(heart_10[None])
  assert x[0] < 15 and heart_10[:, xs.max()].sum() <= 2
  assert (heart_2pi != heart).sum() <= 2  # 2 pi is 0 up to float rounding.


def test_render_is_binary_deterministic_and_chunk_independent():
  idx = np.random.default_rng(0).choice(dsprites.num_images(), 3000, replace=False)
  factors = dsprites.index_to_factors(idx)
  a = dsprites.render(factors)
  assert a.shape == (3000, 64, 64) and a.dtype == np.uint8
  assert set(np.unique(a)) == {0, 1}
  assert (a.sum((1, 2)) >= 50).all()  # Every image shows its shape.
  np.testing.assert_array_equal(a, dsprites.render(factors, chunk=7))
  np.testing.assert_array_equal(a[:10], dsprites.render_indices(idx[:10]))
  start, chunk = next(dsprites.iterate(chunk=100))
  assert start == 0
  np.testing.assert_array_equal(chunk, dsprites.render_indices(np.arange(100)))


def test_lazy_images_index_like_an_array():
  factors = dsprites.index_to_factors(np.arange(0, 737_280, 7919)).astype(np.int32)
  images = dsprites.LazyImages(factors)
  assert images.shape == (len(factors), 64, 64, 1) and len(images) == len(factors)
  want = dsprites.render(factors).astype(np.float32)[..., None] * 2 - 1
  idx = np.array([5, 0, 5, 17])
  got = images[idx]
  assert got.dtype == np.float32 and got.shape == (4, 64, 64, 1)
  np.testing.assert_array_equal(got, want[idx])
  np.testing.assert_array_equal(images[:3], want[:3])
  np.testing.assert_array_equal(images[-1], want[-1])
  np.testing.assert_array_equal(np.asarray(images), want)
  with pytest.raises(IndexError):
    images[len(factors)]


# ---------------------------------------------------------------------------------------------
# load("dsprites")


def test_load_dsprites():
  data.check_available("dsprites", manual_dir="/does/not/matter", data_dir="/nor/this")
  ds = data.load("dsprites", seed=0, image_size=64, num_valid=50, num_train=100)
  assert (ds.name, ds.num_classes, ds.image_channels) == ("dsprites", 3, 1)
  for split, n in [(ds.train, 100), (ds.valid, 50), (ds.test, 10_000)]:
    assert len(split) == n and split.images.shape == (n, 64, 64, 1)
    assert split.labels.shape == (n,) and split.labels.dtype == np.int32
    assert split.factors.shape == (n, 5) and split.factors.dtype == np.int32
    np.testing.assert_array_equal(split.labels, split.factors[:, 0])
  x = ds.train.images[np.arange(100)]
  assert x.dtype == np.float32 and set(np.unique(x)) == {-1.0, 1.0}
  np.testing.assert_array_equal(x[..., 0], dsprites.render(ds.train.factors) * 2.0 - 1.0)
  np.testing.assert_array_equal(ds.valid.images[:7][..., 0],
                                dsprites.render(ds.valid.factors[:7]) * 2.0 - 1.0)
  # The splits are disjoint sets of dataset images.
  ids = [dsprites.factors_to_index(s.factors) for s in (ds.train, ds.valid, ds.test)]
  assert len(np.unique(np.concatenate(ids))) == 10_150
  assert set(np.unique(ds.test.labels)) == {0, 1, 2}


def test_load_dsprites_seeds_defaults_and_errors():
  full = data.load("dsprites", seed=3, image_size=64)
  assert (len(full.train), len(full.valid), len(full.test)) == (717_280, 10_000, 10_000)
  capped = data.load("dsprites", seed=3, image_size=64, num_train=20)
  np.testing.assert_array_equal(capped.train.factors, full.train.factors[:20])
  np.testing.assert_array_equal(capped.valid.factors, full.valid.factors)
  other = data.load("dsprites", seed=4, image_size=64, num_train=20)
  assert not np.array_equal(other.test.factors, full.test.factors)
  with pytest.raises(ValueError, match="image_size"):
    data.load("dsprites", seed=0, image_size=32)
  with pytest.raises(ValueError, match="num_train"):
    data.load("dsprites", seed=0, image_size=64, num_train=800_000)
