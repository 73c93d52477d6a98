"""The train step's speed on each way of computing its convolutions, side by side.

  python -m benchmarks.conv_paths [--setting=mnist_dim32:1] [--rounds=3] [--steps=20]
      [--approaches=xla+joint,xla+apart,...] [--out=benchmarks/results/conv_paths_cpu.json] [--tiny]

An approach is ``CONV_PATH+D_FORWARD[+ynn]``:
- ``CONV_PATH``: ``config.arch.conv_path`` (amr_jax/convolution.py): XLA's convolutions, the
  kernel gradient summed over slices of the batch, every convolution over slices of 64 examples
  (D's forward per term), the NCHW layout, or the kernel gradient as patches x matmul;
- ``D_FORWARD``: on G's steps, D's forward over x ``apart`` from the fakes' (G's backward skips
  x's rows; ``objective.Setting.real_apart``) or ``joint`` (one forward over [x, *fakes]);
- ``ynn``: XLA:CPU's default path (its YNNPACK fusions) instead of amr_jax's default flag
  (amr_jax/xla_flags.py).

Each round runs every approach in a fresh process, one after the other (never two at once):
the bare jitted ``train_step`` of the setting's config (G every ``g_every`` steps, as the loop
runs it), 3 windows of ``steps`` steps after a warm-up, the median window. Reported: each
approach's median over rounds and its ratio to the first approach (JSON + Markdown beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import common
from benchmarks import report as report_lib

DEFAULT_APPROACHES = ("xla+joint", "xla+apart", "chunked_weight_grad+joint",
                      "chunked_weight_grad+apart", "batch_slices+apart", "nchw+apart",
                      "patches_weight_grad+apart", "chunked_weight_grad+apart+ynn")


def parse_approach(text: str) -> tuple[str, bool, bool]:
  """(conv_path, real_apart, ynn)."""
  from amr_jax import convolution  # pylint: disable=g-import-not-at-top
  parts = text.split("+")
  if (len(parts) not in (2, 3) or parts[0] not in convolution.CONV_PATHS
      or parts[1] not in ("apart", "joint") or parts[2:] not in ([], ["ynn"])):
    raise ValueError(f"bad approach {text!r}: expected CONV_PATH+apart|joint[+ynn] with "
                     f"CONV_PATH in {convolution.CONV_PATHS}")
  return parts[0], parts[1] == "apart", parts[2:] == ["ynn"]


def time_step(name: str, g_every: int, approach: str, steps: int, cache_dir: str,
              tiny: bool = False) -> dict[str, Any]:
  """In this (fresh) process: the bare step's images/s on ``approach``."""
  conv_path, real_apart, ynn = parse_approach(approach)
  if not ynn:
    from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
    xla_flags.apply_defaults()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from amr_jax import model  # pylint: disable=g-import-not-at-top
  from amr_jax import networks  # pylint: disable=g-import-not-at-top
  from amr_jax import objective  # pylint: disable=g-import-not-at-top
  from amr_jax import train_state  # pylint: disable=g-import-not-at-top
  from amr_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  common.use_compilation_cache(cache_dir)
  config = common.make_config(name, tiny=tiny, light_eval=True)
  config.g_every, config.arch.conv_path = g_every, conv_path
  config_lib.validate(config, check_data=False)
  dataset = common.make_dataset(name, config, tiny=tiny)
  nets = model.build_networks(config, dataset)
  optimizers = train_state.make_optimizers(config.optim)
  image_shape = dataset.train.images.shape[1:]
  latent = networks.latent_shape(config.arch.name, latent_channels=config.arch.latent_channels,
                                 latent_dim=config.arch.latent_dim)
  state = train_state.create(nets, optimizers, jax.random.key(0), image_shape, latent, 0)
  setting = dataclasses.replace(objective.Setting.from_config(config, nets),
                                real_apart=real_apart)
  step = jax.jit(functools.partial(train_step_lib.train_step, config=config, setting=setting,
                                   optimizers=optimizers),
                 static_argnums=3, donate_argnums=0)
  rng = np.random.default_rng(0)
  index = rng.integers(0, len(dataset.train.labels), config.batch_size)
  batch = {"image": jax.numpy.asarray(dataset.train.images[index]),
           "label": jax.numpy.asarray(dataset.train.labels[index])}
  key = jax.random.key(1)
  t0 = time.perf_counter()
  for g in dict.fromkeys([True, g_every == 1]):  # warm-up: compiles both variants
    state, _ = step(state, batch, key, g)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  rates = []
  for _ in range(3):
    t0 = time.perf_counter()
    for i in range(steps):
      state, metrics = step(state, batch, key, i % g_every == 0)
    jax.block_until_ready((state, metrics))
    rates.append(steps * config.batch_size / (time.perf_counter() - t0))
  return {"images_per_s": statistics.median(rates), "window_images_per_s": rates,
          "compile_s": compile_s, "conv_path": conv_path, "real_apart": real_apart,
          "xla_cpu_path": "ynn (XLA:CPU default)" if ynn else "amr_jax.xla_flags defaults",
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "hardware": common.hardware()}


# The kernel gradients of the mnist_dim32 step's costliest convolutions (results/
# profile_mnist_dim32.md): (batch, size, channels in, channels out), 3x3, SAME.
KERNEL_SHAPES = ((192, 32, 32, 16, 16), (64, 32, 32, 16, 16), (192, 16, 16, 32, 32),
                 (192, 8, 8, 64, 64))


def time_kernel_grads(paths: list[str], repeats: int = 7) -> dict[str, Any]:
  """In this process (amr_jax's default XLA flags): ms of one kernel gradient (the VJP of a 3x3
  convolution with respect to its kernel) at each of KERNEL_SHAPES on each conv path, the
  median of ``repeats``, and its relative L2 distance to XLA's."""
  from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.apply_defaults()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from amr_jax import convolution  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  out: dict[str, Any] = {}
  for n, size, c_in, c_out in ((s[0], s[1], s[3], s[4]) for s in KERNEL_SHAPES):
    x = jax.numpy.asarray(rng.standard_normal((n, size, size, c_in), np.float32))
    g = jax.numpy.asarray(rng.standard_normal((n, size, size, c_out), np.float32))
    w = jax.numpy.zeros((3, 3, c_in, c_out))
    row, want = {}, None
    for path in paths:
      conv = convolution.conv_general_dilated(path) or jax.lax.conv_general_dilated
      grad = jax.jit(lambda x_, g_, conv=conv: jax.vjp(
          lambda w_: conv(x_, w_, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
          w)[1](g_)[0])
      got = grad(x, g).block_until_ready()
      want = got if want is None else want
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        grad(x, g).block_until_ready()
        times.append(time.perf_counter() - t0)
      row[path] = {"ms": 1e3 * statistics.median(times),
                   "rel_l2_vs_first": float(np.linalg.norm(got - want) / np.linalg.norm(want))}
    out[f"{n}x{size}x{size}x{c_in}->{c_out}"] = row
  return out


def _child(name: str, g_every: int, approach: str, steps: int, cache_dir: str,
           timeout: float | None, tiny: bool) -> dict[str, Any]:
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    out = f.name
  try:
    cmd = [sys.executable, "-m", "benchmarks.conv_paths", f"--_child={approach}",
           f"--setting={name}:{g_every}", f"--steps={steps}", f"--_cache_dir={cache_dir}",
           f"--_result={out}"] + ["--tiny"] * tiny
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"{approach} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(out) as f:
      return json.load(f)
  finally:
    os.unlink(out)


def compare(name: str, g_every: int, approaches: list[str], *, rounds: int, steps: int,
            timeout: float | None = None, tiny: bool = False, log=print) -> dict[str, Any]:
  results: dict[str, Any] = {a: {"rounds": []} for a in approaches}
  hardware = {}
  with tempfile.TemporaryDirectory(prefix="amr_conv_paths_") as cache_dir:
    for r in range(rounds):
      for approach in approaches:
        result = _child(name, g_every, approach, steps, cache_dir, timeout, tiny)
        hardware = result.pop("hardware")
        results[approach]["rounds"].append(result["images_per_s"])
        results[approach].update({k: v for k, v in result.items() if k != "images_per_s"})
        log(f"round {r + 1}/{rounds} {approach}: {result['images_per_s']:.1f} img/s")
  if not rounds:
    return {"setting": f"{name}:{g_every}", "approaches": {}, "hardware": hardware,
            "rounds": 0, "steps": steps}
  base = statistics.median(results[approaches[0]]["rounds"])
  for result in results.values():
    result["images_per_s"] = statistics.median(result["rounds"])
    result["vs_first"] = result["images_per_s"] / base
  return {"setting": f"{name}:{g_every}", "approaches": results, "hardware": hardware,
          "rounds": rounds, "steps": steps}


def markdown(report: dict[str, Any]) -> str:
  hw = report.get("hardware") or {}
  first = next(iter(report["approaches"]), "-")
  lines = [f"# The train step on each convolution path ({report['created']})", "",
           f"Setting {report['setting']} (config:g_every); {hw.get('cpu_count')} CPUs, "
           f"{hw.get('cpu_model')}; jax {hw.get('jax_version')}; {report['rounds']} interleaved "
           f"rounds of 3 windows x {report['steps']} steps, medians.", "",
           f"Command: `{report['command']}`", "",
           f"| approach | conv path | D's forward on G's steps | XLA:CPU | img/s | vs {first} "
           "| rounds |", "|---|---|---|---|---|---|---|"]
  for approach, r in report["approaches"].items():
    lines.append(f"| {approach} | {r['conv_path']} | {'x apart' if r['real_apart'] else 'joint'}"
                 f" | {r['xla_cpu_path']} | {r['images_per_s']:.0f} | {r['vs_first']:.2f}x | "
                 + ", ".join(f"{v:.0f}" for v in r["rounds"]) + " |")
  kernels = report.get("kernel_grads")
  if kernels:
    paths = list(next(iter(kernels.values())))
    lines += ["", "The kernel gradient alone (a 3x3 convolution's VJP with respect to its kernel, "
              "SAME, float32), ms, median of 7; in brackets its relative L2 distance to "
              f"{paths[0]}'s:", "", "| shape (N x H x W x C_in -> C_out) | "
              + " | ".join(paths) + " |", "|---|" + "---|" * len(paths)]
    for shape, row in kernels.items():
      lines.append(f"| {shape} | " + " | ".join(
          f"{row[p]['ms']:.1f} ({row[p]['rel_l2_vs_first']:.0e})" for p in paths) + " |")
  return "\n".join(lines) + "\n"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--setting", default="mnist_dim32:1", help="CONFIG:G_EVERY")
  parser.add_argument("--approaches", default=",".join(DEFAULT_APPROACHES))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
  parser.add_argument("--timeout", type=float, default=0, help="seconds per child process")
  parser.add_argument("--out", default=os.path.join(common.ROOT, "benchmarks", "results",
                                                    "conv_paths_cpu.json"))
  parser.add_argument("--kernels", action="store_true",
                      help="also time the kernel gradient alone at the step's costliest shapes "
                           "on each conv path (in a process of its own, after the rounds)")
  parser.add_argument("--tiny", action="store_true",
                      help="batch 8, width 2: a smoke test of this script")
  parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_cache_dir", dest="cache_dir", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_result", dest="result", default="", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  name, _, g_every = args.setting.partition(":")
  if name not in common.CONFIGS or "dsprites" in common.CONFIGS[name] or not g_every.isdigit():
    print(f"bad --setting {args.setting!r}: CONFIG:G_EVERY, CONFIG a 32x32 config of "
          f"{', '.join(common.CONFIGS)}", file=sys.stderr)
    return 2
  if args._child == "kernels":  # pylint: disable=protected-access
    from amr_jax import convolution  # pylint: disable=g-import-not-at-top
    result = time_kernel_grads([p for p in convolution.CONV_PATHS if p != "auto"])
    with open(args.result, "w") as f:
      json.dump(result, f)
    sys.stdout.flush()
    os._exit(0)  # pylint: disable=protected-access
  if args._child:  # pylint: disable=protected-access
    result = time_step(name, int(g_every), args._child,  # pylint: disable=protected-access
                       args.steps, args.cache_dir, args.tiny)
    with open(args.result, "w") as f:
      json.dump(result, f)
    sys.stdout.flush()
    os._exit(0)  # pylint: disable=protected-access  # skip interpreter teardown of JAX
  approaches = [a for a in args.approaches.split(",") if a]
  try:
    for approach in approaches:
      parse_approach(approach)
  except ValueError as e:
    print(e, file=sys.stderr)
    return 2
  report = {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(["python -m benchmarks.conv_paths"]
                                + (list(argv) if argv is not None else sys.argv[1:]))}
  report.update(compare(name, int(g_every), approaches, rounds=args.rounds, steps=args.steps,
                        timeout=args.timeout or None, tiny=args.tiny))
  report["tiny"] = args.tiny
  if args.kernels:
    report["kernel_grads"] = _child(name, int(g_every), "kernels", 0, "", args.timeout or None,
                                    args.tiny)
  summary = markdown(report)
  report_lib.write_report(report, args.out, summary)
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
