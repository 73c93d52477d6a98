"""Time to the first step: a fresh process, launched with the persistent compilation cache warm,
timed from its launch to its first step's start (dispatched) and finish (metrics on the host)."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from benchmarks import common
from benchmarks import loop as loop_lib


def first_step(name: str, args) -> dict[str, Any]:
  """A fresh run (this process) to the end of its first step, the persistent cache warm."""
  t_imports = time.time()
  # Imported here to be timed (imports_s), as is amr_jax.train below.
  import jax  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  t_imported = time.time()
  common.use_compilation_cache(args.child_cache_dir)
  config = common.make_config(name, tiny=args.tiny, light_eval=True)
  t0 = time.perf_counter()
  dataset = common.make_dataset(name, config, tiny=args.tiny)
  data_s = time.perf_counter() - t0
  synthetic = "dsprites" not in common.CONFIGS[name]
  config.log_every = 1
  config.eval_every = config.checkpoint_every = 1000
  # The loop asks for step 1's batch right after the first step has been compiled (from the
  # cache) and dispatched: the moment the first step starts running on the device.
  from amr_jax.data import prefetch  # pylint: disable=g-import-not-at-top
  batch_requests: list[float] = []
  original_next = prefetch.Prefetcher.next

  def timed_next(self):
    batch_requests.append(time.perf_counter())
    return original_next(self)

  prefetch.Prefetcher.next = timed_next
  try:
    with tempfile.TemporaryDirectory(prefix="amr_bench_first_") as workdir, \
        common.serve_dataset(dataset, synthetic), \
        loop_lib.timed_writer(stop_after_first=True) as times:
      t_call = time.perf_counter()
      try:
        train_lib.train_and_evaluate(config, workdir)
      except loop_lib._StopAfterFirstLog:  # pylint: disable=protected-access
        pass
  finally:
    prefetch.Prefetcher.next = original_next
  at = dict(times)
  to_wall = lambda t: time.time() - (time.perf_counter() - t)
  started = to_wall(batch_requests[1]) - args.launch_time
  wall_at_first = time.time() - (time.perf_counter() - at[1])
  since_launch = wall_at_first - args.launch_time
  return {
      # From launching the process to the first step's metrics on the host, not counting the
      # synthetic data's generation (a real run spends its loader's time there instead; for
      # dsprites the real loader runs and is counted).
      "first_step_s_warm": since_launch - (data_s if synthetic else 0.0),
      # From launching the process to the first step dispatched to the device (compiled).
      "first_step_start_s_warm": started - (data_s if synthetic else 0.0),
      "first_step_s_warm_breakdown": {
          "python_start_s": t_imports - args.launch_time, "imports_s": t_imported - t_imports,
          "data_s": data_s, "since_launch_s": since_launch,
          # train_and_evaluate: setup (networks, the state's shapes, the checkpoint check), the
          # metrics writer (TensorFlow waits for the first write), then the initial state built
          # while the first step compiles (cache) in a background thread, and the first step.
          "setup_s": at["writer_init_start"] - t_call,
          "metrics_writer_init_s": at["writer_init_end"] - at["writer_init_start"],
          "compile_and_first_step_s": at[1] - at["writer_init_end"]},
  }
