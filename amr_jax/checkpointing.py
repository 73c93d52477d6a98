"""Checkpoints with orbax: save the train state plus a little JSON, restore the newest good one."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last ``max_to_keep`` checkpoints of a run under ``directory``.

  Every process takes part in saving and restoring (orbax coordinates them). Saving is
  asynchronous; call ``wait()`` before exiting.
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    self._directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, target: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest readable checkpoint into the structure, shapes and shardings of
    ``target``. A damaged one is reported and moved aside to ``<directory>_damaged/<step>`` (the
    resumed run will write that step again). Returns (step, state, meta) or None."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    damaged = []
    result = None
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types for a damaged checkpoint
        logging.warning("checkpoint at step %d is unreadable (%s: %s); trying an older one",
                        step, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        damaged.append(step)
        continue
      result = step, restored["state"], dict(restored["meta"])
      break
    if damaged:
      self._set_aside(damaged)
    return result

  def _set_aside(self, steps: list[int]) -> None:
    aside = self._directory + "_damaged"
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        os.replace(os.path.join(self._directory, str(step)),
                   os.path.join(aside, f"{step}_{int(time.time())}"))
    multihost_utils.sync_global_devices("amr_jax:checkpoints_set_aside")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
