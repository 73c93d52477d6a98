"""PNG pictures: grids of images and interpolation strips."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8, clipping what a decoder overshoots."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def tile(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """Lays out rows of images (each (n, H, W, C), all the same n, H, W, C) as one uint8 picture
  (rows * (H + pad), n * (W + pad), C) with a grey border between images."""
  rows = [to_uint8(r) for r in rows]
  n, height, width, channels = rows[0].shape
  canvas = np.full((len(rows) * (height + pad) + pad, n * (width + pad) + pad, channels), 128,
                   np.uint8)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      top, left = pad + i * (height + pad), pad + j * (width + pad)
      canvas[top:top + height, left:left + width] = image
  return canvas


def enlarge(picture: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour enlargement of a (H, W, C) picture, so small digits show."""
  return picture.repeat(scale, 0).repeat(scale, 1) if scale > 1 else picture


def save_png(path: str, picture: np.ndarray, scale: int = 1) -> None:
  """Writes a uint8 (H, W, C) picture, enlarged ``scale`` times (nearest)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  picture = enlarge(picture, scale)
  if picture.shape[-1] == 1:
    picture = picture[..., 0]
  Image.fromarray(picture).save(path)


def grids(pictures: dict[str, np.ndarray], scale: int = 2) -> dict[str, np.ndarray]:
  """The pictures of one evaluation (see ``model.generated_images``) laid out as uint8
  (H, W, C) grids, enlarged ``scale`` times:

  - 'mixes': rows of inputs, reconstructions, partners, decoded mixes.
  - 'interpolation': for each pair, a strip of decoded latent interpolations (mixup: alpha
    0 -> 1), then channel swaps where the mixer swaps channels, then the pixel-space
    interpolation as a reference row.
  - 'attribute_mixes' (supervised AMR): per pair, both inputs and the decoded learned mix for
    every combination of attribute values.
  """
  out = {"mixes": tile([pictures[k] for k in ("inputs", "reconstructions", "partners", "mixes")])}
  strips = []
  for pair in range(pictures["latent_interpolation"].shape[0]):
    strips.append(pictures["latent_interpolation"][pair])
    if "channel_interpolation" in pictures:
      strips.append(pictures["channel_interpolation"][pair])
    strips.append(pictures["pixel_interpolation"][pair])
  out["interpolation"] = tile(strips)
  if "attribute_mixes" in pictures:
    # Per pair: the two inputs, then the decoded mix for each attribute combination (in the
    # binary order of the combination's index: attribute 0 is the lowest bit).
    rows = [np.concatenate([pictures["inputs"][i:i + 2], mixes])
            for i, mixes in enumerate(pictures["attribute_mixes"])]
    out["attribute_mixes"] = tile(rows)
  return {name: enlarge(picture, scale) for name, picture in out.items()}
