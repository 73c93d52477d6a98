"""The full training loop: ``amr_jax.train.train_and_evaluate`` timed from the inside, through
its hooks (``amr_jax.train.Hooks``): when each metrics line is written, each evaluation starts
and each checkpoint has been written."""

from __future__ import annotations

import collections
import json
import os
import statistics
import tempfile
import time
from typing import Any


def timed_hooks(stop_after_first_log: bool = False, stop_after_logs: int = 0):
  """``(hooks, events)``: hooks that note ``events[event] = [(step, perf_counter), ...]`` and wait
  for each checkpoint's write (it would otherwise slow the steps measured next; its whole cost
  is then counted in the checkpoint's time, amortised over checkpoint_every). The run ends with
  ``StopAfterFirstLog`` at the first metrics line (``stop_after_first_log``) or the
  ``stop_after_logs``-th."""
  stop_after_logs = 1 if stop_after_first_log else stop_after_logs
  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  events: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)

  def on_event(event: str, step: int) -> None:
    events[event].append((step, time.perf_counter()))
    if stop_after_logs and event == "logged" and len(events["logged"]) >= stop_after_logs:
      raise StopAfterFirstLog()

  return train_lib.Hooks(on_event=on_event, wait_for_saves=True), events


class StopAfterFirstLog(Exception):
  pass


def run_loop(config, dataset, *, log_every: int, half: int, batch_size: int) -> dict[str, Any]:
  """``train_and_evaluate`` on ``dataset`` for 2 * ``half`` steps, logging every ``log_every``,
  evaluating and checkpointing at ``half`` (the first time: compiles) and at the end; returns
  its timings.

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
  hooks, events = timed_hooks()
  with tempfile.TemporaryDirectory(prefix="amr_bench_loop_") as workdir:
    train_lib.train_and_evaluate(config, workdir, dataset=dataset, hooks=hooks)
    t_return = time.perf_counter()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
  at = dict(events["logged"])
  saved_at = dict(events["saved"])
  eval_starts = [t for _, t in events["eval"]]
  final_eval_start = min(t for t in eval_starts if t > saved_at[half])
  steady_sps = half / (final_eval_start - saved_at[half])
  return {
      "loop_steady_steps_per_s": steady_sps,
      "loop_steady_images_per_s": steady_sps * batch_size,
      "loop_logged_steps_per_s": [r["steps_per_s"] for r in records],
      "loop_log_every": log_every,
      "loop_steps": 2 * half,
      # One evaluation (with its pictures); the first one also compiles.
      "eval_s": at[2 * half] - final_eval_start,
      "eval_s_first": at[half] - eval_starts[0],
      # The checkpoint in the middle: finiteness check + save, waited for; the one at the end
      # also closes everything.
      "checkpoint_s": saved_at[half] - at[half],
      "checkpoint_and_close_s": t_return - at[2 * half],
  }


def time_default_path(config, dataset, *, windows: int = 2) -> dict[str, Any]:
  """Images/s of ``python -m amr_jax.main --config=...`` as a user runs it: ``config`` untouched
  (every default, its steps per call included), on ``dataset``, stopped once ``windows`` + 1
  metrics lines are written. The speed is the median of the loop's own ``steps_per_s`` over the
  lines after the first (the first window holds the warm-up), as the user reads it in
  metrics.jsonl.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from amr_jax import stepper as stepper_lib  # pylint: disable=g-import-not-at-top
  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  hooks, events = timed_hooks(stop_after_logs=windows + 1)
  with tempfile.TemporaryDirectory(prefix="amr_bench_default_") as workdir:
    try:
      train_lib.train_and_evaluate(config, workdir, dataset=dataset, hooks=hooks)
    except StopAfterFirstLog:
      pass
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
  rates = [r["steps_per_s"] * config.batch_size * config.num_seeds for r in records[1:]]
  return {"images_per_s": statistics.median(rates), "window_images_per_s": rates,
          "window_steps": config.log_every, "backend": jax.default_backend(),
          # what set_up resolved for this config (one seed: no unrolled copies)
          "steps_per_call": stepper_lib.resolve_steps_per_call(config),
          "compiled_s": events["compiled"][0][1] - events["ready"][0][1]}
