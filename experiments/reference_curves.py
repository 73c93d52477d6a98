"""Learning curves of the authors' PyTorch code and of amr_jax side by side: a Markdown table and
a PNG plot of validation probe accuracy and reconstruction loss per evaluation step.

  python -m experiments.reference_curves \
      --authors='runs/curves/authors/seed*.jsonl' --ours=runs/curves/jax_mixup \
      --ours_authors_model=runs/curves/jax_mixup_authors \
      --out=experiments/results/reference_curves

`--authors`: JSON lines printed by `../shared/reference/torch_learning_curve.py` (one file per
seed). `--ours`: amr_jax workdirs (their `metrics.jsonl`), one seed or several side by side;
`--ours_authors_model` (optional): the same for runs of the `,authors` config option (the
authors' initialisation, padding and spectral norm). Writes OUT_data.json (every value read, per
seed), OUT_table.md (mean, std and per-seed values per step) and OUT.png.
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
_OURS_AUTHORS_MODEL = flags.DEFINE_list(
    "ours_authors_model", [], "amr_jax workdirs trained with the ',authors' config option")

# Curve groups in tables and plots: label, plot colour.
GROUPS = {"authors' code": (40, 90, 200), "amr_jax": (210, 50, 40),
          "amr_jax ,authors": (30, 150, 60)}
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
  one colour per group (GROUPS)."""
  width, height, margin = 900, 380, 50
  image = Image.new("RGB", (2 * width, height), "white")
  draw = ImageDraw.Draw(image)
  legend = ", ".join(f"{label}: {'blue' if c[2] > 150 else 'red' if c[0] > 150 else 'green'}"
                     for label, c in GROUPS.items() if label in groups)
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
          draw.line(points, fill=GROUPS[label], width=1)
      steps = sorted(set.intersection(*(set(c) for c in curves[name].values()))
                     if curves[name] else set())
      mean = [to_px(s, np.mean([c[s] for c in curves[name].values()])) for s in steps]
      if len(mean) > 1:
        draw.line(mean, fill=GROUPS[label], width=4)
  image.save(path)


def write(authors_pattern: str, workdirs: Sequence[str], out: str,
          authors_model_workdirs: Sequence[str] = ()) -> str:
  """Writes OUT_data.json, OUT_table.md and OUT.png; returns the table."""
  groups = {"authors' code": read_authors(authors_pattern), "amr_jax": read_ours(workdirs)}
  if authors_model_workdirs:
    groups["amr_jax ,authors"] = read_ours(authors_model_workdirs)
  with open(out + "_data.json", "w") as f:
    keys = {"authors' code": "authors", "amr_jax": "amr_jax",
            "amr_jax ,authors": "amr_jax_authors_model"}
    json.dump({keys[label]: curves for label, curves in groups.items()}, f, indent=1)
  text = ("Validation probe accuracy (fraction)\n\n" + table(groups, "valid_probe_acc")
          + "\n\nReconstruction L1 (mean over the steps since the previous evaluation)\n\n"
          + table(groups, "recon") + "\n")
  with open(out + "_table.md", "w") as f:
    f.write(text)
  plot(groups, out + ".png")
  return text


def main(argv: Sequence[str]) -> None:
  del argv
  print(write(_AUTHORS.value, _OURS.value, _OUT.value, _OURS_AUTHORS_MODEL.value))


if __name__ == "__main__":
  app.run(main)
