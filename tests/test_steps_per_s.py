"""steps_per_s in metrics.jsonl: training steps per second of training, with the time of
evaluations and checkpoints reported apart."""

import json
import time

import jax
from jax.experimental import io_callback
import numpy as np

from amr_jax import train
from amr_jax import train_step
from experiments.configs import tiny


def metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return {r["step"]: r for r in map(json.loads, f)}


def test_steps_per_s_counts_training_time_only_and_reports_evaluations_apart(tmp_path,
                                                                               monkeypatch):
  """Each step sleeps 0.2 s on the device, each evaluation 2 s and each checkpoint save 1 s on
  the host, and the times of all three are noted where they happen (a checkpoint's from the
  check of the state before it). A record's steps_per_s is
  its window's steps over the device's time for them (from one window's last step to the
  next's, less the evaluations and saves in between), within a factor of 2; the evaluation at
  a record's step is its eval_s, a save's time is the next record's checkpoint_s. (Before,
  steps_per_s was timed between reads of the windows: an evaluation step's record, read right
  after the window before, read tens of times too fast, and the next one counted the
  evaluation as training.)"""
  step_done = {}  # step -> when its sleep ended on the device
  pauses = {"eval": [], "checkpoint": []}  # (start, end), as the test sees them
  make_train_step = train_step.make_train_step

  def slow_make_train_step(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)

    def note(recon, step):
      time.sleep(0.2)
      step_done[int(step) + 1] = time.perf_counter()
      return recon

    def slow(state, batch, key, update_generator=None):
      new_state, out = step_fn(state, batch, key, update_generator)
      recon = io_callback(note, jax.ShapeDtypeStruct((), np.float32), out["recon"], state.step)
      return new_state, dict(out, recon=recon)
    return slow

  checks = []  # when each check of the state before a save began (the first one compiles)
  make_finite_check = train.make_finite_check

  def noting_make_finite_check(mesh):
    check = make_finite_check(mesh)
    return lambda state: (checks.append(time.perf_counter()), check(state))[1]

  def timed(kind, fn, seconds):
    def wrapped(*args, **kwargs):
      start = time.perf_counter()
      time.sleep(seconds)
      result = fn(*args, **kwargs)
      # A checkpoint's time begins with the check of the state before it.
      pauses[kind].append((checks[-1] if kind == "checkpoint" else start, time.perf_counter()))
      return result
    return wrapped

  monkeypatch.setattr(train_step, "make_train_step", slow_make_train_step)
  monkeypatch.setattr(train, "make_finite_check", noting_make_finite_check)
  monkeypatch.setattr(train.evaluators, "run_due", timed("eval", train.evaluators.run_due, 2.0))
  monkeypatch.setattr(train.checkpointing.Checkpointer, "save",
                      timed("checkpoint", train.checkpointing.Checkpointer.save, 1.0))
  config = tiny.get_config()
  config.num_train_steps = 12
  config.log_every = 2
  config.eval_every = config.checkpoint_every = 4  # evaluations and saves at steps 4, 8 and 12
  config.g_every = 1  # one step variant, compiled before the loop starts
  train.train_and_evaluate(config, str(tmp_path))
  records = metrics(tmp_path)
  assert list(records) == [2, 4, 6, 8, 10, 12] and sorted(step_done) == list(range(1, 13))
  assert len(pauses["eval"]) == len(pauses["checkpoint"]) == 3

  def paused(start, end):
    return sum(b - a for kind in pauses for a, b in pauses[kind] if start < a < end)

  ratios = {}
  for previous, step in zip(list(records)[:-1], list(records)[1:]):  # the first has no start
    training = step_done[step] - step_done[previous] - paused(step_done[previous],
                                                              step_done[step])
    ratios[step] = records[step]["steps_per_s"] / ((step - previous) / training)
  assert all(0.5 < ratio < 2 for ratio in ratios.values()), ratios
  for step, record in records.items():
    evaluated, saved_before = step % 4 == 0, step % 4 == 2 and step > 2
    eval_s = dict(zip((4, 8, 12), (b - a for a, b in pauses["eval"]))).get(step, 0.0)
    save_s = dict(zip((6, 10), (b - a for a, b in pauses["checkpoint"]))).get(step, 0.0)
    assert (record["eval_s"] >= eval_s >= 2.0) if evaluated else record["eval_s"] == 0.0
    assert (record["checkpoint_s"] >= save_s >= 1.0) if saved_before else (
        record["checkpoint_s"] == 0.0), (step, record)
    # What else the pause holds (waiting for nothing, writing the pictures) is small.
    assert record["eval_s"] < eval_s + 2.0 and record["checkpoint_s"] < save_s + 2.0
