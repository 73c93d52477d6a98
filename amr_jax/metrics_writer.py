"""Metrics out: one JSON line per logged step in metrics.jsonl, plus TensorBoard event files."""

from __future__ import annotations

import json
import logging
import os
from typing import Any


class MetricsWriter:
  """Appends ``{"step": s, **metrics}`` lines to WORKDIR/metrics.jsonl and scalars to
  WORKDIR/tensorboard. On resume, lines after ``resume_step`` (written by a run that died before
  its next checkpoint) are dropped, so the file tells one consistent history."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self._enabled = enabled
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
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.set_visible_devices([], "GPU")  # TF must leave accelerators to JAX
      self._tf = tf
      self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    except ImportError:
      logging.warning("tensorflow is not installed: no TensorBoard event files")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._enabled:
      return
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    if self._summary is not None:
      with self._summary.as_default(step=step):
        for name, value in metrics.items():
          if isinstance(value, (int, float)):  # per-seed lists stay in metrics.jsonl
            self._tf.summary.scalar(name, value)
      self._summary.flush()

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()
