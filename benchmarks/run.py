"""Training speed of the paper's model sizes: compile, bare step, full loop, memory, roofline.

  python -m benchmarks.run [--configs=mnist_dim32,svhn_dim256,cifar10_dim1024,dsprites]
      [--steps=400] [--out=benchmarks/results/latest.json] [--eval=full|light] [--tiny]

For each config, one fresh process measures, in this order: the cold compile of the jitted train
step (empty persistent cache), the warm one (``jax.clear_caches()``, then the same cache), the
step's FLOPs from XLA's cost analysis, the bare step's images/s (half the windows before the loop,
half after), the full ``amr_jax.train.train_and_evaluate`` loop's images/s, the process's peak
memory and a float32 matrix-multiply roofline. A second, short process then times a fresh run up
to its first finished step with the cache warm. The parent process never touches JAX's backend
(an accelerator would be held twice). See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The paper's model sizes. 32x32 rows use a synthetic in-memory dataset with the real dataset's
# shapes and split sizes (no download; indexing it is the same host work as the real in-memory
# arrays); dSprites uses the real, procedurally rendered loader.
CONFIGS: dict[str, dict[str, Any]] = {
    "mnist_dim32": {"table": "mnist", "row": "mixup", "channels": 1, "classes": 10,
                    "splits": (50_000, 10_000, 10_000)},
    "svhn_dim256": {"table": "svhn", "row": "mixup,dim=256", "channels": 3, "classes": 10,
                    "splits": (65_932, 7_325, 26_032)},
    "cifar10_dim1024": {"table": "cifar10", "row": "mixup,dim=1024", "channels": 3,
                        "classes": 10, "splits": (40_000, 10_000, 10_000)},
    "dsprites": {"dsprites": "mixup"},
}
TINY_SPLITS = (512, 200, 200)
# Configs the authors' step timing (../shared/reference/torch_step_speed.py) also builds.
REFERENCE_CONFIGS = ("mnist_dim32", "svhn_dim256")
# Settings of amr_jax.main: the same persistent-cache policy as a real run.
MIN_CACHED_COMPILE_S = 0.5


# ----------------------------------------------------------------------------------------------
# Configs and data (child processes only: these import JAX).


def make_config(name: str, *, tiny: bool, light_eval: bool):
  """The config of a benchmark row (the paper's 'mixup' row at that size)."""
  spec = CONFIGS[name]
  if "dsprites" in spec:
    from experiments.configs import dsprites  # pylint: disable=g-import-not-at-top
    config = dsprites.get_config(spec["dsprites"])
  else:
    from experiments.configs import paper_rows  # pylint: disable=g-import-not-at-top
    config = paper_rows.row_config(spec["table"], spec["row"])
  if tiny:
    config.batch_size = 8
    config.arch.width = 2
    config.eval_batch_size = 50
    config.num_pictures = 3
  if tiny or light_eval:
    # The disentanglement metrics of dsprites.py:runlocal (the full ones render ~2M images).
    config.disentanglement.num_votes = 100
    config.disentanglement.votes_batch = 64
    config.disentanglement.beta_vae_train = 300
    config.disentanglement.beta_vae_eval = 150
    config.disentanglement.beta_vae_batch = 16
  if tiny and "dsprites" in spec:
    config.data.num_train = TINY_SPLITS[0]
    config.data.num_valid = TINY_SPLITS[1]
  return config


def make_dataset(name: str, config, *, tiny: bool, seed: int = 0):
  """The dataset the loop reads: synthetic (32x32 rows) or the real dSprites loader."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from amr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  spec = CONFIGS[name]
  if "dsprites" in spec:
    return data_lib.load(
        config.data.name, seed=config.data.split_seed, image_size=config.data.image_size,
        num_valid=config.data.num_valid, num_train=config.data.num_train)
  rng = np.random.default_rng(seed)
  size, channels = config.data.image_size, spec["channels"]

  def split(n: int):
    images = rng.random((n, size, size, channels), dtype=np.float32)
    images *= 2.0
    images -= 1.0
    return data_lib.Split(images=images,
                          labels=rng.integers(0, spec["classes"], n).astype(np.int32))

  train, valid, test = TINY_SPLITS if tiny else spec["splits"]
  return data_lib.Dataset(name=config.data.name, train=split(train), valid=split(valid),
                          test=split(test), num_classes=spec["classes"], image_channels=channels)


@contextlib.contextmanager
def serve_dataset(dataset, synthetic: bool):
  """While active, ``amr_jax.train`` loads ``dataset`` (and skips the offline-data check)."""
  from amr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  saved = data_lib.load, data_lib.check_available
  data_lib.load = lambda *a, **k: dataset
  if synthetic:
    data_lib.check_available = lambda *a, **k: None
  try:
    yield
  finally:
    data_lib.load, data_lib.check_available = saved


class _StopAfterFirstLog(Exception):
  pass


@contextlib.contextmanager
def timed_writer(stop_after_first: bool = False):
  """Records (step, perf_counter) at every metrics line ``amr_jax.train`` writes (after the
  line is written, so a line that follows an evaluation comes after it), and
  ('writer_init_start' | 'writer_init_end', perf_counter) around the writer's creation."""
  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  saved = train_lib.MetricsWriter
  times: list[tuple[int, float]] = []

  class TimedWriter(saved):

    def __init__(self, *args, **kwargs):
      times.append(("writer_init_start", time.perf_counter()))
      super().__init__(*args, **kwargs)
      times.append(("writer_init_end", time.perf_counter()))

    def write(self, step, metrics):
      super().write(step, metrics)
      times.append((step, time.perf_counter()))
      if stop_after_first:
        raise _StopAfterFirstLog()

  train_lib.MetricsWriter = TimedWriter
  try:
    yield times
  finally:
    train_lib.MetricsWriter = saved


def round_to(value: int, multiple: int) -> int:
  return max(multiple, value // multiple * multiple)


# ----------------------------------------------------------------------------------------------
# Measurements (child processes).


class _CacheEvents:
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
  """The loop's jitted train step, built as ``amr_jax.train`` builds it: one seed, or
  ``num_seeds`` side by side run by ``train.over_seeds`` in ``seed_batching``'s mode."""

  def __init__(self, config, dataset, *, num_seeds: int = 1, seed_batching: str = "auto"):
    import numpy as np  # pylint: disable=g-import-not-at-top

    from amr_jax import parallel  # pylint: disable=g-import-not-at-top
    from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    from amr_jax import train_state as train_state_lib  # pylint: disable=g-import-not-at-top

    nets = train_lib.build_networks(config, dataset)
    optimizers = train_state_lib.make_optimizers(config.optim)
    self.mesh = mesh = parallel.make_mesh()
    self.config = config
    self.batch_size = config.batch_size
    self.images_per_step = config.batch_size * num_seeds
    self.g_every = int(config.g_every)
    multi = num_seeds > 1
    config = config.copy_and_resolve_references()
    config.num_seeds, config.seed_batching = num_seeds, seed_batching
    # The loop's own jitted functions: one compiled step with the generator's update, one
    # without (g_every > 1).
    self._init, self.train_steps = train_lib.make_jitted_state_and_steps(
        config, dataset, nets, optimizers, mesh)
    self.count = 0
    train = dataset.train
    local = {"image": np.asarray(train.images[:config.batch_size]),
             "label": train.labels[:config.batch_size]}
    if config.supervised.enabled:
      local["attributes"] = train.attributes[:config.batch_size]
    if multi:  # every seed reads the same rows: the timing does not depend on which
      local = {name: np.stack([value] * num_seeds) for name, value in local.items()}
    self.batch = parallel.global_batch(mesh, local, seeds_axis=multi)
    self.state = None

  def new_state(self):
    self.state = self._init()
    self.count = 0
    return self.state

  def train_step(self, state, batch):
    """The next step of the loop's sequence (the generator's update every g_every steps)."""
    flag = self.count % self.g_every == 0
    self.count += 1
    return self.train_steps[flag](state, batch)

  def compile(self) -> dict[str, float]:
    """Times tracing + lowering and XLA's compilation of the step (AOT)."""
    state = self.state if self.state is not None else self.new_state()
    lower_s = compile_s = 0.0
    self.compiled = {}
    for flag, step in self.train_steps.items():  # the loop needs each variant
      t0 = time.perf_counter()
      lowered = step.lower(state, self.batch)
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
      state, metrics = self.train_step(state, self.batch)
    jax.block_until_ready((state, metrics))
    out = []
    for _ in range(windows):
      t0 = time.perf_counter()
      for _ in range(steps):
        state, metrics = self.train_step(state, self.batch)
      t1 = time.perf_counter()
      jax.block_until_ready((state, metrics))
      t2 = time.perf_counter()
      out.append({"images_per_s": steps * self.images_per_step / (t2 - t0),
                  "dispatch_s_per_step": (t1 - t0) / steps})
    self.state = state
    return out

  def host_costs(self, dataset, steps: int, log_every: int) -> dict[str, float]:
    """The loop's per-step host work on its own: batch assembly as ``train.local_batch`` +
    ``parallel.global_batch`` do it, and fetching a log window of per-step metrics one array at
    a time (``parallel.to_host``) against one ``jax.device_get`` of the whole window."""
    import jax  # pylint: disable=g-import-not-at-top

    from amr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    from amr_jax import parallel  # pylint: disable=g-import-not-at-top
    train, config = dataset.train, self.config
    rows = parallel.local_rows(config.batch_size)
    idx = data_lib.batch_indices(config.seed, 0, len(train.labels), config.batch_size)[rows]
    parallel.global_batch(self.mesh, {"image": train.images[idx]})  # warm-up (epoch order)
    t0 = time.perf_counter()
    for step in range(steps):
      idx = data_lib.batch_indices(config.seed, step, len(train.labels), config.batch_size)[rows]
      local = {"image": train.images[idx], "label": train.labels[idx]}
      if config.supervised.enabled:
        local["attributes"] = train.attributes[idx]
      batch = parallel.global_batch(self.mesh, local)
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
      state, metrics = self.train_step(state, self.batch)
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
    record = {k: float(v) for k, v in jax.device_get(pending[-1]).items()}
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


@contextlib.contextmanager
def timed_evaluations_and_checkpoints():
  """Records when each evaluation starts (its first ``evaluation.probe_accuracy`` call: every
  evaluation begins with the validation accuracy) and when each ``Checkpointer.save`` has
  finished writing (saves are made synchronous)."""
  from amr_jax import (
    checkpointing,  # pylint: disable=g-import-not-at-top
    evaluation,  # pylint: disable=g-import-not-at-top
  )
  saved_accuracy, saved_save = evaluation.probe_accuracy, checkpointing.Checkpointer.save
  events: dict[str, list] = {"probe_accuracy": [], "saved": []}

  def probe_accuracy(*args, **kwargs):
    events["probe_accuracy"].append(time.perf_counter())
    return saved_accuracy(*args, **kwargs)

  def save(self, step, *args, **kwargs):
    out = saved_save(self, step, *args, **kwargs)
    # Wait for orbax's background write: it would otherwise slow the steps measured next. Its
    # whole cost is then counted in the checkpoint's time (amortised over checkpoint_every).
    self.wait()
    events["saved"].append((step, time.perf_counter()))
    return out

  evaluation.probe_accuracy, checkpointing.Checkpointer.save = probe_accuracy, save
  try:
    yield events
  finally:
    evaluation.probe_accuracy, checkpointing.Checkpointer.save = saved_accuracy, saved_save


def run_loop(config, dataset, synthetic: bool, *, log_every: int, half: int,
             batch_size: int) -> dict[str, Any]:
  """``train_and_evaluate`` for 2 * ``half`` steps, logging every ``log_every``, evaluating and
  checkpointing at ``half`` (the first time: compiles) and at the end; returns its timings.

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
  with tempfile.TemporaryDirectory(prefix="amr_bench_loop_") as workdir:
    with serve_dataset(dataset, synthetic), timed_writer() as times, \
        timed_evaluations_and_checkpoints() as events:
      train_lib.train_and_evaluate(config, workdir)
      t_return = time.perf_counter()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
  at = dict(times)
  saved_at = dict(events["saved"])
  final_eval_start = min(t for t in events["probe_accuracy"] if t > saved_at[half])
  steady_sps = half / (final_eval_start - saved_at[half])
  return {
      "loop_steady_steps_per_s": steady_sps,
      "loop_steady_images_per_s": steady_sps * batch_size,
      "loop_logged_steps_per_s": [r["steps_per_s"] for r in records],
      "loop_log_every": log_every,
      "loop_steps": 2 * half,
      # One evaluation (with its pictures); the first one also compiles.
      "eval_s": at[2 * half] - final_eval_start,
      "eval_s_first": at[half] - events["probe_accuracy"][0],
      # The checkpoint in the middle: finiteness check + save, waited for; the one at the end
      # also closes everything.
      "checkpoint_s": saved_at[half] - at[half],
      "checkpoint_and_close_s": t_return - at[2 * half],
  }


def roofline(n: int, dtype_name: str, reps: int, windows: int) -> dict[str, Any]:
  """Best FLOP/s of a jitted (n, n) @ (n, n) matmul, 2 n^3 FLOPs each."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype_name)
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(windows):
    t0 = time.perf_counter()
    outs = [matmul(a, b) for _ in range(reps)]
    jax.block_until_ready(outs)
    best = min(best, time.perf_counter() - t0)
    del outs
  return {"flops_per_s": 2.0 * n**3 * reps / best, "n": n, "dtype": dtype_name, "reps": reps,
          "windows": windows}


def peak_memory() -> tuple[int, str]:
  import resource  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use (memory_stats)"
  # Linux reports ru_maxrss in KiB.
  return (int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
          "process peak RSS (getrusage ru_maxrss; the device has no memory_stats)")


def hardware() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  cpu_model = ""
  try:
    with open("/proc/cpuinfo") as f:
      cpu_model = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "")
  except OSError:
    pass
  return {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "cpu_model": cpu_model or platform.processor(),
      "jax_version": jax.__version__,
      "jaxlib_version": jaxlib.__version__,
      "python_version": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def measure(name: str, args) -> dict[str, Any]:
  """Everything but the fresh-process first step, for one config, in this (fresh) process."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", args.child_cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)
  events = _CacheEvents()
  result: dict[str, Any] = {"load_average_start": load_average()}
  phases: dict[str, float] = {}
  result["phase_s"] = phases  # wall time of each part of this benchmark, for its own tuning
  mark = [time.perf_counter()]

  def phase(label: str) -> float:
    now = time.perf_counter()
    seconds, mark[0] = now - mark[0], now
    phases[label] = phases.get(label, 0.0) + seconds
    return seconds

  config = make_config(name, tiny=args.tiny, light_eval=args.eval == "light")
  t0 = time.perf_counter()
  dataset = make_dataset(name, config, tiny=args.tiny)
  result["data_s"] = time.perf_counter() - t0
  synthetic = "dsprites" not in CONFIGS[name]
  batch = config.batch_size
  g = int(config.g_every)
  result.update(batch_size=batch, g_every=g, arch=config.arch.name, width=config.arch.width,
                latent_channels=config.arch.latent_channels, model=config.model,
                mixer=config.mixer, k=config.k, image_shape=list(dataset.train.images.shape[1:]),
                data=("synthetic " if synthetic else "") + config.data.name,
                eval_settings="light" if (args.tiny or args.eval == "light") else "full",
                real_eval_every=config.eval_every, real_checkpoint_every=config.checkpoint_every,
                real_log_every=config.log_every)

  with serve_dataset(dataset, synthetic):
    bench = StepBench(config, dataset)
    phase("build")
    bench.new_state()
    # The loop compiles this too (before its step): the initial train state, jitted.
    result["init_state_s_cold"] = phase("init_state")
    before = events.snapshot()
    cold = bench.compile()
    result["cache_events_cold"] = events.delta(before)
    flops = bench.flops()
    result["step_memory_analysis"] = memory_analysis_bytes(bench.compiled[True])
    jax.clear_caches()
    before = events.snapshot()
    warm = bench.compile()
    result["cache_events_warm"] = events.delta(before)
    result.update(compile_s_cold=cold["total_s"], compile_s_warm=warm["total_s"],
                  lower_s_cold=cold["lower_s"], lower_s_warm=warm["lower_s"],
                  xla_compile_s_cold=cold["compile_s"], xla_compile_s_warm=warm["compile_s"])
    phase("compile")
    result.update(flops)

    phase("flops")
    window = round_to(args.steps // 4, g)
    windows = bench.time_windows(2, window)
    phase("step")
    log_every = min(round_to(args.steps // 8, g), config.log_every)
    result.update(bench.host_costs(dataset, min(window, 50), log_every))
    phase("host_costs")
    bench.state = None  # the loop has its own state: do not hold two
    loop = run_loop(config, dataset, synthetic, log_every=log_every,
                    half=max(2 * log_every, round_to(args.steps // 2, log_every)),
                    batch_size=batch)
    phase("loop")
    bench.new_state()
    windows += bench.time_windows(2, window)
    bench.state = None
    phase("step")

  rates = [w["images_per_s"] for w in windows]
  result["step_images_per_s"] = statistics.median(rates)
  result["step_window_images_per_s"] = rates
  result["step_dispatch_s_per_step"] = statistics.median(w["dispatch_s_per_step"] for w in windows)
  result["step_window_steps"] = window
  result.update(loop)
  # The checkpoint's cost: the cheaper of the first one (it compiles the finiteness check) and
  # the last one (it also waits for the write and closes everything); both overestimate it.
  checkpoint_s = min(loop["checkpoint_s"], loop["checkpoint_and_close_s"])
  seconds_per_step = (1.0 / loop["loop_steady_steps_per_s"]
                      + loop["eval_s"] / config.eval_every
                      + checkpoint_s / config.checkpoint_every)
  result["loop_images_per_s"] = batch / seconds_per_step
  result["loop_to_step_ratio"] = result["loop_images_per_s"] / result["step_images_per_s"]
  result["loop_to_step_ratio_no_eval"] = (loop["loop_steady_images_per_s"]
                                          / result["step_images_per_s"])
  result["peak_memory_bytes"], result["peak_memory_kind"] = peak_memory()

  platform_name = jax.devices()[0].platform
  n = 512 if args.tiny else (2048 if platform_name == "cpu" else 8192)
  reps, n_windows = (3, 3) if platform_name == "cpu" else (10, 5)
  roof = roofline(n, "float32", reps, n_windows)
  phase("roofline")
  result["roofline_flops_per_s"] = roof["flops_per_s"]
  result["roofline"] = roof
  if result.get("flops_per_step"):
    achieved = result["flops_per_step"] * result["step_images_per_s"] / batch
    result["step_flops_per_s"] = achieved
    result["roofline_fraction"] = achieved / roof["flops_per_s"]
  else:
    result["step_flops_per_s"] = result["roofline_fraction"] = None

  if args.bf16:  # bare step with bfloat16 compute, float32 parameters
    config16 = config.copy_and_resolve_references()
    config16.arch.compute_dtype = "bfloat16"
    with serve_dataset(dataset, synthetic):
      bench16 = StepBench(config16, dataset)
      bench16.new_state()
      c16 = bench16.compile()
      f16 = bench16.flops()["flops_per_step_xla"]
      w16 = bench16.time_windows(2, window)
      bench16.state = None
    roof16 = roofline(n, "bfloat16", reps, n_windows)
    rate16 = statistics.median(w["images_per_s"] for w in w16)
    result["bf16"] = {"step_images_per_s": rate16, "compile_s_cold": c16["total_s"],
                      "flops_per_step_xla": f16, "roofline_flops_per_s": roof16["flops_per_s"],
                      # the float32 step's average FLOPs (the same operations), at this speed
                      "roofline_fraction": None if not result.get("flops_per_step") else
                      result["flops_per_step"] * rate16 / batch / roof16["flops_per_s"]}
  result["load_average_end"] = load_average()
  result["hardware"] = hardware()
  return result


def first_step(name: str, args) -> dict[str, Any]:
  """A fresh run (this process) to the end of its first step, the persistent cache warm."""
  t_imports = time.time()
  import jax  # pylint: disable=g-import-not-at-top

  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  t_imported = time.time()
  jax.config.update("jax_compilation_cache_dir", args.child_cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)
  config = make_config(name, tiny=args.tiny, light_eval=True)
  t0 = time.perf_counter()
  dataset = make_dataset(name, config, tiny=args.tiny)
  data_s = time.perf_counter() - t0
  synthetic = "dsprites" not in CONFIGS[name]
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
        serve_dataset(dataset, synthetic), timed_writer(stop_after_first=True) as times:
      t_call = time.perf_counter()
      try:
        train_lib.train_and_evaluate(config, workdir)
      except _StopAfterFirstLog:
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


# ----------------------------------------------------------------------------------------------
# Parent: one child process per measurement, then the reports.


def _child(mode: str, name: str, args, cache_dir: str, out_path: str) -> dict[str, Any]:
  cmd = [sys.executable, "-m", "benchmarks.run", f"--_child={mode}", f"--_name={name}",
         f"--_cache_dir={cache_dir}", f"--_result={out_path}", f"--steps={args.steps}",
         f"--eval={args.eval}", f"--_launch_time={time.time()!r}"]
  cmd += ["--tiny"] * args.tiny + ["--bf16"] * args.bf16
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                        timeout=args.timeout or None)
  if proc.returncode != 0 or not os.path.exists(out_path):
    return {"error": f"{mode} process exited with {proc.returncode}: {proc.stderr[-3000:]}"}
  with open(out_path) as f:
    return json.load(f)


def first_step_median(name: str, args, cache_dir: str, tmp: str) -> dict[str, Any]:
  """``first_step`` in ``args.first_step_runs`` fresh processes: the median run, and every
  run's start and finish (a single launch on a shared machine varies by up to a second)."""
  runs = [_child("first_step", name, args, cache_dir, os.path.join(tmp, f"{name}_first{i}.json"))
          for i in range(args.first_step_runs)]
  failed = [r for r in runs if "error" in r]
  if failed:
    return failed[0]
  runs.sort(key=lambda r: r["first_step_start_s_warm"])
  median = dict(runs[len(runs) // 2])
  median["first_step_start_s_warm_runs"] = [r["first_step_start_s_warm"] for r in runs]
  median["first_step_s_warm_runs"] = sorted(r["first_step_s_warm"] for r in runs)
  return median


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    if value and (abs(value) >= 1e5 or abs(value) < 1e-2):
      return f"{value:.{digits}g}"
    return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:.0f}"
  return str(value)


def markdown(report: dict[str, Any]) -> str:
  """The short summary: one row per config, then where the loop's extra time goes."""
  hw = report.get("hardware") or {}
  tiny = " (tiny settings: a smoke test, not representative)" if report["tiny"] else ""
  ok = {n: r for n, r in report["configs"].items() if "error" not in r}
  lines = [
      f"# amr_jax training speed ({report['created']})", "",
      (f"Hardware: {hw.get('device_count', '?')} x {hw.get('device_kind', '?')} "
       f"({hw.get('platform', '?')}); {hw.get('cpu_count', '?')} CPUs "
       f"({hw.get('cpu_model', '')}); jax {hw.get('jax_version', '?')}. "
       f"Command: `{report['command']}`{tiny}."
       + ("" if report.get("fresh_compilation_cache", True) else
          " The compilation cache was reused (--cache_dir): 'cold' compiles may be warm.")), "",
      ("| config | batch | step img/s | loop img/s | loop/step | GFLOP/step | roofline GFLOP/s "
       "| roofline fraction | compile cold s | compile warm s | first step starts / done, "
       "warm cache s | peak memory MiB |"),
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in report["configs"].items():
    if name not in ok:
      lines.append(f"| {name} | error (see the JSON) |" + " |" * 10)
      continue
    gflop = None if r.get("flops_per_step") is None else r["flops_per_step"] / 1e9
    lines.append("| " + " | ".join([
        name, _fmt(r["batch_size"]), _fmt(r["step_images_per_s"]), _fmt(r["loop_images_per_s"]),
        _fmt(r["loop_to_step_ratio"]), _fmt(gflop), _fmt(r["roofline_flops_per_s"] / 1e9),
        _fmt(r.get("roofline_fraction")), _fmt(r["compile_s_cold"]), _fmt(r["compile_s_warm"]),
        f"{_fmt(r.get('first_step_start_s_warm'))} / {_fmt(r.get('first_step_s_warm'))}",
        _fmt(r["peak_memory_bytes"] / 2**20)]) + " |")
  lines += [
      "", "Where the loop's time goes (ms per step unless marked):", "",
      ("| config | bare step | loop, no eval | batch assembly | step dispatch | metrics fetch "
       "| eval s (every N) | checkpoint s (every N) |"),
      "|---|---|---|---|---|---|---|---|",
  ]

  def ms(seconds):
    return _fmt(None if seconds is None else 1e3 * seconds)

  for name, r in ok.items():
    lines.append("| " + " | ".join([
        name, ms(r["batch_size"] / r["step_images_per_s"]),
        ms(1.0 / r["loop_steady_steps_per_s"]), ms(r.get("batch_assembly_s_per_step")),
        ms(r.get("step_dispatch_s_per_step")), ms(r.get("metrics_to_host_s_per_step")),
        f"{_fmt(r['eval_s'])} ({r['real_eval_every']})",
        (f"{_fmt(min(r['checkpoint_s'], r['checkpoint_and_close_s']))} "
         f"({r['real_checkpoint_every']})")]) + " |")
  kinds = sorted({r["peak_memory_kind"] for r in ok.values()})
  lines += ["", ("Loop img/s counts evaluation and checkpointing amortised over each config's "
                 "eval_every / checkpoint_every (the N above). Peak memory: "
                 + "; ".join(kinds) + ".")]
  compared = {k: v for r in ok.values() for k, v in r.get("vs_reference", {}).items()}
  if compared:
    lines += ["", "Against the authors' PyTorch training iteration (benchmarks/reference.py; "
              "interleaved rounds, medians, bare steps):", "",
              "| setting | authors' img/s | amr_jax img/s | speedup |", "|---|---|---|---|"]
    for key, v in compared.items():
      name, g_every = key.split(":")
      lines.append(f"| {name}, G every {g_every} | {_fmt(v['reference_images_per_s'])} | "
                   f"{_fmt(v['images_per_s'])} | {v['speedup_vs_reference']:.2f}x |")
  return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str, summary: str) -> str:
  """Writes the JSON report to ``out`` and the Markdown ``summary`` beside it; returns its path."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  md_path = os.path.splitext(out)[0] + ".md"
  with open(md_path, "w") as f:
    f.write(summary)
  return md_path


def add_reference(report: dict[str, Any], names: list[str], args) -> None:
  """The authors' iteration against ours (benchmarks/reference.py) for the configs their script
  knows, with G every g_every (the config's) and every 1: per config ``reference_images_per_s``
  and ``speedup_vs_reference`` (at the config's g_every) and ``vs_reference`` (both settings)."""
  from benchmarks import reference  # pylint: disable=g-import-not-at-top
  known = [n for n in names if n in REFERENCE_CONFIGS]
  settings = [(n, g) for n in known
              for g in dict.fromkeys((report["configs"][n].get("g_every", 5), 1))]
  if not settings:
    return
  result = reference.compare(settings, args.reference, args.reference_python,
                             rounds=args.reference_rounds, steps=max(args.steps // 10, 4),
                             timeout=args.timeout or None, cache_dir=args.cache_dir,
                             tiny=args.tiny)
  for name in known:
    row = report["configs"][name]
    row["vs_reference"] = {k: v for k, v in result["settings"].items()
                           if k.startswith(name + ":")}
    own = row["vs_reference"][f"{name}:{row.get('g_every', 5)}"]
    row["reference_images_per_s"] = own["reference_images_per_s"]
    row["speedup_vs_reference"] = own["speedup_vs_reference"]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default=",".join(CONFIGS),
                      help=f"comma-separated, from {', '.join(CONFIGS)}")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps of the bare step (4 windows) and of the loop "
                           "(default 400; 40 with --tiny)")
  parser.add_argument("--out", default=None,
                      help="JSON report; the Markdown summary goes beside it (.md). Default "
                           "benchmarks/results/latest.json (tiny.json with --tiny)")
  parser.add_argument("--eval", choices=("full", "light"), default="full",
                      help="evaluation settings of the loop: the config's own, or dsprites.py's "
                           "runlocal disentanglement metrics (they matter for dsprites only)")
  parser.add_argument("--tiny", action="store_true",
                      help="batch 8, width 2, few steps, small splits: a smoke test")
  parser.add_argument("--bf16", action="store_true",
                      help="also time the bare step with bfloat16 compute (float32 parameters)")
  parser.add_argument("--first_step_runs", type=int, default=3,
                      help="fresh processes timed to their first step (the median is reported; "
                           "0 skips the measurement)")
  parser.add_argument("--timeout", type=float, default=0, help="seconds per child process")
  parser.add_argument("--cache_dir", default="",
                      help="persistent compilation cache to use instead of a fresh temporary "
                           "one (then compile_s_cold is only cold if the cache is empty; for "
                           "quick smoke tests)")
  parser.add_argument("--reference", default="",
                      help="the authors' code's folder (../shared/reference): also time their "
                           "training iteration against ours, interleaved (benchmarks/reference.py)")
  parser.add_argument("--reference_python", default="python",
                      help="a Python with torch for the authors' code")
  parser.add_argument("--reference_rounds", type=int, default=3)
  parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_name", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_cache_dir", dest="child_cache_dir", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_result", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_launch_time", dest="launch_time", type=float, default=0.0,
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.steps is None:
    args.steps = 40 if args.tiny else 400
  if args.out is None:
    args.out = os.path.join(ROOT, "benchmarks", "results",
                            "tiny.json" if args.tiny else "latest.json")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args._child:  # pylint: disable=protected-access
    from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.apply_defaults()  # as amr_jax.main does, before JAX creates its backend
    fn = measure if args._child == "measure" else first_step  # pylint: disable=protected-access
    try:
      result = fn(args._name, args)  # pylint: disable=protected-access
    except Exception:  # noqa: BLE001  # pylint: disable=broad-except
      traceback.print_exc()
      return 1
    with open(args._result, "w") as f:  # pylint: disable=protected-access
      json.dump(result, f, indent=1)
    sys.stdout.flush()
    os._exit(0)  # pylint: disable=protected-access  # skip interpreter teardown of JAX/orbax

  names = [n for n in args.configs.split(",") if n]
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    print(f"unknown configs {unknown}; allowed: {', '.join(CONFIGS)}", file=sys.stderr)
    return 2
  report: dict[str, Any] = {
      "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "command": " ".join(["python -m benchmarks.run"] + (argv if argv is not None
                                                           else sys.argv[1:])),
      "tiny": args.tiny, "steps": args.steps, "eval": args.eval,
      "fresh_compilation_cache": not args.cache_dir, "configs": {}}
  with tempfile.TemporaryDirectory(prefix="amr_bench_") as tmp:
    for name in names:
      cache_dir = args.cache_dir or os.path.join(tmp, f"xla_cache_{name}")  # fresh: cold
      os.makedirs(cache_dir, exist_ok=True)
      t0 = time.time()
      result = _child("measure", name, args, cache_dir, os.path.join(tmp, f"{name}.json"))
      if "error" not in result and args.first_step_runs:
        result.update(first_step_median(name, args, cache_dir, tmp))
      result["wall_s"] = time.time() - t0
      if "hardware" in result:
        report["hardware"] = result.pop("hardware")
      report["configs"][name] = result
      status = result.get("error", "").splitlines()[-1:] or [(
          f"step {result['step_images_per_s']:.1f} img/s, loop {result['loop_images_per_s']:.1f}"
          f" img/s, ratio {result['loop_to_step_ratio']:.3f}")]
      print(f"{name}: {status[0]} ({result['wall_s']:.0f} s)", flush=True)
  if args.reference:
    add_reference(report, names, args)
  md_path = write_report(report, args.out, markdown(report))
  print(f"wrote {args.out} and {md_path}")
  return 0 if all("error" not in r for r in report["configs"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
