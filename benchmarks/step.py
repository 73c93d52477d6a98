"""The bare train step: its compile time (cold and warm persistent cache), XLA's FLOPs and
memory sizes, its images/s, and the loop's per-step host work measured on its own."""

from __future__ import annotations

import tempfile
import time


class CacheEvents:
  """Counts persistent compilation cache hits and misses through jax.monitoring."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.counts: dict[str, int] = {}

    def listener(event, **kwargs):
      del kwargs
      if event.startswith("/jax/compilation_cache/"):
        key = event.rsplit("/", 1)[-1]
        self.counts[key] = self.counts.get(key, 0) + 1

    jax.monitoring.register_event_listener(listener)

  def snapshot(self) -> dict[str, int]:
    return dict(self.counts)

  def delta(self, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in self.counts.items() if v - before.get(k, 0)}


def flops_of(compiled) -> float | None:
  """XLA's FLOP count of a compiled computation (a dict, or a list of one dict per program)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


def memory_analysis_bytes(compiled) -> dict[str, int] | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  return {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}


class StepBench:
  """The loop's own jitted call of one step (``amr_jax.stepper``, set up by ``train.set_up``):
  one seed, or ``num_seeds`` side by side in ``seed_batching``'s mode; batches fed from the
  host, the same batch at every step (the timing does not depend on which)."""

  def __init__(self, config, dataset, *, num_seeds: int = 1, seed_batching: str = "auto"):
    from benchmarks import common  # pylint: disable=g-import-not-at-top
    config = config.copy_and_resolve_references()
    config.num_seeds, config.seed_batching = num_seeds, seed_batching
    config.steps_per_call, config.data.placement = 1, "host"
    self.run = common.set_up(config, dataset)
    self.stepper = self.run.make_stepper()
    self.config = config
    self.batch_size = config.batch_size
    self.images_per_step = config.batch_size * num_seeds
    self.g_every = int(config.g_every)
    self.inputs = self.stepper.inputs(0, 1)
    self.count = 0
    self.state = None
    # One compiled step with the generator's update, one without (g_every > 1), as in the loop.
    self.first_steps = {True: 0} if self.g_every == 1 else {True: 0, False: 1}

  def new_state(self):
    self.state = self.run.init_state()
    self.count = 0
    return self.state

  def train_step(self, state):
    """The next step of the loop's sequence (the generator's update every g_every steps)."""
    self.count += 1
    return self.stepper.run(state, self.count - 1, 1, self.inputs)

  def jaxpr(self, state):
    """The traced call of the step with the generator's update."""
    import jax  # pylint: disable=g-import-not-at-top
    return jax.make_jaxpr(self.stepper.jitted(0, 1))(state, self.inputs,
                                                     self.stepper.device_data).jaxpr

  def compile(self) -> dict[str, float]:
    """Times tracing + lowering and XLA's compilation of the step (AOT)."""
    state = self.state if self.state is not None else self.new_state()
    lower_s = compile_s = 0.0
    self.compiled = {}
    for flag, step in self.first_steps.items():  # the loop needs each variant
      t0 = time.perf_counter()
      lowered = self.stepper.jitted(step, 1).lower(state, self.inputs, self.stepper.device_data)
      t1 = time.perf_counter()
      self.compiled[flag] = lowered.compile()
      t2 = time.perf_counter()
      lower_s, compile_s = lower_s + t1 - t0, compile_s + t2 - t1
    return {"lower_s": lower_s, "compile_s": compile_s, "total_s": lower_s + compile_s}

  def flops(self) -> dict[str, float | None]:
    """XLA's FLOPs of the compiled step with the generator's update (``flops_per_step_xla``),
    without it, and their average over a g_every cycle (``flops_per_step``)."""
    counts = {flag: flops_of(c) for flag, c in self.compiled.items()}
    with_g, without_g = counts[True], counts.get(False, counts[True])
    if with_g is None or without_g is None:
      return {"flops_per_step": None, "flops_per_step_xla": with_g}
    return {"flops_per_step": (with_g + (self.g_every - 1) * without_g) / self.g_every,
            "flops_per_step_xla": with_g, "flops_per_step_without_generator_update": without_g}

  def time_windows(self, windows: int, steps: int) -> list[dict[str, float]]:
    """Images/s of the bare step: ``steps`` calls per window, one block_until_ready per window
    (after a warm-up cycle)."""
    import jax  # pylint: disable=g-import-not-at-top
    state = self.state if self.state is not None else self.new_state()
    for _ in range(2 * self.g_every):  # warm-up: compile (cache), first steps of both branches
      state, metrics = self.train_step(state)
    jax.block_until_ready((state, metrics))
    out = []
    for _ in range(windows):
      t0 = time.perf_counter()
      for _ in range(steps):
        state, metrics = self.train_step(state)
      t1 = time.perf_counter()
      jax.block_until_ready((state, metrics))
      t2 = time.perf_counter()
      out.append({"images_per_s": steps * self.images_per_step / (t2 - t0),
                  "dispatch_s_per_step": (t1 - t0) / steps})
    self.state = state
    return out

  def host_costs(self, dataset, steps: int, log_every: int) -> dict[str, float]:
    """The loop's per-step host work on its own: a call's inputs as the loop builds them
    (``Stepper.inputs``: the batch gathered and sent to the devices), and fetching a log
    window of per-step metrics one array at a time (``parallel.to_host``) against one
    ``jax.device_get`` of the whole window."""
    import jax  # pylint: disable=g-import-not-at-top

    from amr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    from amr_jax import parallel  # pylint: disable=g-import-not-at-top
    train, config = dataset.train, self.config
    rows = parallel.local_rows(config.batch_size)
    self.stepper.inputs(0, 1)  # warm-up (epoch order)
    t0 = time.perf_counter()
    for step in range(steps):
      batch = self.stepper.inputs(step, 1)
    jax.block_until_ready(batch)
    t1 = time.perf_counter()
    # A separate pass for the gather alone (the numpy part of the above).
    t2 = time.perf_counter()
    for step in range(steps):
      idx = data_lib.batch_indices(config.seed, step, len(train.labels), config.batch_size)[rows]
      local = {"image": train.images[idx], "label": train.labels[idx]}
    t3 = time.perf_counter()
    state = self.state
    pending = []
    for _ in range(log_every):
      state, metrics = self.train_step(state)
      pending.append(metrics)
    jax.block_until_ready((state, pending))
    t4 = time.perf_counter()
    [parallel.to_host(m) for m in pending]
    t5 = time.perf_counter()
    jax.device_get(pending)
    t6 = time.perf_counter()
    self.state = state
    # One log line as the loop writes it (JSON line, and TensorBoard scalars when TF is there).
    from amr_jax.metrics_writer import MetricsWriter  # pylint: disable=g-import-not-at-top
    record = {k: float(v) for k, v in jax.device_get(pending[-1]).per_step()[0].items()}
    record["steps_per_s"] = 1.0
    with tempfile.TemporaryDirectory(prefix="amr_bench_writer_") as workdir:
      t7 = time.perf_counter()
      writer = MetricsWriter(workdir)
      t8 = time.perf_counter()
      for i in range(5):
        writer.write(i, record)
      t9 = time.perf_counter()
      writer.close()
    return {"metrics_writer_init_s": t8 - t7, "metrics_write_s_per_log": (t9 - t8) / 5,
            "batch_assembly_s_per_step": (t1 - t0) / steps,
            "batch_gather_s_per_step": (t3 - t2) / steps,
            "metrics_to_host_s_per_step": (t5 - t4) / log_every,
            "metrics_device_get_s_per_step": (t6 - t5) / log_every}
