"""The step's metrics on their way to the log: kept on the device, read in windows, checked for
NaN and Inf, with each window's training speed and the pauses (evaluations, checkpoints) timed
apart."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from typing import Any, Iterator

import jax
import numpy as np

from amr_jax import parallel


class NonFiniteLossError(RuntimeError):
  """A loss became NaN or Inf; the run stopped without checkpointing the bad state."""


@dataclasses.dataclass
class _Call:
  """One call of the step: its last step, how many steps it ran, its metrics (on the device; a
  :class:`amr_jax.stepper.CallMetrics`), and when the host saw it finished (None until then)."""
  last_step: int
  num_steps: int
  metrics: Any
  done: float | None = None


@dataclasses.dataclass
class _Pause:
  """Training paused for an evaluation or a checkpoint, from ``start`` to ``end``."""
  kind: str
  start: float
  end: float
  reported: bool  # already in a record (an evaluation is reported with its own results)


def _first_non_finite(history: list[tuple[int, dict[str, np.ndarray]]]) -> str | None:
  for step, metrics in history:
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        return f"non-finite loss at step {step}: {name}={np.asarray(value).tolist()}"
  return None


class MetricsLog:
  """The step's metrics, kept on device and read in windows, and each window's training speed.

  At a log step the window's metrics start copying to the host and are read at the next log
  step, long after they arrived, so the host never waits for the device there; evaluations and
  checkpoints, which need the state anyway, read everything.

  The log also paces the host: after each call it waits until at most ``max_in_flight`` calls
  are unfinished. A window's wall-clock time runs from the end of the previous window to the
  moment its last call has finished on the device, as the host sees it (at each call it notes
  which calls have finished), so a window's time is the device's, not the dispatch's (which
  runs ahead, and after a pause dispatches the first calls at once). Evaluations and
  checkpoints (``pause``) first wait for the steps dispatched before them, so that wait counts
  as training; their own time is reported apart (``eval_s``, ``checkpoint_s``) and left out of
  ``steps_per_s``.
  """

  def __init__(self, multi_seed: bool, max_in_flight: int):
    self._pending: list[_Call] = []
    self._in_flight: list[_Call] = []  # the last window, on its way
    self._unfinished: collections.deque[_Call] = collections.deque()  # in dispatch order
    self._window_start = time.perf_counter()  # where the next window's time begins
    self._pauses: list[_Pause] = []  # pauses not yet inside a computed window
    self._multi = multi_seed
    self._max_in_flight = max_in_flight

  def add(self, step: int, num_steps: int, metrics: Any) -> None:
    """A call's metrics (``num_steps`` steps ending at ``step``), still on the device; returns
    once at most ``max_in_flight`` calls are unfinished."""
    call = _Call(step, num_steps, metrics)
    self._pending.append(call)
    self._unfinished.append(call)
    self._note_finished()
    if len(self._unfinished) > self._max_in_flight:
      jax.block_until_ready(self._unfinished[0].metrics)
      self._note_finished()

  def _note_finished(self, through: _Call | None = None) -> None:
    """Stamps the calls seen finished now (in order: a call finishes after the ones before it);
    ``through``: that call and those before it are known to have finished."""
    now = time.perf_counter()
    while self._unfinished:
      call = self._unfinished[0]
      if through is None and not all(leaf.is_ready() for leaf in jax.tree.leaves(call.metrics)):
        return
      self._unfinished.popleft().done = now
      if call is through:
        return

  @contextlib.contextmanager
  def pause(self, kind: str, wait_for: Any, record: dict[str, Any] | None = None
            ) -> Iterator[None]:
    """Times what runs inside as ``kind`` ('eval' or 'checkpoint'), after waiting for
    ``wait_for`` (the state: the steps dispatched so far). Its seconds go into
    ``record[kind + '_s']`` when given (the record of this step, not yet written), else into
    the record of the window it falls in (the next one)."""
    jax.block_until_ready(wait_for)
    if self._unfinished:
      self._note_finished(through=self._unfinished[-1])
    start = time.perf_counter()
    try:
      yield
    finally:
      end = time.perf_counter()
      self._pauses.append(_Pause(kind, start, end, reported=record is not None))
      if record is not None:
        record[f"{kind}_s"] = end - start

  def read(self, everything: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(last step, record) of each window ready to read: the one in flight, and with
    ``everything`` also the pending one; the rest starts copying. Raises NonFiniteLossError at
    the first window holding a NaN or Inf (its record is not returned)."""
    windows = [self._in_flight] if self._in_flight else []
    if everything:
      windows.append(self._pending)
      self._in_flight = []
    else:
      for call in self._pending:
        jax.tree.map(lambda a: a.copy_to_host_async(), call.metrics)
      self._in_flight = self._pending
    self._pending = []
    return (self._record(window) for window in windows)  # read in turn: a bad one stops there

  def _record(self, window: list[_Call]) -> tuple[int, dict[str, Any]]:
    """Means of a window's metrics (and over the seeds), and its training speed."""
    history = [(call.last_step - call.num_steps + 1 + i, m) for call in window
               for i, m in enumerate(parallel.to_host(call.metrics).per_step())]
    if window[-1].done is None:  # read to the host just now: it has finished
      self._note_finished(through=window[-1])
    bad = _first_non_finite(history)
    if bad is not None:
      raise NonFiniteLossError(bad)
    # A metric missing from some steps (G's loss terms, computed on G's steps only) is the mean
    # over the steps that have it.
    names = dict.fromkeys(name for _, m in history for name in m)
    stacked = {name: np.stack([m[name] for _, m in history if name in m]) for name in names}
    record = {name: float(np.mean(values)) for name, values in stacked.items()}
    if self._multi:  # each seed's own curve too (its window mean)
      record.update({f"{name}_per_seed": values.mean(axis=0).tolist()
                     for name, values in stacked.items()})
    return window[-1].last_step, {**record, **self._timing(window)}

  def _timing(self, window: list[_Call]) -> dict[str, float]:
    """``steps_per_s`` over the window's time less its pauses; the pauses' seconds by kind."""
    end = window[-1].done
    inside = [p for p in self._pauses if p.start < end]  # a pause lies between two calls
    self._pauses = [p for p in self._pauses if p.start >= end]
    training = end - self._window_start - sum(p.end - p.start for p in inside)
    self._window_start = end
    timing = {"steps_per_s": sum(call.num_steps for call in window) / max(training, 1e-9)}
    for kind in ("eval", "checkpoint"):
      timing[f"{kind}_s"] = sum((p.end - p.start for p in inside
                                 if p.kind == kind and not p.reported), 0.0)
    return timing
