"""Images/s of the training loop's own calls (``amr_jax.stepper``) at K steps per jitted call
(``config.steps_per_call``), with the training split on the device where it is an in-memory
array (``config.data.placement='device'``; dSprites renders its images on the host).

Each K trains about the same number of steps (``steps``, rounded to whole calls) after a warm-up
call that compiles it; the calls' inputs come through the loop's prefetcher, as in training.
"""

from __future__ import annotations

import time
from typing import Any, Sequence


# On XLA:CPU a call's K steps are unrolled (amr_jax.stepper.resolve_loop): a call compiles K
# copies of the step, so large K are not timed there.
SKIPPED = ("XLA:CPU: a call's steps are unrolled (the step ran ~35x slower in a scan), so K "
           "copies of the step would compile; not timed on CPU")


def max_k() -> int:
  """The largest K timed on this backend."""
  import jax  # pylint: disable=g-import-not-at-top
  return 10 if jax.default_backend() == "cpu" else 1_000_000


def measure(config, dataset, ks: Sequence[int], steps: int) -> dict[str, Any]:
  """``{"placement": ..., "by_k": {K: {"images_per_s", "compile_s", "calls"}}}``."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from amr_jax import stepper as stepper_lib  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top

  placement = "device" if isinstance(dataset.train.images, np.ndarray) else "host"
  run = common.set_up(config, dataset)
  seeded_step = stepper_lib.make_seeded_step(run.config, run.nets, run.optimizers, run.seeds)
  by_k = {}
  for k in ks:
    config_k = run.config.copy_and_resolve_references()
    config_k.steps_per_call = k
    stepper = stepper_lib.Stepper(config_k, dataset.train, seeded_step, run.mesh, run.seeds,
                                  placement=placement, loop=run.loop, steps_per_call=k)
    calls = max(1, round(steps / k))
    plan = stepper.plan(0, (calls + 1) * k)
    state = run.init_state()
    t0 = time.perf_counter()
    stepper.compile(run.state_spec, *plan[0])
    compile_s = time.perf_counter() - t0
    with stepper.prefetch(plan) as inputs:
      state, metrics = stepper.run(state, *plan[0], inputs.next())  # warm-up
      jax.block_until_ready((state, metrics))
      t0 = time.perf_counter()
      for first, n in plan[1:]:
        state, metrics = stepper.run(state, first, n, inputs.next())
      jax.block_until_ready((state, metrics))
      seconds = time.perf_counter() - t0
    by_k[k] = {"images_per_s": calls * k * config.batch_size * config.num_seeds / seconds,
               "compile_s": compile_s, "calls": calls}
    del state, metrics
  return {"placement": placement, "by_k": by_k}
