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


def save_png(path: str, picture: np.ndarray, scale: int = 2) -> None:
  """Writes a uint8 (H, W, C) picture, enlarged ``scale`` times (nearest) so small digits show."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  if scale > 1:
    picture = picture.repeat(scale, 0).repeat(scale, 1)
  if picture.shape[-1] == 1:
    picture = picture[..., 0]
  Image.fromarray(picture).save(path)


def save_pictures(directory: str, step: int, pictures: dict[str, np.ndarray]) -> list[str]:
  """Writes the pictures of one evaluation (see ``train_step.generated_images``).

  - ``step_XXXXXXX_mixes.png``: rows of inputs, reconstructions, partners, decoded mixes.
  - ``step_XXXXXXX_interpolation.png``: for each pair, a strip of decoded latent interpolations
    (mixup: alpha 0 -> 1), then channel swaps where the mixer swaps channels, then the
    pixel-space interpolation as a reference row.
  - ``step_XXXXXXX_attribute_mixes.png`` (supervised AMR): per pair, both inputs and the decoded
    learned mix for every combination of attribute values.
  Returns the paths written.
  """
  grid = tile([pictures[k] for k in ("inputs", "reconstructions", "partners", "mixes")])
  paths = [os.path.join(directory, f"step_{step:07d}_mixes.png"),
           os.path.join(directory, f"step_{step:07d}_interpolation.png")]
  save_png(paths[0], grid)
  strips = []
  for pair in range(pictures["latent_interpolation"].shape[0]):
    strips.append(pictures["latent_interpolation"][pair])
    if "channel_interpolation" in pictures:
      strips.append(pictures["channel_interpolation"][pair])
    strips.append(pictures["pixel_interpolation"][pair])
  save_png(paths[1], tile(strips))
  if "attribute_mixes" in pictures:
    # Per pair: the two inputs, then the decoded mix for each attribute combination (in the
    # binary order of the combination's index: attribute 0 is the lowest bit).
    rows = [np.concatenate([pictures["inputs"][i:i + 2], mixes])
            for i, mixes in enumerate(pictures["attribute_mixes"])]
    paths.append(os.path.join(directory, f"step_{step:07d}_attribute_mixes.png"))
    save_png(paths[-1], tile(rows))
  return paths
