"""Batches prepared ahead, in a background thread, so the device never waits for the host.

The training loop asks for the batch of each step in order. ``Prefetcher`` builds the batches of
the next few steps (gathering rows, rendering lazy images, copying to the devices) while the
device runs the current one. Batches are a pure function of the step, so a prefetched batch is
exactly the one the loop would have built itself.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["Prefetcher"]

_DONE = object()


class Prefetcher:
  """Yields ``make_batch(step)`` for ``step = start, start + 1, ..., stop - 1``.

  ``make_batch`` runs in one background thread, at most ``depth`` steps ahead. An exception it
  raises is re-raised by ``next`` at that step. Use as a context manager (or call ``close``):
  leaving early stops the thread.
  """

  def __init__(self, make_batch: Callable[[int], Any], start: int, stop: int, depth: int = 2):
    if depth < 1:
      raise ValueError(f"depth must be at least 1; got {depth}")
    self._make_batch = make_batch
    self._next_step = start
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(start, stop), daemon=True,
                                    name="amr_jax-prefetch")
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, start: int, stop: int) -> None:
    for step in range(start, stop):
      if self._stop.is_set():
        return
      try:
        item = (step, self._make_batch(step), None)
      except BaseException as error:  # pylint: disable=broad-except
        self._put((step, None, error))
        return
      if not self._put(item):
        return
    self._put(_DONE)

  def next(self) -> Any:
    """The batch of the next step (blocks until it is ready)."""
    item = self._queue.get()
    if item is _DONE:
      raise StopIteration(f"no batch after step {self._next_step - 1}")
    step, batch, error = item
    assert step == self._next_step, (step, self._next_step)
    self._next_step += 1
    if error is not None:
      raise error
    return batch

  def close(self) -> None:
    self._stop.set()
    self._thread.join()

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
