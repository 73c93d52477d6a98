"""Where a pre-emption notice (SIGTERM) stops a training run: at a call boundary, the same one on
every process, where the run saves a checkpoint and exits 0."""

from __future__ import annotations

import itertools
import logging
import signal

import jax
from jax.experimental import multihost_utils

# How many calls the host may dispatch ahead of the device: enough to keep it fed, few enough
# that a SIGTERM (acted on between calls) is acted on promptly (see benchmarks/README.md).
MAX_CALLS_IN_FLIGHT = 2

# Call boundaries counted over the process's life, for JAX's preemption sync manager (it lives
# as long as the process; a second run in the same process must not count from 0 again).
_CALL_BOUNDARIES = itertools.count(1)


class Preemption:
  """``reached()``, asked at every call boundary, is True at the boundary where the run saves a
  checkpoint and exits.

  One process: a Python SIGTERM handler sets a flag; the next boundary is the one.

  Several processes (``jax.distributed``): hosts get their notices seconds apart, and saving
  and the next step are collective, so every process must stop at the same boundary. JAX's
  preemption sync manager (set up by ``jax.distributed.initialize()``) catches SIGTERM in C++
  and tells the coordination service; each process then reports its last boundary and all
  agree on the one after the furthest (``multihost_utils.reached_preemption_sync_point``),
  whichever host got the notice first and whether or not the others ever get theirs. A later
  SIGTERM is absorbed by the same C++ handler, so a process that has already stopped still
  exits 0. Python's SIGTERM handler is not installed then: it would replace JAX's (which
  ``signal.getsignal`` does not see).
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._synced = jax.process_count() > 1

  def __enter__(self) -> "Preemption":
    if self._synced:
      if not jax.config.jax_enable_preemption_service:
        logging.warning("jax_enable_preemption_service is off: SIGTERM ends this multi-process "
                        "run without a checkpoint")
        self._synced = False
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self) -> bool:
    """Whether to save and exit at this call boundary (ask once per boundary, in the same
    order on every process)."""
    if self._synced:
      # The sync manager compares a count of boundaries (consecutive, the same on every
      # process, never repeated while the process lives) with the agreed one.
      return multihost_utils.reached_preemption_sync_point(next(_CALL_BOUNDARIES))
    return self.requested

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
