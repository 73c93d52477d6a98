"""amr_jax's default CLI path against the authors' PyTorch training iteration, timed in turns.

  python -m benchmarks.reference --reference=../shared/reference \
      --reference_python=/tmp/torch-ref/bin/python [--rounds=3] [--steps=40] [--windows=2] \
      [--settings=mnist_dim32:5,mnist_dim32:1,svhn_dim256:5,svhn_dim256:1] \
      [--out=benchmarks/results/reference.json]

A setting is a benchmark config (benchmarks/common.py's CONFIGS; the authors' script knows
mnist_dim32 and svhn_dim256) and G's period (g_every). Each round times every setting twice: the
authors' `TwoGAN.train_on_instance` (`torch_step_speed.py ARCH G_EVERY STEPS` in its own Python
with torch; batch 64, random inputs, after a warm-up), then amr_jax's default CLI path: the
config a user's `python -m amr_jax.main --config=...` runs (every default: XLA flags
`amr_jax.xla_flags`, steps per call chosen for the backend, batches from the host), with only
`g_every` set, trained by `amr_jax.train.train_and_evaluate` on an in-memory dataset of the
real one's shapes and stopped after `windows` + 1 metrics lines; its speed is the median of the
loop's own `steps_per_s` over the lines after the first. Each side runs in a fresh process
that exits before the next one starts, so the two never compete for the cores. Per setting, the
medians over rounds and their ratio `speedup_vs_reference` are reported (JSON + a Markdown
table beside it). `benchmarks.run --reference=...` runs the same comparison for its configs.
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
from typing import Any, Sequence

from benchmarks import common
from benchmarks import report as report_lib
from benchmarks import loop as loop_lib

ROOT = common.ROOT
DEFAULT_SETTINGS = ("mnist_dim32:5", "mnist_dim32:1", "svhn_dim256:5", "svhn_dim256:1")


def parse_settings(text: str) -> list[tuple[str, int]]:
  settings = []
  for item in filter(None, text.split(",")):
    name, _, g_every = item.partition(":")
    if name not in common.CONFIGS or not g_every.isdigit() or int(g_every) < 1:
      raise ValueError(f"bad setting {item!r}: expected CONFIG:G_EVERY with CONFIG in "
                       f"{', '.join(common.CONFIGS)}")
    settings.append((name, int(g_every)))
  return settings


def time_reference(reference_dir: str, python: str, name: str, g_every: int, steps: int,
                   timeout: float | None = None) -> dict[str, Any]:
  """The authors' iteration in its own process: their script's JSON line."""
  proc = subprocess.run([python, "torch_step_speed.py", name, str(g_every), str(steps)],
                        cwd=reference_dir, capture_output=True, text=True, timeout=timeout,
                        check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"the authors' step timing failed ({proc.returncode}): "
                       f"{proc.stderr[-2000:]}")
  return json.loads(lines[-1])


def time_ours(name: str, g_every: int, windows: int, cache_dir: str,
              timeout: float | None = None, tiny: bool = False) -> dict[str, Any]:
  """amr_jax's default CLI path in a fresh process (see ``_ours_child``)."""
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    out = f.name
  try:
    cmd = [sys.executable, "-m", "benchmarks.reference", f"--_ours={name}:{g_every}",
           f"--windows={windows}", f"--_cache_dir={cache_dir}", f"--_result={out}"]
    cmd += ["--tiny"] * tiny
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"amr_jax's step timing failed ({proc.returncode}): "
                         f"{proc.stderr[-2000:]}")
    with open(out) as f:
      return json.load(f)
  finally:
    os.unlink(out)


def _ours_child(name: str, g_every: int, windows: int, cache_dir: str, out: str,
                tiny: bool) -> None:
  from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.apply_defaults()  # as amr_jax.main does
  common.use_compilation_cache(cache_dir)
  config = common.make_config(name, tiny=tiny, light_eval=True)
  config.g_every = g_every  # the setting's one override (--config.g_every=1); the rest default
  dataset = common.make_dataset(name, config, tiny=tiny)
  result = loop_lib.time_default_path(config, dataset, windows=windows)
  result["hardware"] = common.hardware()
  with open(out, "w") as f:
    json.dump(result, f)


def compare(settings: Sequence[tuple[str, int]], reference_dir: str, python: str, *,
            rounds: int = 3, steps: int = 40, windows: int = 2,
            timeout: float | None = None,
            cache_dir: str = "", tiny: bool = False, log=print) -> dict[str, Any]:
  """Interleaved rounds over ``settings``: {'NAME:G': {medians, ratio, every round}}.
  ``tiny``: amr_jax at the benchmark's tiny settings (a smoke test of this code only)."""
  results: dict[str, Any] = {f"{n}:{g}": {"reference": [], "ours": []} for n, g in settings}
  hardware = {}
  with tempfile.TemporaryDirectory(prefix="amr_ref_") as fresh_cache:
    cache_dir = cache_dir or fresh_cache
    for r in range(rounds):
      for name, g_every in settings:
        key = f"{name}:{g_every}"
        theirs = time_reference(reference_dir, python, name, g_every, steps, timeout)
        ours = time_ours(name, g_every, windows, cache_dir, timeout, tiny)
        hardware = ours.pop("hardware")
        results[key]["reference"].append(theirs["images_per_s"])
        results[key]["ours"].append(ours["images_per_s"])
        results[key]["steps_per_call"] = ours["steps_per_call"]
        results[key]["window_steps"] = ours["window_steps"]
        results[key]["torch"], results[key]["torch_threads"] = theirs["torch"], theirs["threads"]
        log(f"round {r + 1}/{rounds} {key}: authors {theirs['images_per_s']:.1f} img/s, "
            f"amr_jax {ours['images_per_s']:.1f} img/s")
  for key, result in results.items():
    result["reference_images_per_s"] = statistics.median(result["reference"])
    result["images_per_s"] = statistics.median(result["ours"])
    result["speedup_vs_reference"] = result["images_per_s"] / result["reference_images_per_s"]
  return {"settings": results, "hardware": hardware, "rounds": rounds, "steps": steps,
          "windows": windows}


def markdown(report: dict[str, Any]) -> str:
  hw = report.get("hardware") or {}
  lines = [f"# amr_jax vs the authors' PyTorch code: training images/s ({report['created']})",
           "",
           f"Hardware: {hw.get('device_count')} x {hw.get('device_kind')}, "
           f"{hw.get('cpu_count')} CPUs, {hw.get('cpu_model')}; jax {hw.get('jax_version')}, "
           f"XLA_FLAGS `{hw.get('xla_flags', '')}`; {report['rounds']} interleaved rounds "
           f"(the authors': {report['steps']} steps; amr_jax: {report.get('windows')} log "
           "windows of the default CLI path), medians.",
           "", f"Command: `{report['command']}`", "",
           "| setting | authors' PyTorch | amr_jax (default CLI path) | speedup | amr_jax steps "
           "per call | rounds (authors / amr_jax) |",
           "|---|---|---|---|---|---|"]
  for key, r in report["settings"].items():
    name, g_every = key.split(":")
    rounds = (", ".join(f"{v:.0f}" for v in r["reference"]) + " / "
              + ", ".join(f"{v:.0f}" for v in r["ours"]))
    lines.append(f"| {name}, G every {g_every} | {r['reference_images_per_s']:.0f} | "
                 f"{r['images_per_s']:.0f} | {r['speedup_vs_reference']:.2f}x | "
                 f"{r.get('steps_per_call', '-')} | {rounds} |")
  return "\n".join(lines) + "\n"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", default=os.path.join(ROOT, "..", "shared", "reference"),
                      help="the authors' code's folder (with torch_step_speed.py)")
  parser.add_argument("--reference_python", default="python",
                      help="a Python with torch for the authors' code")
  parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                      help="comma-separated CONFIG:G_EVERY")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=40,
                      help="timed steps of the authors' iteration per round")
  parser.add_argument("--windows", type=int, default=2,
                      help="amr_jax's timed log windows (log_every steps each) per round")
  parser.add_argument("--timeout", type=float, default=0, help="seconds per child process")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "reference.json"))
  parser.add_argument("--tiny", action="store_true",
                      help="amr_jax at batch 8, width 2: a smoke test of this script")
  parser.add_argument("--_ours", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_cache_dir", dest="cache_dir", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_result", dest="result", default="", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args._ours:  # pylint: disable=protected-access
    name, _, g_every = args._ours.partition(":")  # pylint: disable=protected-access
    _ours_child(name, int(g_every), args.windows, args.cache_dir, args.result, args.tiny)
    sys.stdout.flush()
    os._exit(0)  # pylint: disable=protected-access  # skip interpreter teardown of JAX
  try:
    settings = parse_settings(args.settings)
  except ValueError as e:
    print(e, file=sys.stderr)
    return 2
  report = {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(["python -m benchmarks.reference"]
                                + (list(argv) if argv is not None else sys.argv[1:]))}
  report.update(compare(settings, args.reference, args.reference_python, rounds=args.rounds,
                        steps=args.steps, windows=args.windows, timeout=args.timeout or None,
                        tiny=args.tiny))
  summary = markdown(report)
  report_lib.write_report(report, args.out, summary)
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
