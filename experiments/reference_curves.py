"""Learning curves of the authors' PyTorch code and of amr_jax side by side: a Markdown table and
a PNG plot of validation probe accuracy and reconstruction loss per evaluation step.

  python -m experiments.reference_curves \
      --authors='runs/curves/authors/seed*.jsonl' --ours=runs/curves/jax_mixup \
      --variant='amr_jax ,authors=runs/curves/jax_mixup_authors' \
      --out=experiments/results/reference_curves

`--authors`: JSON lines printed by `../shared/reference/torch_learning_curve.py` (one file per
seed). `--ours`: amr_jax workdirs (their `metrics.jsonl`), one seed or several side by side;
`--variant` (repeatable, optional): `LABEL=WORKDIR[,WORKDIR...]`, another group of amr_jax runs
(for example a config option). Writes OUT_data.json (every value read, per group and seed),
OUT_table.md (mean, std and per-seed values per step, then each amr_jax group against the
authors' code per step: the two-sided Mann-Whitney U test's p-value) and OUT.png.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import numpy as np
from absl import app
from absl import flags
from PIL import Image
from PIL import ImageDraw

_AUTHORS = flags.DEFINE_string("authors", None, "glob of the authors' curve JSON-lines files")
_OURS = flags.DEFINE_list("ours", [], "amr_jax workdirs")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "LABEL=WORKDIR[,WORKDIR...]: another group of amr_jax runs")

AUTHORS, OURS = "authors' code", "amr_jax"
# Plot colours, in group order (authors' code, amr_jax, then the variants): name, RGB.
COLOURS = (("blue", (40, 90, 200)), ("red", (210, 50, 40)), ("green", (30, 150, 60)),
           ("orange", (230, 140, 20)), ("purple", (130, 60, 170)), ("grey", (110, 110, 110)))
_OUT = flags.DEFINE_string("out", "experiments/results/reference_curves", "output prefix")


def read_authors(pattern: str) -> dict[str, dict[int, float]]:
  """{'valid_probe_acc' | 'recon': {seed: {step: value}}} from the authors' curve files."""
  curves: dict[str, dict] = {"valid_probe_acc": {}, "recon": {}}
  for path in sorted(glob.glob(pattern)):
    with open(path) as f:
      for record in map(json.loads, f):
        for name in curves:
          curves[name].setdefault(record["seed"], {})[record["step"]] = record[name]
  return curves


def read_ours(workdirs: Sequence[str]) -> dict[str, dict[int, float]]:
  """The same from amr_jax workdirs: probe accuracy at each evaluation and the reconstruction
  loss over the window before it (the mean of the records logged since the previous one)."""
  curves: dict[str, dict] = {"valid_probe_acc": {}, "recon": {}}
  for workdir in workdirs:
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    seeds = [config["seed"] + i for i in range(config.get("num_seeds", 1))]
    window: list[list[float]] = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for record in map(json.loads, f):
        recon = record.get("recon_per_seed", [record.get("recon")] * len(seeds))
        window.append(recon)
        if "valid_probe_acc" not in record:
          continue
        accs = record.get("valid_probe_acc_per_seed", [record["valid_probe_acc"]])
        mean_recon = np.mean(np.asarray(window, np.float64), axis=0)
        for seed, acc, rec in zip(seeds, accs, mean_recon):
          curves["valid_probe_acc"].setdefault(seed, {})[record["step"]] = acc
          curves["recon"].setdefault(seed, {})[record["step"]] = float(rec)
        window = []
  return curves


def stats(per_seed: dict[int, dict[int, float]], step: int) -> tuple[list[float], str]:
  values = [curve[step] for curve in per_seed.values() if step in curve]
  if not values:
    return values, "-"
  spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
  return values, f"{np.mean(values):.3f}{spread} (n={len(values)})"


def table(groups: dict[str, dict], name: str) -> str:
  """One row per step: each group's mean ± std (n) and its per-seed values."""
  steps = sorted({s for curves in groups.values() for c in curves[name].values() for s in c})
  header = " | ".join(f"{label}: mean ± std | per seed" for label in groups)
  lines = [f"| step | {header} |", "|---" * (1 + 2 * len(groups)) + "|"]
  for step in steps:
    cells = []
    for curves in groups.values():
      values, summary = stats(curves[name], step)
      cells += [summary, ", ".join(f"{v:.3f}" for v in values) or "-"]
    lines.append(f"| {step} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(groups: dict[str, dict], path: str) -> None:
  """Two panels (probe accuracy, reconstruction L1): thin lines per seed, thick for the mean;
  one colour per group (COLOURS, in order)."""
  width, height, margin = 900, 380, 50
  image = Image.new("RGB", (2 * width, height), "white")
  draw = ImageDraw.Draw(image)
  colours = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(groups)}
  legend = ", ".join(f"{label}: {colours[label][0]}" for label in groups)
  top = 1.0  # both panels: accuracy and L1 on [-1, 1] images (higher values are clipped)
  for panel, name in enumerate(("valid_probe_acc", "recon")):
    x0 = panel * width
    all_steps = [s for curves in groups.values() for c in curves[name].values() for s in c]
    max_step = max(all_steps, default=1)
    to_px = lambda s, v: (x0 + margin + (width - 2 * margin) * s / max_step,
                          height - margin - (height - 2 * margin) * min(v, top) / top)
    draw.rectangle([x0 + margin, margin, x0 + width - margin, height - margin], outline="black")
    draw.text((x0 + margin, 15), f"{name} vs step (0..{max_step}); y 0..{top}; thick: mean",
              fill="black")
    draw.text((x0 + margin, 28), legend, fill="black")
    for tick in range(0, 11, 2):
      y = to_px(0, top * tick / 10)[1]
      draw.text((x0 + 10, y - 6), f"{top * tick / 10:.1f}", fill="black")
      x = to_px(max_step * tick / 10, 0)[0]
      draw.text((x - 10, height - margin + 8), f"{round(max_step * tick / 10)}", fill="black")
    for label, curves in groups.items():
      for curve in curves[name].values():
        points = [to_px(s, curve[s]) for s in sorted(curve)]
        if len(points) > 1:
          draw.line(points, fill=colours[label][1], width=1)
      steps = sorted(set.intersection(*(set(c) for c in curves[name].values()))
                     if curves[name] else set())
      mean = [to_px(s, np.mean([c[s] for c in curves[name].values()])) for s in steps]
      if len(mean) > 1:
        draw.line(mean, fill=colours[label][1], width=4)
  image.save(path)


def tests_against_authors(groups: dict[str, dict], name: str, min_seeds: int = 3) -> str:
  """One row per step: for each amr_jax group, the two-sided Mann-Whitney U test's p-value
  against the authors' seeds ("-" where either side has fewer than ``min_seeds`` seeds). A small
  p says the two sets of seeds are unlikely to come from one distribution."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  authors = groups[AUTHORS][name]
  others = [label for label in groups if label != AUTHORS]
  steps = sorted({s for c in authors.values() for s in c})
  lines = ["| step | " + " | ".join(f"{label} vs authors: p" for label in others) + " |",
           "|---" * (1 + len(others)) + "|"]
  for step in steps:
    theirs = [c[step] for c in authors.values() if step in c]
    cells = []
    for label in others:
      ours = [c[step] for c in groups[label][name].values() if step in c]
      if min(len(ours), len(theirs)) < min_seeds:
        cells.append("-")
      else:
        p = scipy_stats.mannwhitneyu(ours, theirs, alternative="two-sided").pvalue
        cells.append(f"{p:.3f} ({len(ours)} vs {len(theirs)})")
    lines.append(f"| {step} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def parse_variant(spec: str) -> tuple[str, list[str]]:
  """'LABEL=DIR1,DIR2' -> (LABEL, [DIR1, DIR2])."""
  label, sep, dirs = spec.rpartition("=")
  if not sep or not label or not dirs:
    raise ValueError(f"--variant={spec!r}: expected LABEL=WORKDIR[,WORKDIR...]")
  return label, dirs.split(",")


def write(authors_pattern: str, workdirs: Sequence[str], out: str,
          variants: dict[str, Sequence[str]] | None = None) -> str:
  """Writes OUT_data.json, OUT_table.md and OUT.png; returns the table. ``variants``: label ->
  amr_jax workdirs, each another group."""
  groups = {AUTHORS: read_authors(authors_pattern), OURS: read_ours(workdirs)}
  for label, dirs in (variants or {}).items():
    groups[label] = read_ours(dirs)
  with open(out + "_data.json", "w") as f:
    json.dump(groups, f, indent=1)
  text = ("Validation probe accuracy (fraction)\n\n" + table(groups, "valid_probe_acc")
          + "\n\nReconstruction L1 (mean over the steps since the previous evaluation)\n\n"
          + table(groups, "recon")
          + "\n\nEach amr_jax group against the authors' code, per step: two-sided Mann-Whitney U "
          "test over seeds (p-value; seeds compared)\n\nProbe accuracy:\n\n"
          + tests_against_authors(groups, "valid_probe_acc") + "\n\nReconstruction L1:\n\n"
          + tests_against_authors(groups, "recon") + "\n")
  with open(out + "_table.md", "w") as f:
    f.write(text)
  plot(groups, out + ".png")
  return text


def main(argv: Sequence[str]) -> None:
  del argv
  print(write(_AUTHORS.value, _OURS.value, _OUT.value,
              dict(parse_variant(spec) for spec in _VARIANTS.value)))


if __name__ == "__main__":
  app.run(main)
