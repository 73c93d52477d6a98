"""dSprites, generated procedurally: 737,280 binary 64x64 images of a square, an ellipse or a heart.

The real dataset (Matthey et al. 2017, https://github.com/deepmind/dsprites-dataset) cannot be
downloaded on the machines this project runs on, so it is rendered here instead, on demand and
in chunks, with the dataset's latent grid and image order:

- shape: square, ellipse, heart (3); scale: linspace(0.5, 1, 6); orientation: linspace(0, 2 pi,
  40) (so orientations 0 and 39 draw the same picture, as in the real data); pos_x and pos_y:
  linspace(0, 1, 32). Colour has one value and is left out of the factors.
- Image ``i`` has the factors of the row-major (C order) unravelling of ``i`` over
  :data:`FACTOR_SIZES`: pos_y varies fastest, shape slowest, as in the real file (whose latents
  are (color, shape, scale, orientation, posX, posY)).

Geometry (continuous pixel coordinates, x to the right, y down, pixel (row, col) covering
[row, row + 1) x [col, col + 1)): the shape's centre is at x = 16 + 32 pos_x, y = 16 + 32 pos_y,
so pos (0, 0) is the top-left; a pixel is white (1) when its centre lies inside the shape (no
anti-aliasing). Orientation ``theta`` turns the shape counter-clockwise as seen in the image
about its centre; at ``theta = 0`` the ellipse is wide (12.77 x 7.21 px semi-axes at scale 1,
long axis along x), the square has half-side 9.6 px and the heart points down. The heart is the
classic curve ``(16 sin^3 t, -(13 cos t - 5 cos 2t - 2 cos 3t - cos 4t))`` scaled by
(0.6, 0.6625) and moved up 1.45 px (about 19.2 px wide and tall at scale 1). All lengths are
multiplied by the scale. These numbers were fitted to 320 real dSprites frames (the animation the
authors publish beside the data): for every one of them some generated image agrees with it on at
least 4,092 of the 4,096 pixels, 4,095.7 on average (``tests/test_dsprites.py``).

Two conventions cannot be read off unlabelled frames, and are chosen as follows. Turning either
way gives the same set of images (the 40 angles are symmetric about 0 and every shape is
mirror-symmetric), so the direction is the one the authors' animation turns in when its
orientation sweep is read from index 0 upwards, as its position sweeps run (they start at
pos 0): counter-clockwise. Which of the two position factors moves the shape across and which
down cannot be told either; here pos_x is horizontal (columns) and pos_y vertical (rows).
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from amr_jax.data import image as image_lib

__all__ = [
    "FACTOR_NAMES", "FACTOR_SIZES", "SHAPES", "IMAGE_SIZE", "SCALES", "ORIENTATIONS",
    "POSITIONS", "num_images", "index_to_factors", "factors_to_index", "render",
    "render_indices", "iterate", "LazyImages",
]

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

# Shape sizes at scale 1, in pixels (fitted to the real frames, see the module docstring).
_SQUARE_HALF_SIDE = 9.6
_ELLIPSE_SEMI_AXES = (12.77, 7.21)  # along x, along y at orientation 0
_HEART_SCALE = (0.6, 0.6625)  # multiplies the classic curve's (x, y)
_HEART_SHIFT_Y = -1.45  # moves it up: the centre of rotation is 1.45 px below the curve's origin
# Everything drawn lies within 14 px of the centre, so rendering a window of 32 x 32 pixels
# around it is enough (and 4 times cheaper than the whole image).
_WINDOW = 32
_POS_OFFSET, _POS_RANGE = 16.0, 32.0  # centre = _POS_OFFSET + _POS_RANGE * pos


def num_images() -> int:
  """Number of images in the dataset: every combination of the factors once (737,280)."""
  return int(np.prod(FACTOR_SIZES))


def index_to_factors(index: int | np.ndarray) -> np.ndarray:
  """Factor indices of dataset images, in the dataset's order.

  Args:
    index: an int, or an integer array of any shape (...), in [0, num_images()).

  Returns:
    int64 factor indices: (5,) for an int, else (..., 5), columns as in :data:`FACTOR_NAMES`.
  """
  index = np.asarray(index)
  if not np.issubdtype(index.dtype, np.integer):
    raise TypeError(f"indices must be integers; got dtype {index.dtype}")
  if index.size and (index.min() < 0 or index.max() >= num_images()):
    raise IndexError(f"dSprites indices must be in [0, {num_images()}); got "
                     f"[{index.min()}, {index.max()}]")
  return np.stack(np.unravel_index(index, FACTOR_SIZES), axis=-1).astype(np.int64)


def factors_to_index(factors: np.ndarray) -> np.ndarray:
  """Dataset indices of images given their factors; inverse of :func:`index_to_factors`.

  Args:
    factors: integer array (..., 5), columns as in :data:`FACTOR_NAMES`.

  Returns:
    int64 array (...) of indices in [0, num_images()).
  """
  factors = _check_factors(factors)
  return np.ravel_multi_index(tuple(np.moveaxis(factors, -1, 0)), FACTOR_SIZES).astype(np.int64)


def _check_factors(factors: np.ndarray) -> np.ndarray:
  """``factors`` (..., 5) as an integer array, after checking every index is in range."""
  factors = np.asarray(factors)
  if factors.shape[-1:] != (len(FACTOR_SIZES),) or not np.issubdtype(factors.dtype, np.integer):
    raise ValueError(f"factors must be integers of shape (..., {len(FACTOR_SIZES)}); got "
                     f"{factors.dtype} {factors.shape}")
  if factors.size and ((factors < 0).any() or (factors >= np.array(FACTOR_SIZES)).any()):
    raise ValueError(f"factor indices out of range: each column must be in "
                     f"[0, size) for sizes {FACTOR_SIZES}")
  return factors


@functools.lru_cache(maxsize=1)
def _heart_radius_table(num_angles: int = 4096) -> np.ndarray:
  """The heart's boundary in polar form about its centre at scale 1.

  The heart is star-shaped about its centre, so it is {r <= R(phi)}. Returns R at
  ``num_angles + 1`` equally spaced angles phi in [-pi, pi] (the last repeats the first), in
  pixels; phi = atan2(y, x) with y down.
  """
  t = np.linspace(0.0, 2.0 * np.pi, 20_000, endpoint=False)
  x = _HEART_SCALE[0] * 16.0 * np.sin(t) ** 3
  y = -_HEART_SCALE[1] * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t)
                          - np.cos(4 * t)) + _HEART_SHIFT_Y
  phi_curve = np.arctan2(y, x)
  r_curve = np.hypot(x, y)
  # The curve turns once about the centre with its angle always changing the same way (checked
  # here, which is what makes the polar form exact), so R(phi) is an interpolation along it.
  step = np.angle(np.exp(1j * np.diff(np.append(phi_curve, phi_curve[0]))))
  if not (np.all(step > 0) or np.all(step < 0)):
    raise RuntimeError("the heart is not star-shaped about its centre")
  order = np.argsort(phi_curve)
  phi_sorted, r_sorted = phi_curve[order], r_curve[order]
  phi = np.linspace(-np.pi, np.pi, num_angles + 1)
  table = np.interp(phi, phi_sorted, r_sorted, period=2.0 * np.pi)
  table.flags.writeable = False  # Shared through the cache.
  return table


def _inside(shape: np.ndarray, u: np.ndarray, v: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """Whether points lie inside the shapes.

  Args:
    shape: (N,) shape indices. u, v: (N, H, W) float32 coordinates relative to the shape's centre
      in the shape's own frame (its orientation undone). scale: (N,) float32 scales.

  Returns:
    (N, H, W) bool.
  """
  s = scale[:, None, None]
  out = np.zeros(u.shape, bool)
  for k in range(len(SHAPES)):
    sel = np.flatnonzero(shape == k)
    if not sel.size:
      continue
    uk, vk, sk = u[sel], v[sel], s[sel]
    if k == 0:
      half = np.float32(_SQUARE_HALF_SIDE) * sk
      out[sel] = (np.abs(uk) <= half) & (np.abs(vk) <= half)
    elif k == 1:
      a, b = (np.float32(r) * sk for r in _ELLIPSE_SEMI_AXES)
      out[sel] = (uk / a) ** 2 + (vk / b) ** 2 <= 1.0
    else:
      table = _heart_radius_table()
      n = len(table) - 1
      pos = (np.arctan2(vk, uk) + np.float32(np.pi)) * np.float32(n / (2.0 * np.pi))
      i = np.clip(pos.astype(np.int32), 0, n - 1)
      frac = pos - i
      radius = (table[i] * (1.0 - frac) + table[i + 1] * frac).astype(np.float32)
      out[sel] = uk * uk + vk * vk <= (radius * sk) ** 2
  return out


def _render_chunk(factors: np.ndarray) -> np.ndarray:
  """(n, 5) checked factor indices -> (n, 64, 64) uint8 images in {0, 1}."""
  n = len(factors)
  shape, scale_i, orient_i, px, py = (factors[:, j] for j in range(5))
  cx = (_POS_OFFSET + _POS_RANGE * POSITIONS[px]).astype(np.float32)
  cy = (_POS_OFFSET + _POS_RANGE * POSITIONS[py]).astype(np.float32)
  # A window of _WINDOW pixels around the centre (centres lie in [16, 48], so it fits).
  x0 = np.floor(cx).astype(np.int64) - _WINDOW // 2
  y0 = np.floor(cy).astype(np.int64) - _WINDOW // 2
  grid = np.arange(_WINDOW, dtype=np.float32) + np.float32(0.5)
  dx = (x0 - cx)[:, None, None] + grid[None, None, :]  # (n, 1, W)
  dy = (y0 - cy)[:, None, None] + grid[None, :, None]  # (n, W, 1)
  theta = ORIENTATIONS[orient_i]
  cos = np.cos(theta).astype(np.float32)[:, None, None]
  sin = np.sin(theta).astype(np.float32)[:, None, None]
  # Undo a counter-clockwise (as seen, y down) turn by theta.
  u = cos * dx - sin * dy
  v = sin * dx + cos * dy
  mask = _inside(shape, u, v, SCALES[scale_i].astype(np.float32))
  images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
  rows = y0[:, None, None] + np.arange(_WINDOW)[None, :, None]
  cols = x0[:, None, None] + np.arange(_WINDOW)[None, None, :]
  images[np.arange(n)[:, None, None], rows, cols] = mask
  return images


def render(factors: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
  """Renders images from factor indices.

  Args:
    factors: (N, 5) integer factor indices, columns as in :data:`FACTOR_NAMES`.
    chunk: images rendered at once, to bound temporary memory (about 50 KB per image).

  Returns:
    (N, 64, 64) uint8 images, 1 inside the shape and 0 elsewhere. Deterministic.
  """
  factors = _check_factors(factors)
  if factors.ndim != 2:
    raise ValueError(f"factors must have shape (N, 5); got {factors.shape}")
  out = np.empty((len(factors), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
  for start in range(0, len(factors), chunk):
    out[start:start + chunk] = _render_chunk(factors[start:start + chunk])
  return out


def render_indices(indices: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
  """Renders the dataset's images at ``indices`` ((N,) ints) -> (N, 64, 64) uint8 in {0, 1}."""
  return render(index_to_factors(np.asarray(indices).reshape(-1)), chunk=chunk)


def iterate(chunk: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
  """Yields the whole dataset in order, as (first index, (n, 64, 64) uint8 images) chunks."""
  for start in range(0, num_images(), chunk):
    yield start, render_indices(np.arange(start, min(start + chunk, num_images())))


class LazyImages(image_lib.LazyFloatImages):
  """The images of a set of dSprites factors, rendered when indexed (lazy; nothing is stored).

  Stands in for an (N, 64, 64, 1) float32 array in [-1, 1] (0 -> -1, 1 -> 1); see
  ``LazyFloatImages`` for the indexing it supports (``np.asarray`` renders everything: keep N
  small). Rendering a training batch of 64 takes about a millisecond; holding all 737,280 images
  as float32 would take 12 GB.
  """

  def __init__(self, factors: np.ndarray):
    """``factors``: (N, 5) integer factor indices (see :data:`FACTOR_NAMES`)."""
    factors = _check_factors(factors)
    if factors.ndim != 2:
      raise ValueError(f"factors must have shape (N, 5); got {factors.shape}")
    self._factors = factors

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (len(self._factors), IMAGE_SIZE, IMAGE_SIZE, 1)

  def _images(self, key: slice | np.ndarray) -> np.ndarray:
    images = render(self._factors[key].reshape(-1, len(FACTOR_SIZES)))
    x = images.astype(np.float32)
    x *= np.float32(2.0)
    x -= np.float32(1.0)
    return x.reshape(*self._factors[key].shape[:-1], IMAGE_SIZE, IMAGE_SIZE, 1)

  def __repr__(self) -> str:
    return f"LazyImages(shape={self.shape}, dtype=float32, rendered on indexing)"
