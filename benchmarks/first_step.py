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
  hooks, events = loop_lib.timed_hooks(stop_after_first_log=True)
  with tempfile.TemporaryDirectory(prefix="amr_bench_first_") as workdir:
    t_call = time.perf_counter()
    try:
      train_lib.train_and_evaluate(config, workdir, dataset=dataset, hooks=hooks)
    except loop_lib.StopAfterFirstLog:
      pass
  at = {event: dict(marks) for event, marks in events.items()}
  to_wall = lambda t: time.time() - (time.perf_counter() - t)
  started = to_wall(at["dispatched"][1]) - args.launch_time
  since_launch = to_wall(at["logged"][1]) - args.launch_time
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
          # train_and_evaluate: set-up (validation, networks, the state's shapes, evaluators,
          # the checkpoint check), then the first step compiled (from the cache) in a background
          # thread while the initial state is built, then the first step to its metrics.
          "setup_s": at["ready"][0] - t_call,
          "compile_and_init_s": at["compiled"][0] - at["ready"][0],
          "first_step_s": at["logged"][1] - at["compiled"][0]},
  }
