"""Metrics out: one JSON line per logged step in metrics.jsonl, pictures as PNG files in
images/, and both as TensorBoard summaries (scalars and images)."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from typing import Any

import numpy as np

from amr_jax import visualize


class MetricsWriter:
  """Appends ``{"step": s, **metrics}`` lines to WORKDIR/metrics.jsonl and scalars to
  WORKDIR/tensorboard. On resume, lines after ``resume_step`` (written by a run that died before
  its next checkpoint) are dropped, so the file tells one consistent history.

  TensorBoard event files are written by tensorboardX (protobuf only, no TensorFlow: its import
  takes about 0.25 s where TensorFlow's took 5-8 s). It and every event-file write (PNG encoding,
  record checksums) run in one background thread, in order, off the training loop's thread; the
  writer is created at the first ``write``. ``close`` waits for the writes to finish.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self._enabled = enabled
    self._tensorboard = None
    self._summary = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(self._path):
      with open(self._path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
      with open(self._path, "w") as f:
        f.writelines(kept)
    self._logdir = os.path.join(workdir, "tensorboard")
    self._images = os.path.join(workdir, "images")
    self._tensorboard = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="amr_jax-tensorboard")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._enabled:
      return
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    scalars = {name: value for name, value in metrics.items()
               if isinstance(value, (int, float))}  # per-seed lists stay in metrics.jsonl
    self._submit(self._write_scalars, step, scalars)

  def write_pictures(self, step: int, pictures: dict[str, np.ndarray]) -> list[str]:
    """Writes uint8 (H, W, C) pictures as WORKDIR/images/step_XXXXXXX_NAME.png and as
    TensorBoard image summaries; returns the PNG paths."""
    if not self._enabled or not pictures:
      return []
    paths = []
    for name, picture in pictures.items():
      paths.append(os.path.join(self._images, f"step_{step:07d}_{name}.png"))
      visualize.save_png(paths[-1], picture)
    self._submit(self._write_images, step, dict(pictures))
    return paths

  def _submit(self, write, *args) -> None:
    """Queues a TensorBoard write on the background thread (creating the writer first)."""
    if self._tensorboard is None:
      return
    if self._summary is None:
      self._summary = self._tensorboard.submit(_create_summary_writer, self._logdir)
    self._tensorboard.submit(write, *args)

  def _write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    summary = self._summary.result()
    if summary is None:
      return
    for name, value in scalars.items():
      summary.add_scalar(name, value, step)
    summary.flush()

  def _write_images(self, step: int, pictures: dict[str, np.ndarray]) -> None:
    summary = self._summary.result()
    if summary is None:
      return
    for name, picture in pictures.items():
      summary.add_image(name, picture, step, dataformats="HWC")  # uint8, C = 1 or 3
    summary.flush()

  def close(self) -> None:
    """Finishes the TensorBoard writes; re-raises an error one of them met."""
    if self._tensorboard is None:
      return
    done = self._tensorboard.submit(self._close_summary)
    self._tensorboard.shutdown(wait=True)
    self._tensorboard = None
    done.result()

  def _close_summary(self) -> None:
    summary = None if self._summary is None else self._summary.result()
    if summary is not None:
      summary.close()


def _create_summary_writer(logdir: str):
  """A tensorboardX SummaryWriter on ``logdir``, or None (with a warning) without tensorboardX."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("tensorboardX is not installed (pip install amr_jax[train]): "
                    "no TensorBoard event files")
    return None
  return tensorboardX.SummaryWriter(logdir)
