"""Evaluation and picture for the appendix toy (the paper's Figure 12): do decoded mixes lie on
the spiral?

The data are noisy points of a 2-D spiral (:mod:`amr_jax.data.spiral`); the model is the 'mlp2d'
autoencoder. After training, codes of training points are mixed (as in training: random partners,
then the mixer) and decoded; a good model decodes mixes *onto* the data manifold. The paper's
claim: mixes land on the spiral more often as the consistency weight beta gets smaller.

- :func:`distance_to_spiral`: Euclidean distance from points to the noise-free curve.
- :func:`mix_statistics`: mean distance and the fraction within a tolerance.
- :func:`evaluate_mixes`: encode, mix, decode, measure, given (jitted) encode/decode callables.
- :func:`render` / :func:`plot`: a scatter (data grey, decoded mixes red, the curve as a thin
  line) as a picture / a PNG file, with PIL.

Distances are computed on the host in float64 (numpy); only encoding, mixing and decoding run in
JAX.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw

from amr_jax import mixers
from amr_jax.data import spiral as spiral_data

__all__ = ["TOLERANCE", "NUM_MIX_POINTS", "distance_to_spiral", "mix_statistics",
           "evaluate_mixes", "render", "plot"]

TOLERANCE = 0.05
"""Default distance under which a point counts as on the spiral: 2.5x the data noise (0.02), so
about 99% of the noisy data lies within it, while neighbouring turns are ~0.36 apart."""

NUM_MIX_POINTS = 2_000
"""Default number of training points whose codes :func:`evaluate_mixes` mixes."""

_NUM_CURVE_POINTS = 20_001  # curve samples: at most ~8e-4 apart (at r = 1)


@functools.lru_cache(maxsize=4)
def _curve_polyline(num: int) -> np.ndarray:
  """The noise-free curve sampled at ``num`` equally spaced t: (num, 2) float64."""
  return spiral_data.curve(np.linspace(0.0, 1.0, num))


def _distance_to_segments(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distance from points p (n, 2) to the segments [a, b] (n, 2): (n,)."""
  ab = b - a
  s = np.sum((p - a) * ab, axis=-1) / np.maximum(np.sum(ab * ab, axis=-1), 1e-300)
  closest = a + np.clip(s, 0.0, 1.0)[:, None] * ab
  return np.linalg.norm(p - closest, axis=-1)


def distance_to_spiral(points: np.ndarray, *, num_curve_points: int = _NUM_CURVE_POINTS,
                       chunk_size: int = 256) -> np.ndarray:
  """Euclidean distance from each point to the noise-free spiral of :mod:`amr_jax.data.spiral`.

  The curve is sampled densely (``num_curve_points`` equally spaced t); each point's nearest
  sample is found in chunks of ``chunk_size`` points (memory ``chunk_size * num_curve_points``
  float64), then the distance is refined exactly on the two curve segments next to that sample,
  so points on the curve come out at ~0 (float rounding) and the error elsewhere is second order
  in the sample spacing.

  Args:
    points: (N, 2) array-like (numpy or JAX). Non-finite points get distance ``inf``.
    num_curve_points: curve samples, >= 2.
    chunk_size: points per chunk of the nearest-sample search.

  Returns:
    (N,) float32 distances.
  """
  p = np.asarray(points, np.float64)
  if p.ndim != 2 or p.shape[1] != 2:
    raise ValueError(f"points must have shape (N, 2); got {p.shape}")
  finite = np.all(np.isfinite(p), axis=1)
  p = np.where(finite[:, None], p, 0.0)
  curve = _curve_polyline(int(num_curve_points))
  curve_sq = np.sum(curve * curve, axis=1)
  nearest = np.empty(len(p), np.int64)
  for start in range(0, len(p), chunk_size):
    q = p[start:start + chunk_size]
    # |q - c|^2 up to the per-point constant |q|^2; float64 keeps the argmin exact enough.
    nearest[start:start + chunk_size] = np.argmin(curve_sq[None, :] - 2.0 * q @ curve.T, axis=1)
  last = len(curve) - 1
  before = _distance_to_segments(p, curve[np.maximum(nearest - 1, 0)], curve[nearest])
  after = _distance_to_segments(p, curve[nearest], curve[np.minimum(nearest + 1, last)])
  distance = np.minimum(before, after)
  return np.where(finite, distance, np.inf).astype(np.float32)


def mix_statistics(points: np.ndarray, tolerance: float = TOLERANCE) -> dict[str, float]:
  """How close points (N, 2) lie to the spiral.

  Returns:
    ``{"mean_distance": mean distance to the curve (inf if any point is non-finite),
    "fraction_within_tolerance": fraction of points at distance <= tolerance}``, Python floats.
  """
  distance = distance_to_spiral(points)
  if distance.size == 0:
    raise ValueError("mix_statistics needs at least one point")
  return {"mean_distance": float(np.mean(distance.astype(np.float64))),
          "fraction_within_tolerance": float(np.mean(distance <= tolerance))}


@functools.partial(jax.jit, static_argnames=("k", "mixer", "seed"))
def _mix_codes(key: jax.Array | None, codes: jax.Array, k: int, mixer: str,
               seed: int | None) -> jax.Array:
  """Random mixes of codes (N, ...) -> (N, ...), exactly as the train step draws them. The key
  is ``key``, or made here from ``seed`` when ``key`` is None."""
  if key is None:
    key = jax.random.key(seed)
  key_partners, key_mix = jax.random.split(key)
  mixed, _ = mixers.get(mixer)(key_mix, mixers.partners(key_partners, codes, k))
  return mixed


def _to_numpy(x) -> np.ndarray:
  # A global array that this process does not hold whole (multi-process) is replicated here, so
  # its first local shard is all of it.
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def evaluate_mixes(points, key: jax.Array | int, *, encode_fn: Callable[[jax.Array], jax.Array],
                   decode_fn: Callable[[jax.Array], jax.Array], tolerance: float = TOLERANCE,
                   k: int = 2, mixer: str = "mixup") -> tuple[dict[str, float], np.ndarray]:
  """Decodes random mixes of the codes of ``points`` and measures how far they are from the curve.

  Args:
    points: (N, 2) data points (numpy, or a JAX array, e.g. replicated over a mesh).
    key: JAX random key for the partners and mixing weights, or an int seed from which the key
      is made inside the jitted mixing (then no host-local array enters it: use this in
      multi-process runs). A fixed key makes evaluations comparable across steps.
    encode_fn: ``codes = encode_fn(points)``, (N, 2) -> (N, latent_dim); e.g. a jitted
      ``lambda x: nets.encoder.apply({"params": state.generator["encoder"]}, x)``.
    decode_fn: ``decode_fn(codes)`` (N, latent_dim) -> (N, 2) points in data space (apply
      ``model.to_image`` there if the decoder's output needs mapping).
    tolerance: distance under which a decoded mix counts as on the spiral.
    k: number of sources per mix (config.k).
    mixer: a name from :func:`amr_jax.mixers.names` (config.mixer).

  Returns:
    ``(stats, decoded)``: ``stats = {"mean_distance", "fraction_within_tolerance"}`` (floats) of
    the decoded mixes, and the decoded mixes as numpy (N, 2) float32.
  """
  codes = encode_fn(points)
  if isinstance(key, (int, np.integer)):
    mixed = _mix_codes(None, codes, k=k, mixer=mixer, seed=int(key))
  else:
    mixed = _mix_codes(key, codes, k=k, mixer=mixer, seed=None)
  decoded = decode_fn(mixed)
  decoded = _to_numpy(decoded).astype(np.float32)
  if decoded.ndim != 2 or decoded.shape[1] != 2:
    raise ValueError(f"decode_fn must return points (N, 2); got shape {decoded.shape}")
  return mix_statistics(decoded, tolerance), decoded


# --------------------------------------------------------------------------------------------
# Picture

_GREY = (175, 175, 175)
_CURVE = (40, 40, 40)
_RED = (220, 30, 30)
_BLUE = (40, 90, 220)


def _to_pixels(points: np.ndarray, size: int, extent: float) -> tuple[np.ndarray, np.ndarray]:
  """Maps [-extent, extent]^2 (y up) onto pixel coordinates of a size x size canvas (y down).

  Returns the pixel coordinates (n, 2) of the finite points inside the view, and a boolean (N,)
  mask of which input points those are.
  """
  p = np.asarray(points, np.float64).reshape(-1, 2)
  inside = np.all(np.isfinite(p), axis=1) & np.all(np.abs(p) <= extent, axis=1)
  scale = (size - 1) / (2.0 * extent)
  px = (p[inside, 0] + extent) * scale
  py = (extent - p[inside, 1]) * scale
  return np.stack([px, py], axis=1), inside


def _dots(draw: ImageDraw.ImageDraw, pixels: np.ndarray, radius: float, color) -> None:
  for x, y in pixels:
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)


def render(data_points: np.ndarray, decoded_mixes: np.ndarray,
           reconstructions: np.ndarray | None = None, *, title: str = "", size: int = 512,
           extent: float = 1.25) -> np.ndarray:
  """A scatter in the style of the paper's Figure 12, as a uint8 (size, size, 3) picture.

  Data points in grey, the noise-free spiral as a thin dark line, reconstructions (optional) in
  blue, decoded mixes in red on top; a legend (with how many points fell outside the view) and an
  optional ``title`` line at the top left.

  Args:
    data_points: (N, 2) training points.
    decoded_mixes: (M, 2) decoded mixes.
    reconstructions: optional (R, 2) reconstructions of training points.
    title: text drawn at the top.
    size: width and height in pixels.
    extent: the view is [-extent, extent]^2.
  """
  image = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  data_px, _ = _to_pixels(data_points, size, extent)
  _dots(draw, data_px, 1.0, _GREY)
  curve_px, _ = _to_pixels(_curve_polyline(2_001), size, extent)
  draw.line([tuple(c) for c in curve_px], fill=_CURVE, width=1)
  legend = [(_GREY, f"data ({len(data_px)})"), (_CURVE, "spiral")]
  for points, color, radius, name in ((reconstructions, _BLUE, 1.0, "reconstructions"),
                                      (decoded_mixes, _RED, 1.5, "decoded mixes")):
    if points is None:
      continue
    pixels, inside = _to_pixels(points, size, extent)
    _dots(draw, pixels, radius, color)
    outside = int(np.sum(~inside))
    legend.append((color, f"{name} ({len(pixels)}" + (f", {outside} outside)" if outside
                                                       else ")")))
  top = 4
  if title:
    draw.text((6, top), title, fill=(0, 0, 0))
    top += 14
  for color, text in legend:
    draw.rectangle((6, top + 3, 12, top + 9), fill=color)
    draw.text((16, top), text, fill=(0, 0, 0))
    top += 12
  return np.asarray(image)


def plot(path: str, data_points: np.ndarray, decoded_mixes: np.ndarray,
         reconstructions: np.ndarray | None = None, **kwargs) -> str:
  """Writes :func:`render`'s picture as a PNG at ``path`` (parent folders are created); the
  keyword arguments are render's. Returns ``path``."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(render(data_points, decoded_mixes, reconstructions, **kwargs)).save(path)
  return path
