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

Each measurement has its own module: ``common`` (configs, data, the machine), ``step`` (the bare
step), ``loop`` (the full loop), ``steps_per_call`` (K steps per call), ``roofline``, ``first_step``
and ``report`` (JSON + Markdown);
this one is the driver: the flags, the child processes and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

from benchmarks import common
from benchmarks import first_step as first_step_lib
from benchmarks import loop as loop_lib
from benchmarks import reference
from benchmarks import report as report_lib
from benchmarks import roofline as roofline_lib
from benchmarks import step as step_lib
from benchmarks import steps_per_call as steps_per_call_lib


# ----------------------------------------------------------------------------------------------
# The measurements of one config (a child process).


def measure(name: str, args) -> dict[str, Any]:
  """Everything but the fresh-process first step, for one config, in this (fresh) process."""
  import jax  # pylint: disable=g-import-not-at-top
  common.use_compilation_cache(args.child_cache_dir)
  events = step_lib.CacheEvents()
  result: dict[str, Any] = {"load_average_start": common.load_average()}
  phases: dict[str, float] = {}
  result["phase_s"] = phases  # wall time of each part of this benchmark, for its own tuning
  mark = [time.perf_counter()]

  def phase(label: str) -> float:
    now = time.perf_counter()
    seconds, mark[0] = now - mark[0], now
    phases[label] = phases.get(label, 0.0) + seconds
    return seconds

  config = common.make_config(name, tiny=args.tiny, light_eval=args.eval == "light")
  t0 = time.perf_counter()
  dataset = common.make_dataset(name, config, tiny=args.tiny)
  result["data_s"] = time.perf_counter() - t0
  synthetic = "dsprites" not in common.CONFIGS[name]
  batch = config.batch_size
  g = int(config.g_every)
  result.update(batch_size=batch, g_every=g, arch=config.arch.name, width=config.arch.width,
                latent_channels=config.arch.latent_channels, model=config.model,
                mixer=config.mixer, k=config.k, image_shape=list(dataset.train.images.shape[1:]),
                data=("synthetic " if synthetic else "") + config.data.name,
                eval_settings="light" if (args.tiny or args.eval == "light") else "full",
                real_eval_every=config.eval_every, real_checkpoint_every=config.checkpoint_every,
                real_log_every=config.log_every)

  bench = step_lib.StepBench(config, dataset)
  phase("build")
  bench.new_state()
  # The loop compiles this too (before its step): the initial train state, jitted.
  result["init_state_s_cold"] = phase("init_state")
  before = events.snapshot()
  cold = bench.compile()
  result["cache_events_cold"] = events.delta(before)
  flops = bench.flops()
  result["step_memory_analysis"] = step_lib.memory_analysis_bytes(bench.compiled[True])
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
  window = common.round_to(args.steps // 4, g)
  windows = bench.time_windows(2, window)
  phase("step")
  log_every = min(common.round_to(args.steps // 8, g), config.log_every)
  result.update(bench.host_costs(dataset, min(window, 50), log_every))
  phase("host_costs")
  bench.state = None  # the loop has its own state: do not hold two
  loop = loop_lib.run_loop(config, dataset, log_every=log_every,
                           half=max(2 * log_every, common.round_to(args.steps // 2, log_every)),
                           batch_size=batch)
  phase("loop")
  bench.new_state()
  windows += bench.time_windows(2, window)
  bench.state = None
  phase("step")
  if args.steps_per_call:
    ks = [k for k in map(int, args.steps_per_call.split(",")) if k == 1 or k % g == 0]
    result["steps_per_call"] = steps_per_call_lib.measure(
        config, dataset, [k for k in ks if k <= steps_per_call_lib.max_k()], steps=window)
    result["steps_per_call"]["skipped"] = {
        k: steps_per_call_lib.SKIPPED for k in ks if k > steps_per_call_lib.max_k()}
    # What a user gets from the config as it is (every default, its own num_train_steps).
    result["steps_per_call"]["default"] = loop_lib.time_default_path(config, dataset)
    phase("steps_per_call")

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
  result["peak_memory_bytes"], result["peak_memory_kind"] = common.peak_memory()

  platform_name = jax.devices()[0].platform
  n = 512 if args.tiny else (2048 if platform_name == "cpu" else 8192)
  reps, n_windows = (3, 3) if platform_name == "cpu" else (10, 5)
  roof = roofline_lib.roofline(n, "float32", reps, n_windows)
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
    bench16 = step_lib.StepBench(config16, dataset)
    bench16.new_state()
    c16 = bench16.compile()
    f16 = bench16.flops()["flops_per_step_xla"]
    w16 = bench16.time_windows(2, window)
    bench16.state = None
    roof16 = roofline_lib.roofline(n, "bfloat16", reps, n_windows)
    rate16 = statistics.median(w["images_per_s"] for w in w16)
    result["bf16"] = {"step_images_per_s": rate16, "compile_s_cold": c16["total_s"],
                      "flops_per_step_xla": f16, "roofline_flops_per_s": roof16["flops_per_s"],
                      # the float32 step's average FLOPs (the same operations), at this speed
                      "roofline_fraction": None if not result.get("flops_per_step") else
                      result["flops_per_step"] * rate16 / batch / roof16["flops_per_s"]}
  result["load_average_end"] = common.load_average()
  result["hardware"] = common.hardware()
  return result


# ----------------------------------------------------------------------------------------------
# Parent: one child process per measurement, then the reports.


def _child(mode: str, name: str, args, cache_dir: str, out_path: str) -> dict[str, Any]:
  cmd = [sys.executable, "-m", "benchmarks.run", f"--_child={mode}", f"--_name={name}",
         f"--_cache_dir={cache_dir}", f"--_result={out_path}", f"--steps={args.steps}",
         f"--eval={args.eval}", f"--steps_per_call={args.steps_per_call}",
         f"--_launch_time={time.time()!r}"]
  cmd += ["--tiny"] * args.tiny + ["--bf16"] * args.bf16
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
  proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True,
                        check=False, timeout=args.timeout or None)
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


def add_reference(report: dict[str, Any], names: list[str], args) -> None:
  """The authors' iteration against ours (benchmarks/reference.py) for the configs their script
  knows, with G every g_every (the config's) and every 1: per config ``reference_images_per_s``
  and ``speedup_vs_reference`` (at the config's g_every) and ``vs_reference`` (both settings)."""
  known = [n for n in names if n in common.REFERENCE_CONFIGS]
  settings = [(n, g) for n in known
              for g in dict.fromkeys((report["configs"][n].get("g_every", 5), 1))]
  if not settings:
    return
  result = reference.compare(settings, args.reference, args.reference_python,
                             rounds=args.reference_rounds, steps=max(args.steps // 10, 4),
                             windows=args.reference_windows,
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
  parser.add_argument("--configs", default=",".join(common.CONFIGS),
                      help=f"comma-separated, from {', '.join(common.CONFIGS)}")
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
  parser.add_argument("--steps_per_call", default="1,10,100",
                      help="comma-separated K (config.steps_per_call) to time the loop's calls "
                      "at; K > 1 not a multiple of a config's g_every is skipped; '' = none")
  parser.add_argument("--reference", default="",
                      help="the authors' code's folder (../shared/reference): also time their "
                           "training iteration against ours, interleaved (benchmarks/reference.py)")
  parser.add_argument("--reference_python", default="python",
                      help="a Python with torch for the authors' code")
  parser.add_argument("--reference_rounds", type=int, default=3)
  parser.add_argument("--reference_windows", type=int, default=2,
                      help="amr_jax's timed log windows per round (benchmarks/reference.py)")
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
    args.out = os.path.join(common.ROOT, "benchmarks", "results",
                            "tiny.json" if args.tiny else "latest.json")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args._child:  # pylint: disable=protected-access
    from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.apply_defaults()  # as amr_jax.main does, before JAX creates its backend
    child = args._child  # pylint: disable=protected-access
    fn = measure if child == "measure" else first_step_lib.first_step
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
  unknown = [n for n in names if n not in common.CONFIGS]
  if unknown:
    print(f"unknown configs {unknown}; allowed: {', '.join(common.CONFIGS)}", file=sys.stderr)
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
  md_path = report_lib.write_report(report, args.out, report_lib.markdown(report))
  print(f"wrote {args.out} and {md_path}")
  return 0 if all("error" not in r for r in report["configs"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
