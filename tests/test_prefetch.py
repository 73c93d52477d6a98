"""The prefetcher hands out exactly the batches the loop would build, in order."""

import threading
import time

import numpy as np
import pytest

from amr_jax import data as data_lib


def test_yields_make_batch_of_each_step_in_order():
  made = []

  def make(step):
    made.append(step)
    return {"idx": data_lib.batch_indices(3, step, 100, 8)}

  with data_lib.Prefetcher(make, start=5, stop=20, depth=2) as batches:
    for step in range(5, 20):
      np.testing.assert_array_equal(batches.next()["idx"], data_lib.batch_indices(3, step, 100, 8))
    with pytest.raises(StopIteration):
      batches.next()
  assert made == list(range(5, 20))


def test_runs_ahead_at_most_depth_steps():
  made = []
  with data_lib.Prefetcher(lambda s: made.append(s) or s, start=0, stop=100, depth=3) as batches:
    assert batches.next() == 0
    time.sleep(0.3)
    # One handed out, `depth` waiting in the queue, one built and waiting for room.
    assert len(made) <= 1 + 3 + 1, made


def test_an_error_is_raised_at_its_step():
  def make(step):
    if step == 3:
      raise RuntimeError("bad batch")
    return step

  with data_lib.Prefetcher(make, start=0, stop=10) as batches:
    assert [batches.next() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="bad batch"):
      batches.next()


def test_close_stops_the_thread_early():
  before = threading.active_count()
  batches = data_lib.Prefetcher(lambda s: s, start=0, stop=10**9, depth=2)
  assert batches.next() == 0
  batches.close()
  assert threading.active_count() == before


def test_depth_must_be_positive():
  with pytest.raises(ValueError, match="depth"):
    data_lib.Prefetcher(lambda s: s, start=0, stop=1, depth=0)
