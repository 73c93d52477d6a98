"""The training loop's host side: metrics read one window late, TensorBoard off the main thread,
no step compiled twice."""

import json
import time

import jax
import ml_collections
import numpy as np
import pytest

from amr_jax import preemption
from amr_jax import stepper
from amr_jax import train
from amr_jax import train_step
from amr_jax.metrics_writer import MetricsWriter
from experiments.configs import tiny


def metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return {r["step"]: r for r in map(json.loads, f)}


@pytest.mark.equivalence
def test_late_read_windows_hold_the_same_steps_as_per_step_records(tmp_path):
  """Logging every step and every 3 steps, with evaluations only at the end, is the same
  training; each 3-step record is the mean of that window's per-step records."""
  def run(log_every, name):
    config = tiny.get_config()
    config.num_train_steps = 7
    config.log_every = log_every
    config.eval_every = config.checkpoint_every = 7
    train.train_and_evaluate(config, str(tmp_path / name))
    return metrics(tmp_path / name)

  every_step, every_third = run(1, "a"), run(3, "b")
  assert list(every_step) == [1, 2, 3, 4, 5, 6, 7]
  assert list(every_third) == [3, 6, 7]
  for end, steps in ((3, (1, 2, 3)), (6, (4, 5, 6)), (7, (7,))):
    for name in ("d_loss", "g_loss", "recon", "probe_loss"):
      # G's loss exists on G's steps only (g_every 2: steps 1, 3, 5, 7): its window mean is
      # over those.
      values = [every_step[s][name] for s in steps if name in every_step[s]]
      assert (name in every_step[2]) == (name != "g_loss")
      np.testing.assert_allclose(every_third[end][name], np.mean(values), rtol=1e-5)
  assert "valid_probe_acc" in every_third[7] and "valid_probe_acc" not in every_third[6]


def test_each_step_variant_is_traced_once_per_run(tmp_path, monkeypatch):
  """The first step, compiled in a background thread from the state's shapes, is the executable
  the loop runs, and the state a step returns has the shardings and types of the one it took
  (initial or restored): each variant of the step (with and without G's update) is traced once
  per run, also when a resumed run starts on the one without."""
  traced = []
  make_train_step = train_step.make_train_step

  def counting_make_train_step(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)

    def counted(state, batch, key, update_generator=None):
      traced.append(update_generator)
      return step_fn(state, batch, key, update_generator)
    return counted

  monkeypatch.setattr(train_step, "make_train_step", counting_make_train_step)
  config = tiny.get_config()  # g_every 2
  config.num_train_steps = config.checkpoint_every = config.eval_every = 3
  train.train_and_evaluate(config, str(tmp_path))  # steps 0, 1, 2: G updated at 0 and 2
  assert traced == [True, False]
  traced.clear()
  config.num_train_steps = config.eval_every = 5
  train.train_and_evaluate(config, str(tmp_path))  # resumes at step 3: no G update first
  assert traced == [False, True]
  assert list(metrics(tmp_path))[-1] == 5


def test_a_writer_without_writes_closes_cleanly(tmp_path):
  """The TensorBoard writer is created at the first write only; a run that writes nothing has no
  event file."""
  writer = MetricsWriter(str(tmp_path))
  writer.close()
  assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_events_hold_every_scalar(tmp_path):
  event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  writer = MetricsWriter(str(tmp_path))
  writer.write(1, {"loss": 0.5, "per_seed": [1.0, 2.0]})
  writer.write(2, {"loss": 0.25})
  writer.close()
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert events.Tags()["scalars"] == ["loss"]
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2]


def test_the_host_dispatches_at_most_two_calls_ahead_of_the_device(tmp_path, monkeypatch):
  """SIGTERM acts between calls, so the host must not queue many calls ahead of the device: with
  each step made slow on the device (a 0.2 s host callback inside it), the host never holds more
  than preemption.MAX_CALLS_IN_FLIGHT unfinished calls when it dispatches the next one."""
  make_train_step = train_step.make_train_step

  def slow_make_train_step(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)

    def slow(state, batch, key, update_generator=None):
      state, out = step_fn(state, batch, key, update_generator)
      pause = jax.pure_callback(lambda x: (time.sleep(0.2), x)[1],
                                jax.ShapeDtypeStruct((), np.float32), out["recon"])
      return state, dict(out, recon=pause)
    return slow

  unfinished = []
  outputs = []
  run = stepper.Stepper.run

  def watched(self, state, first, n, inputs):
    unfinished.append(sum(not all(a.is_ready() for a in jax.tree.leaves(o)) for o in outputs))
    state, metrics = run(self, state, first, n, inputs)
    outputs.append(metrics)
    return state, metrics

  monkeypatch.setattr(train_step, "make_train_step", slow_make_train_step)
  monkeypatch.setattr(stepper.Stepper, "run", watched)
  config = tiny.get_config()
  config.num_train_steps = config.log_every = config.eval_every = config.checkpoint_every = 12
  # One step variant and no evaluators: a step with a host callback is not persistently cached.
  config.g_every = 1
  config.evals = ml_collections.ConfigDict()
  train.train_and_evaluate(config, str(tmp_path))
  assert len(unfinished) == 12
  assert max(unfinished) <= preemption.MAX_CALLS_IN_FLIGHT, unfinished


def test_a_given_dataset_is_trained_on_and_hooks_note_the_loop(tmp_path, monkeypatch):
  """``dataset=`` trains on that dataset without loading ``config.data`` (loading is made to
  fail: the same call without it fails), and the hooks see the loop's moments in order."""
  config = tiny.get_config()
  dataset = train.load_dataset(config)
  config.num_train_steps = config.log_every = config.eval_every = config.checkpoint_every = 2

  def no_loading(*args, **kwargs):
    raise RuntimeError("loaded the data")

  monkeypatch.setattr(train.data_lib, "load", no_loading)
  with pytest.raises(RuntimeError, match="loaded the data"):  # negative control
    train.train_and_evaluate(config, str(tmp_path / "loads"))
  events = []
  hooks = train.Hooks(on_event=lambda event, step: events.append((event, step)),
                      wait_for_saves=True)
  state, summary = train.train_and_evaluate(config, str(tmp_path / "given"), dataset=dataset,
                                            hooks=hooks)
  assert int(state.step) == 2 and summary["step"] == 2
  assert events == [("ready", 0), ("compiled", 0), ("dispatched", 1), ("dispatched", 2),
                    ("eval", 2), ("logged", 2), ("saved", 2)]
  assert list(metrics(tmp_path / "given")) == [2]
