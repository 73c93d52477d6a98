"""Worker processes for tests/test_parallel.py (each needs its own JAX device setup).

  python tests/parallel_worker.py step OUT          # 4 CPU devices: one step on 1 vs 4 devices
  python tests/parallel_worker.py train OUT WORKDIR STEPS [COORD NPROC PID]
      (AMR_TEST_NUM_SEEDS=N: N seeds side by side; AMR_TEST_BATCH_SIZE=B: the global batch;
       AMR_TEST_KINK_FREE=1: tolerances.kink_free; AMR_TEST_EVALS=0: no evaluator)
"""

import functools
import os
import sys

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

import jax  # noqa: E402
import numpy as np  # noqa: E402


def flatten(tree):
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0)
                                                 if isinstance(leaf, jax.Array) else leaf)
          for path, leaf in leaves}


def one_step_on_1_and_4_devices(out):
  from amr_jax import config as config_lib
  from amr_jax import networks, parallel
  from amr_jax import train_state as train_state_lib
  from amr_jax import train_step as train_step_lib

  assert jax.device_count() == 4, jax.devices()
  config = config_lib.base_config()
  config.arch.width = 2
  config.g_every = 1
  config.beta = 0.5
  nets = networks.build("acai32", image_channels=1, num_classes=10, width=2)
  optimizers = train_state_lib.make_optimizers(config.optim)
  step = train_step_lib.make_train_step(config, nets, optimizers)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  results = {}
  for n in (4, 1):  # 1 last: the extra step below runs on 1 device
    mesh = parallel.make_mesh(jax.devices()[:n])
    state = jax.jit(lambda: train_state_lib.create(nets, optimizers, jax.random.key(0), (32, 32, 1),
                                                           (4, 4, 2)),
                    out_shardings=parallel.replicated(mesh))()
    jitted = parallel.jit_data_parallel(functools.partial(step, update_generator=True), mesh,
                                        batch_args=(1,), num_args=3)
    global_batch = parallel.global_batch(mesh, batch)
    assert len(global_batch["image"].sharding.device_set) == n
    new_state, metrics = jitted(state, global_batch, jax.random.key(1))
    results[str(n)] = {**{"state" + k: v for k, v in flatten(new_state).items()},
                       **{"metrics" + k: v for k, v in flatten(metrics).items()}}
  # The negative control: one more step on 1 device.
  extra_state, _ = jitted(new_state, global_batch, jax.random.key(2))
  results["1+1"] = {"state" + k: v for k, v in flatten(extra_state).items()}
  np.savez(out, **{f"{n}|{k}": v for n, r in results.items() for k, v in r.items()})


def train(out, workdir, steps, coordinator=None, num_processes=1, process_id=0):
  """Trains the tiny config, changed by the AMR_TEST_* variables (see the module's docstring)."""
  import ml_collections
  from amr_jax import parallel, train as train_lib
  from experiments.configs import tiny
  from tests import tolerances

  if coordinator:
    parallel.initialize_distributed(coordinator, int(num_processes), int(process_id))
  config = tiny.get_config()
  config.num_train_steps = int(steps)
  config.num_seeds = int(os.environ.get("AMR_TEST_NUM_SEEDS", "1"))
  config.batch_size = int(os.environ.get("AMR_TEST_BATCH_SIZE", config.batch_size))
  if os.environ.get("AMR_TEST_KINK_FREE") == "1":
    tolerances.kink_free(config)
  if os.environ.get("AMR_TEST_EVALS") == "0":
    config.evals = ml_collections.ConfigDict()
  else:
    config.evals.reconstruction = {"every": 0, "num_examples": 50}  # sharded, mapped over seeds
  config.steps_per_call = int(os.environ.get("AMR_TEST_STEPS_PER_CALL", "1"))
  config.data.placement = os.environ.get("AMR_TEST_PLACEMENT", "host")
  state, summary = train_lib.train_and_evaluate(config, workdir)
  np.savez(out, **flatten(state))
  print("summary", summary, "devices", jax.device_count(), "processes", jax.process_count(),
        flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  mode, *args = sys.argv[1:]
  {"step": one_step_on_1_and_4_devices, "train": train}[mode](*args)
