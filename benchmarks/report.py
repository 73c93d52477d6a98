"""The reports of ``benchmarks.run``: the JSON report and its Markdown summary beside it."""

from __future__ import annotations

import json
import os
from typing import Any


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
  per_call = {n: r["steps_per_call"] for n, r in ok.items() if r.get("steps_per_call")}
  if per_call:
    ks = sorted({int(k) for v in per_call.values() for k in [*v["by_k"], *v.get("skipped", {})]})
    lines += ["", "Steps per jitted call (`config.steps_per_call` = K; the loop's own calls, "
              "training split on the device where it is in memory), img/s; beside them the "
              "default CLI path (`python -m amr_jax.main` with every default: K chosen for the "
              "backend and the run, batches from the host on CPU; the loop's own steps_per_s "
              "over its log windows):", "",
              "| config | placement | " + " | ".join(f"K={k}" for k in ks)
              + " | default CLI path (its K) |", "|---|---|" + "---|" * (len(ks) + 1)]
    for name, v in per_call.items():
      by_k = {int(k): r for k, r in v["by_k"].items()}
      default = v.get("default")
      lines.append(f"| {name} | {v['placement']} | " + " | ".join(
          _fmt(by_k[k]["images_per_s"]) if k in by_k else "-" for k in ks) + " | "
          + (f"{_fmt(default['images_per_s'])} (K={default['steps_per_call']})" if default
             else "-") + " |")
    skipped = {k: why for v in per_call.values() for k, why in v.get("skipped", {}).items()}
    if skipped:
      lines += ["", f"K = {', '.join(map(str, sorted(skipped, key=int)))}: "
                f"{next(iter(skipped.values()))}."]
  compared = {k: v for r in ok.values() for k, v in r.get("vs_reference", {}).items()}
  if compared:
    lines += ["", "Against the authors' PyTorch training iteration (benchmarks/reference.py; "
              "interleaved rounds, medians; amr_jax as `python -m amr_jax.main` runs the config "
              "by default, only g_every set):", "",
              "| setting | authors' img/s | amr_jax img/s | speedup | amr_jax steps per call |",
              "|---|---|---|---|---|"]
    for key, v in compared.items():
      name, g_every = key.split(":")
      lines.append(f"| {name}, G every {g_every} | {_fmt(v['reference_images_per_s'])} | "
                   f"{_fmt(v['images_per_s'])} | {v['speedup_vs_reference']:.2f}x | "
                   f"{v.get('steps_per_call', '-')} |")
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
