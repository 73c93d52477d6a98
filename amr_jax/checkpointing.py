"""Checkpoints with orbax: save the train state plus a little JSON, restore the newest good one."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils


class Checkpointer:
  """Keeps the last ``max_to_keep`` checkpoints of a run under ``directory``.

  Every process takes part in saving and restoring (orbax coordinates them). Saving is
  asynchronous; call ``wait()`` before exiting.

  orbax (its import and its manager) is set up only once there is a checkpoint to read or
  write, so a fresh run reaches its first train step without it.
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    self._directory = os.path.abspath(directory)
    self._max_to_keep = max_to_keep
    self._manager_or_none = None

  @property
  def _manager(self):
    if self._manager_or_none is None:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      self._manager_or_none = _manager_class()(
          self._directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True))
    return self._manager_or_none

  def _empty(self) -> bool:
    """No checkpoint can exist yet (and orbax has not been set up to write one)."""
    return self._manager_or_none is None and not (
        os.path.isdir(self._directory) and os.listdir(self._directory))

  def all_steps(self) -> list[int]:
    return [] if self._empty() else sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, target: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest readable checkpoint into the structure, shapes and shardings of
    ``target``. A damaged one is reported and moved aside to ``<directory>_damaged/<step>`` (the
    resumed run will write that step again). Returns (step, state, meta) or None."""
    if self._empty():
      return None
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
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
    if self._manager_or_none is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._manager_or_none is not None:
      self._manager.wait_until_finished()
      self._manager.close()


@functools.cache
def _manager_class() -> type:
  """orbax's ``CheckpointManager``, except that it never asks JAX's preemption sync manager.

  The training loop asks it, once per call boundary, with a count of boundaries
  (``amr_jax.preemption.Preemption``). orbax's own question (``reached_preemption``, from ``save``
  and from its background finalize thread) passes a step number instead, which the sync
  manager takes as this process's position: a finalize thread reporting an old step while the
  sync point is being agreed could set a point that this process has already passed, and the
  other processes would stop there without it. The loop forces every save, so orbax needs no
  answer of its own.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  class Manager(ocp.CheckpointManager):

    def reached_preemption(self, step: int) -> bool:
      del step
      return False

  return Manager
