"""Where the train step's time goes: every convolution and matmul of it, timed on its own.

  python -m benchmarks.profile_step [--config=mnist_dim32] [--g_every=1] [--seeds=1,3]
      [--out=benchmarks/results/profile_mnist_dim32.json] [--tiny]

The step is traced to a jaxpr (forward and backward passes of G, D and the probe, as jitted);
each ``conv_general_dilated`` and ``dot_general`` in it is compiled alone with its own shapes and
parameters and timed. Their sum against the whole step's time says how much of the step the
contractions take and how fast each runs (FLOP/s, and the fraction of a float32 matmul roofline
measured in the same process); the rest is elementwise work, reductions (instance norm,
losses), the optimiser and data movement. ``--seeds`` also times the step with several seeds
side by side (``config.num_seeds``: vmapped or unrolled), in images/s over all seeds.

Writes a JSON report and prints a Markdown summary (also written beside the JSON).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import Any

from benchmarks import common
from benchmarks import report as report_lib
from benchmarks import roofline as roofline_lib
from benchmarks import step as step_lib

CONTRACTIONS = ("conv_general_dilated", "dot_general")


def _subjaxprs(params: dict[str, Any]):
  for value in params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr


def contractions(jaxpr) -> list:
  """Every conv / dot equation in a jaxpr, nested jaxprs (jit, cond, custom_vjp) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in CONTRACTIONS:
      found.append(eqn)
    for sub in _subjaxprs(eqn.params):
      found.extend(contractions(sub))
  return found


def _signature(eqn) -> str:
  """A short, unique label: the op, its operand and result shapes, and non-default params."""
  shapes = " * ".join(str(list(v.aval.shape)) for v in eqn.invars)
  out = list(eqn.outvars[0].aval.shape)
  extra = []
  for key in ("window_strides", "lhs_dilation", "rhs_dilation"):
    value = eqn.params.get(key)
    if value is not None and any(x != 1 for x in value):
      extra.append(f"{key}={tuple(value)}")
  for key in ("feature_group_count", "batch_group_count"):
    if eqn.params.get(key, 1) != 1:
      extra.append(f"{key}={eqn.params[key]}")
  if eqn.primitive.name == "conv_general_dilated":
    padding = eqn.params["padding"]
    if any(p != (1, 1) for p in padding):
      extra.append(f"padding={tuple(tuple(p) for p in padding)}")
    spec = eqn.params["dimension_numbers"]
    extra.append(f"dims={spec.lhs_spec}{spec.rhs_spec}{spec.out_spec}")
  else:
    extra.append(f"dims={eqn.params['dimension_numbers']}")
  name = "conv" if eqn.primitive.name == "conv_general_dilated" else "dot"
  return f"{name} {shapes} -> {out} {' '.join(extra)}"


def time_alone(eqn, reps: int, windows: int) -> dict[str, float]:
  """Compiles one equation on random inputs of its shapes; best window's seconds per call."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  args = [jax.random.normal(jax.random.key(i), v.aval.shape, jnp.float32).astype(v.aval.dtype)
          for i, v in enumerate(eqn.invars)]
  fn = jax.jit(lambda *a: eqn.primitive.bind(*a, **eqn.params))
  compiled = fn.lower(*args).compile()
  flops = step_lib.flops_of(compiled) or 0.0
  compiled(*args).block_until_ready()
  best = float("inf")
  for _ in range(windows):
    t0 = time.perf_counter()
    outs = [compiled(*args) for _ in range(reps)]
    jax.block_until_ready(outs)
    best = min(best, (time.perf_counter() - t0) / reps)
  return {"seconds": best, "flops": flops}


def seeds_images_per_s(config, dataset, num_seeds: int, mode: str, reps: int,
                       windows: int) -> float:
  """Images/s (all seeds together) of the loop's step with ``num_seeds`` seeds side by side,
  run by ``amr_jax.seeds.over_seeds`` in ``mode`` ('vmap' or 'unroll'); best window."""
  step = step_lib.StepBench(config, dataset, num_seeds=num_seeds, seed_batching=mode)
  step.new_state()
  return max(r["images_per_s"] for r in step.time_windows(windows, reps))


def profile(args) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  from amr_jax import parallel  # pylint: disable=g-import-not-at-top
  config = common.make_config(args.config, tiny=args.tiny, light_eval=True)
  config.g_every = args.g_every
  dataset = common.make_dataset(args.config, config, tiny=args.tiny)
  reps, windows = (2, 2) if args.tiny else (args.reps, 3)

  step = step_lib.StepBench(config, dataset)
  state = step.new_state()
  # The step with the generator's update (the loop compiles it apart from the one without).
  jaxpr = step.jaxpr(state)
  step_rate = max(r["images_per_s"] for r in step.time_windows(windows, reps))
  step.state = None
  eqns = contractions(jaxpr)
  groups: dict[str, list] = collections.OrderedDict()
  for eqn in eqns:
    groups.setdefault(_signature(eqn), []).append(eqn)
  rows = []
  for signature, members in groups.items():
    timing = time_alone(members[0], reps=max(reps, 5), windows=windows)
    rows.append({"op": signature, "count": len(members), "seconds_each": timing["seconds"],
                 "flops_each": timing["flops"],
                 "seconds_total": timing["seconds"] * len(members),
                 "flops_total": timing["flops"] * len(members)})
  whole = config.batch_size / step_rate
  seeds = {"1": step_rate} if 1 in args.seeds else {}
  for num_seeds in (n for n in args.seeds if n > 1):
    for mode in ("vmap", "unroll"):
      # Fewer steps than for one seed: vmap on a CPU takes seconds per step.
      seeds[f"{num_seeds} ({mode})"] = seeds_images_per_s(
          config, dataset, num_seeds, mode, max(2, reps // 4), 2)

  platform = jax.devices()[0].platform
  n = 512 if args.tiny else (2048 if platform == "cpu" else 8192)
  roof = roofline_lib.roofline(n, "float32", 3, 3)["flops_per_s"]
  for row in rows:
    row["flops_per_s"] = row["flops_each"] / row["seconds_each"] if row["seconds_each"] else 0.0
    row["roofline_fraction"] = row["flops_per_s"] / roof
  rows.sort(key=lambda r: -r["seconds_total"])
  contraction_s = sum(r["seconds_total"] for r in rows)
  contraction_flops = sum(r["flops_total"] for r in rows)
  return {
      "config": args.config, "g_every": args.g_every, "batch_size": config.batch_size,
      "width": config.arch.width, "step_seconds": whole,
      "step_images_per_s": config.batch_size / whole,
      "contractions_seconds": contraction_s, "contractions_flops": contraction_flops,
      "contractions_share_of_step": contraction_s / whole,
      "contractions_flops_per_s": contraction_flops / contraction_s if contraction_s else 0.0,
      "roofline_flops_per_s": roof, "ops": rows,
      "seeds_side_by_side_images_per_s": seeds,
      "hardware": common.hardware(), "load_average": common.load_average(),
      "devices": parallel.make_mesh().devices.size,
  }


def markdown(report: dict[str, Any], top: int = 12) -> str:
  fmt = report_lib._fmt  # pylint: disable=protected-access
  hw = report["hardware"]
  lines = [
      f"# Profile of the train step: {report['config']} (batch {report['batch_size']}, "
      f"width {report['width']}, g_every {report['g_every']})", "",
      f"Hardware: {hw['device_count']} x {hw['device_kind']} ({hw['platform']}), "
      f"{hw['cpu_count']} CPUs, {hw['cpu_model']}; jax {hw['jax_version']}; "
      f"load average {report['load_average']}.", "",
      f"- whole step: {fmt(report['step_seconds'] * 1e3)} ms "
      f"({fmt(report['step_images_per_s'])} images/s)",
      f"- its convolutions and matmuls, each timed alone: "
      f"{fmt(report['contractions_seconds'] * 1e3)} ms "
      f"({fmt(100 * report['contractions_share_of_step'])}% of the step), "
      f"{fmt(report['contractions_flops'] / 1e9)} GFLOP at "
      f"{fmt(report['contractions_flops_per_s'] / 1e9)} GFLOP/s = "
      f"{fmt(100 * report['contractions_flops_per_s'] / report['roofline_flops_per_s'])}% "
      f"of the float32 matmul roofline ({fmt(report['roofline_flops_per_s'] / 1e9)} GFLOP/s)",
  ]
  for k, v in report["seeds_side_by_side_images_per_s"].items():
    lines.append(f"- {k} seed(s) side by side: {fmt(v)} images/s over all seeds")
  lines += ["", f"The {top} costliest (of {len(report['ops'])} distinct shapes):", "",
            "| op | count | ms each | ms total | GFLOP/s | of roofline |", "|---|---|---|---|---|---|"]
  for row in report["ops"][:top]:
    lines.append(f"| `{row['op']}` | {row['count']} | {fmt(row['seconds_each'] * 1e3)} | "
                 f"{fmt(row['seconds_total'] * 1e3)} | {fmt(row['flops_per_s'] / 1e9)} | "
                 f"{fmt(100 * row['roofline_fraction'])}% |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="mnist_dim32", choices=sorted(common.CONFIGS))
  parser.add_argument("--g_every", type=int, default=1)
  parser.add_argument("--seeds", default="1,3",
                      type=lambda s: [int(x) for x in s.split(",") if x])
  parser.add_argument("--reps", type=int, default=20, help="steps per timed window")
  parser.add_argument("--out", default=None)
  parser.add_argument("--tiny", action="store_true", help="batch 8, width 2: a smoke test")
  args = parser.parse_args(argv)
  out = args.out or os.path.join(common.ROOT, "benchmarks", "results",
                                 f"profile_{args.config}{'_tiny' if args.tiny else ''}.json")
  report = profile(args)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=1)
  summary = markdown(report)
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write(summary)
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
