"""The full training loop: ``amr_jax.train.train_and_evaluate`` timed from the inside, through
hooks on its metrics writer, its evaluations and its checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Any

from benchmarks import common


class _StopAfterFirstLog(Exception):
  pass


@contextlib.contextmanager
def timed_writer(stop_after_first: bool = False):
  """Records (step, perf_counter) at every metrics line ``amr_jax.train`` writes (after the
  line is written, so a line that follows an evaluation comes after it), and
  ('writer_init_start' | 'writer_init_end', perf_counter) around the writer's creation."""
  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  saved = train_lib.MetricsWriter
  times: list[tuple[int, float]] = []

  class TimedWriter(saved):

    def __init__(self, *args, **kwargs):
      times.append(("writer_init_start", time.perf_counter()))
      super().__init__(*args, **kwargs)
      times.append(("writer_init_end", time.perf_counter()))

    def write(self, step, metrics):
      super().write(step, metrics)
      times.append((step, time.perf_counter()))
      if stop_after_first:
        raise _StopAfterFirstLog()

  train_lib.MetricsWriter = TimedWriter
  try:
    yield times
  finally:
    train_lib.MetricsWriter = saved


@contextlib.contextmanager
def timed_evaluations_and_checkpoints():
  """Records when each evaluation starts (``amr_jax.evaluators.common.run_due``, which runs the
  evaluators due at a step) and when each ``Checkpointer.save`` has finished writing (saves are
  made synchronous)."""
  from amr_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from amr_jax.evaluators import common as evaluators  # pylint: disable=g-import-not-at-top
  saved_run_due, saved_save = evaluators.run_due, checkpointing.Checkpointer.save
  events: dict[str, list] = {"evaluation": [], "saved": []}

  def run_due(*args, **kwargs):
    events["evaluation"].append(time.perf_counter())
    return saved_run_due(*args, **kwargs)

  def save(self, step, *args, **kwargs):
    out = saved_save(self, step, *args, **kwargs)
    # Wait for orbax's background write: it would otherwise slow the steps measured next. Its
    # whole cost is then counted in the checkpoint's time (amortised over checkpoint_every).
    self.wait()
    events["saved"].append((step, time.perf_counter()))
    return out

  evaluators.run_due, checkpointing.Checkpointer.save = run_due, save
  try:
    yield events
  finally:
    evaluators.run_due, checkpointing.Checkpointer.save = saved_run_due, saved_save


def run_loop(config, dataset, synthetic: bool, *, log_every: int, half: int,
             batch_size: int) -> dict[str, Any]:
  """``train_and_evaluate`` for 2 * ``half`` steps, logging every ``log_every``, evaluating and
  checkpointing at ``half`` (the first time: compiles) and at the end; returns its timings.

  Steady state is the second half by the wall clock: from the return of the checkpoint at
  ``half`` (its finiteness check has waited for the device) to the start of the final
  evaluation (which needs every step finished): exactly ``half`` steps with their logging,
  whatever the loop overlaps inside. The loop's own ``steps_per_s`` lines are kept for reference.
  """
  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.num_train_steps = 2 * half
  config.log_every = log_every
  config.eval_every = config.checkpoint_every = half
  with tempfile.TemporaryDirectory(prefix="amr_bench_loop_") as workdir:
    with common.serve_dataset(dataset, synthetic), timed_writer() as times, \
        timed_evaluations_and_checkpoints() as events:
      train_lib.train_and_evaluate(config, workdir)
      t_return = time.perf_counter()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
  at = dict(times)
  saved_at = dict(events["saved"])
  final_eval_start = min(t for t in events["evaluation"] if t > saved_at[half])
  steady_sps = half / (final_eval_start - saved_at[half])
  return {
      "loop_steady_steps_per_s": steady_sps,
      "loop_steady_images_per_s": steady_sps * batch_size,
      "loop_logged_steps_per_s": [r["steps_per_s"] for r in records],
      "loop_log_every": log_every,
      "loop_steps": 2 * half,
      # One evaluation (with its pictures); the first one also compiles.
      "eval_s": at[2 * half] - final_eval_start,
      "eval_s_first": at[half] - events["evaluation"][0],
      # The checkpoint in the middle: finiteness check + save, waited for; the one at the end
      # also closes everything.
      "checkpoint_s": saved_at[half] - at[half],
      "checkpoint_and_close_s": t_return - at[2 * half],
  }
