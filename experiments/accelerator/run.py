r"""Table 1's MNIST rows on one accelerator, within a time limit, in one command.

  python -m experiments.accelerator.run --time_limit=540 --workdir=/tmp/amr_accel \
      --out=experiments/accelerator/results/table1_mnist --manual_dir=../shared/data/mnist

1. Measures the training speed (images/s) of the mixup row with ``--seeds`` seeds side by side,
   the training split on the device and K = ``--steps_per_call`` steps per jitted call.
2. Prints the projected wall time of every table of the paper at that speed.
3. Trains as many of Table 1's MNIST rows (ae_gan, mixup, bern, mixup_k3, acai; each
   ``--seeds`` seeds) as the time limit allows, through ``experiments.run_table``, and writes
   OUT.md / .csv / .json (the finished rows) and OUT_speed.json (the measurement, projections and
   what was run). A row still running near the limit is pre-empted (checkpointed); the same
   command resumes it.

``--smoke`` runs the same path on CPU in under a minute (the scikit-learn digits, a tiny model,
the mixup row for 10 steps, seeds vmapped and steps scanned as on an accelerator, XLA's
optimisations off): the test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from typing import Any

import ml_collections

TABLE1_MNIST_ROWS = ("ae_gan", "mixup", "bern", "mixup_k3", "acai")
# Seconds kept back at the end: the pre-empted row's checkpoint and the tables.
MARGIN_S = 45


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--time_limit", type=float, default=540, help="seconds in all")
  parser.add_argument("--workdir", default="/tmp/amr_accelerator")
  parser.add_argument("--out", default="experiments/accelerator/results/table1_mnist")
  parser.add_argument("--manual_dir", default="",
                      help="MNIST's original files (config.data.manual_dir)")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data directory holding a prepared MNIST (config.data.data_dir)")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps_per_call", type=int, default=125,
                      help="K; a Table 1 MNIST row's 1,564,000 steps are 12,512 calls of 125")
  parser.add_argument("--measure_steps", type=int, default=500)
  parser.add_argument("--rows", default=",".join(TABLE1_MNIST_ROWS))
  parser.add_argument("--compilation_cache", default=os.path.expanduser("~/.cache/amr_jax/xla"),
                      help="JAX's persistent compilation cache ('' = off): rows compiled before "
                      "(or by the measurement) load in seconds")
  parser.add_argument("--smoke", action="store_true",
                      help="CPU, a tiny model, the mixup row: the same path in < 1 min")
  return parser.parse_args(argv)


def row_config(row: str, args: argparse.Namespace):
  """Table 1's MNIST row, with its periods rounded to whole calls of K steps."""
  from experiments.configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config(row)
  config.num_seeds = args.seeds
  config.data.manual_dir = args.manual_dir
  config.data.data_dir = args.data_dir
  config.data.placement = "device"
  k = config.steps_per_call = args.steps_per_call
  if args.smoke:
    config.data.name = "digits"
    config.arch.width = 2
    config.batch_size = 8
    config.eval_batch_size = 100
    config.num_pictures = 3
    config.num_train_steps = config.eval_every = config.checkpoint_every = 2 * k
    # The accelerator's own code path ('auto' picks unrolled seeds and steps on CPU), which
    # also traces the step once instead of once per seed and step.
    config.seed_batching = "vmap"
    config.steps_per_call_loop = "scan"
  config.log_every = k * max(1, round(config.log_every / k))
  config.eval_every = k * max(1, round(config.eval_every / k))
  config.checkpoint_every = config.eval_every
  return config


def measure(args: argparse.Namespace) -> dict[str, Any]:
  """Images/s of the mixup row as the loop trains it (``train_and_evaluate``, no evaluation),
  ``--seeds`` seeds side by side, K steps per call: the median of the logged windows' speed
  after the first (which also loads what the first call compiled)."""
  from amr_jax import train  # pylint: disable=g-import-not-at-top
  config = row_config("mixup", args)
  k = config.steps_per_call
  calls = max(2, round(args.measure_steps / k))
  config.num_train_steps = (calls + 1) * k
  config.log_every = k
  config.eval_every = config.checkpoint_every = config.num_train_steps
  config.evals = ml_collections.ConfigDict()
  workdir = os.path.join(args.workdir, "speed")
  shutil.rmtree(workdir, ignore_errors=True)  # a measurement starts fresh, never resumes
  t0 = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  run_s = time.perf_counter() - t0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    windows = [json.loads(line)["steps_per_s"] for line in f if "steps_per_s" in line]
  images_per_step = config.batch_size * config.num_seeds
  return {"row": "mixup", "seeds": args.seeds, "steps_per_call": k,
          "placement": config.data.placement, "batch_size": config.batch_size,
          "images_per_s": statistics.median(windows[1:]) * images_per_step,
          "run_s": run_s, "windows": len(windows)}


def projections(images_per_s: float, seeds: int) -> dict[str, dict[str, float]]:
  """Hours per table of the paper (every row, ``seeds`` seeds) at ``images_per_s``, with every
  row taken as fast as the measured one and evaluations not counted. Each row trains its own
  budget (the authors' epochs: ``paper_rows.EPOCHS``); ``steps_per_row`` is their mean."""
  from experiments.configs import paper_rows  # pylint: disable=g-import-not-at-top
  names = {("mnist", 32, None): "Table 1 MNIST", ("kmnist", 32, None): "Table 1 KMNIST",
           ("svhn", 32, None): "Table 1 SVHN", ("svhn", 256, None): "Table 3 SVHN dim 256",
           ("cifar10", 256, None): "Table 3 CIFAR10 dim 256",
           ("cifar10", 1024, None): "Table 3 CIFAR10 dim 1024"}
  out = {}
  for (dataset, dim, train_size), rows in paper_rows.TABLES.items():
    name = names.get((dataset, dim, train_size), f"Table 2 SVHN {train_size} examples")
    steps = 0
    for method in rows:
      arg = method + ("" if dim == 32 else f",dim={dim}") + (
          "" if train_size is None else f",train={train_size}")
      config = paper_rows.row_config(dataset, arg)
      steps += config.num_train_steps
    images = steps * seeds * 64
    out[name] = {"rows": len(rows), "steps_per_row": steps // len(rows),
                 "hours": images / images_per_s / 3600}
  return out


class _Deadline:
  """From the deadline on, SIGTERM to this process every few seconds until cancelled: a row's
  training loop then checkpoints and stops at its next call (a signal that lands before the
  loop listens is repeated); elsewhere this script's own handler only notes it."""

  def __init__(self, seconds: float):
    self.fired = False
    self._cancelled = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    self._thread = threading.Thread(target=self._run, args=(max(seconds, 0.0),), daemon=True)
    self._thread.start()

  def _run(self, seconds: float) -> None:
    if self._cancelled.wait(seconds):
      return
    self.fired = True
    while not self._cancelled.is_set():
      os.kill(os.getpid(), signal.SIGTERM)
      self._cancelled.wait(5.0)

  def cancel(self) -> None:
    self._cancelled.set()
    self._thread.join()


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.time()
  deadline = _Deadline(args.time_limit - MARGIN_S)  # from the start: the measurement counts
  try:
    return _run(args, start, deadline)
  finally:
    deadline.cancel()


def _run(args: argparse.Namespace, start: float, deadline: _Deadline) -> int:
  if args.smoke:
    args.seeds, args.steps_per_call, args.measure_steps = 2, 5, 5
    args.rows = "mixup"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.apply_defaults()
  import jax  # pylint: disable=g-import-not-at-top

  if args.smoke:  # a smoke test of the path, not of XLA's optimiser: compiles in seconds
    jax.config.update("jax_disable_most_optimizations", True)
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  from experiments import run_table  # pylint: disable=g-import-not-at-top
  from experiments.configs import mnist  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  hardware = (f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
              f"{os.cpu_count()} CPUs, jax {jax.__version__}")
  print(f"hardware: {hardware}", flush=True)
  speed = measure(args)
  print(f"speed: {speed['images_per_s']:.0f} images/s (mixup, {args.seeds} seeds side by side, "
        f"K={speed['steps_per_call']}, data on the {speed['placement']}; the measuring run "
        f"took {speed['run_s']:.1f} s)", flush=True)
  projected = projections(speed["images_per_s"], args.seeds)
  for name, p in projected.items():
    print(f"  {name}: {p['rows']} rows x {args.seeds} seeds x {p['steps_per_row']} steps: "
          f"{p['hours']:.2f} h projected", flush=True)

  rows = [r for r in args.rows.split(",") if r]
  results, ran = [], {}
  for row in rows:
    if deadline.fired:
      ran[row] = "not started (time limit)"
      continue
    config = row_config(row, args)
    t0 = time.time()
    try:
      results.append(run_table.run_config(config, row, os.path.join(args.workdir, row),
                                          paper=mnist.paper_number(row)))
      ran[row] = f"finished: {config.num_train_steps} steps in {time.time() - t0:.0f} s"
    except run_table.RowPreempted as stopped:
      ran[row] = f"pre-empted at the time limit: {stopped} (the same command resumes it)"
    if results:
      run_table.write_tables(results, args.out, [], hardware,
                             [f"steps_per_call={args.steps_per_call}", "data.placement=device"])
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  summary = {"hardware": hardware, "command": " ".join(sys.argv), "speed": speed,
             "projected": projected, "rows": ran, "wall_s": time.time() - start,
             "time_limit_s": args.time_limit, "smoke": args.smoke}
  with open(args.out + "_speed.json", "w") as f:
    json.dump(summary, f, indent=1)
  for row, what in ran.items():
    print(f"{row}: {what}", flush=True)
  print(f"done in {summary['wall_s']:.0f} s of {args.time_limit:.0f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
