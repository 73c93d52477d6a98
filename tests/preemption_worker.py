"""Worker processes for tests/test_preemption.py: one process of a multi-process run.

  python tests/preemption_worker.py train OUT WORKDIR STEPS COORD NPROC PID
      the tiny config for STEPS steps, metrics logged every step, no checkpoint or evaluation
      before the last step (unless pre-empted); the final state goes to OUT (.npz)
  python tests/preemption_worker.py cost COORD NPROC PID CALLS
      what the pre-emption check costs per call boundary (see ``cost``)
"""

import os
import sys
import time

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.parallel_worker import flatten  # noqa: E402

ROUNDS = 11  # of the cost measurement


def train(out, workdir, steps, coordinator, num_processes, process_id):
  from amr_jax import parallel, train as train_lib
  from experiments.configs import tiny

  parallel.initialize_distributed(coordinator, int(num_processes), int(process_id))
  config = tiny.get_config()
  config.num_train_steps = int(steps)
  config.log_every = 1  # metrics.jsonl grows from the first steps: the test's sign of training
  config.checkpoint_every = config.eval_every = 1_000_000
  state, summary = train_lib.train_and_evaluate(config, workdir)
  np.savez(out, **flatten(state))
  print(f"process {jax.process_index()} ended at step {summary['step']} at {time.time():.3f}",
        flush=True)


def cost(coordinator, num_processes, process_id, calls):
  """Median time per call of the pre-emption check alone (``reached_preemption_sync_point``)
  in a tight loop, and of a small jitted collective step with and without the check, in
  interleaved rounds (the machine may be shared: medians over rounds)."""
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec as P

  from amr_jax import parallel

  parallel.initialize_distributed(coordinator, int(num_processes), int(process_id))
  calls = int(calls)
  mesh = parallel.make_mesh()
  # A step with a cross-process reduction, like the train step's gradient mean.
  step = jax.jit(lambda s, x: s + x.sum(), out_shardings=parallel.replicated(mesh))
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")),
                                             np.ones((4, 256), np.float32))
  counter = iter(range(1, 10**9))

  def check_alone():
    start = time.perf_counter()
    for _ in range(calls):
      multihost_utils.reached_preemption_sync_point(next(counter))
    return (time.perf_counter() - start) / calls

  def steps(with_check):
    s = parallel.replicate(mesh, np.zeros((), np.float32))
    jax.block_until_ready(step(s, x))
    multihost_utils.sync_global_devices("amr_jax:cost_round")
    start = time.perf_counter()
    for _ in range(calls // 10):
      s = step(s, x)
      if with_check:
        multihost_utils.reached_preemption_sync_point(next(counter))
    jax.block_until_ready(s)
    return (time.perf_counter() - start) / (calls // 10)

  rounds = {"check alone": [], "step + check": [], "step": []}
  for i in range(ROUNDS):
    rounds["check alone"].append(check_alone())
    for with_check in ((True, False) if i % 2 else (False, True)):  # alternate which goes first
      rounds["step + check" if with_check else "step"].append(steps(with_check))
  for name, values in rounds.items():
    print(f"process {jax.process_index()}: {name}: median {np.median(values) * 1e6:.2f} us "
          f"per call (min {min(values) * 1e6:.2f}, max {max(values) * 1e6:.2f}; "
          f"{ROUNDS} rounds x {calls if name == 'check alone' else calls // 10} calls)",
          flush=True)
  paired = np.subtract(rounds["step + check"], rounds["step"])
  print(f"process {jax.process_index()}: step + check - step, paired by round: median "
        f"{np.median(paired) * 1e6:.2f} us", flush=True)


if __name__ == "__main__":
  mode, *args = sys.argv[1:]
  {"train": train, "cost": cost}[mode](*args)
