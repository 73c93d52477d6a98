r"""Runs rows of the paper's tables over several seeds and writes a results table.

  python -m experiments.run_table --config=experiments/configs/mnist.py \
      --row=ae_gan --row=mixup --row=bern --row=mixup_k3 --row=acai \
      --seeds=3 --workdir=runs/table1_mnist --out=experiments/results/table1_mnist \
      --config.num_train_steps=2000 --config.data.manual_dir=../shared/data/mnist

Each row is one config argument (``--config=FILE:ROW``). The seeds of a row train side by side in
one process and one jitted step (``config.num_seeds``), on every device there is. A row whose
workdir holds a finished run is read, not rerun; an interrupted one resumes. Per seed, the metric
is the best validation probe accuracy over training and the test accuracy at that point (the
paper's protocol), reported as mean +- std beside the paper's number, with the compute used.
``--report=NAME`` adds a metric from the last evaluation (e.g. spiral_mix_within_tol).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import platform
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file whose get_config(arg) takes the row names.")
flags.DEFINE_multi_string("row", None, "A row: the argument to get_config (repeat the flag).")
flags.DEFINE_integer("seeds", 3, "Seeds per row (config.seed, +1, ...), trained side by side.")
flags.DEFINE_string("workdir", None, "Runs go to WORKDIR/<row>.")
flags.DEFINE_string("out", None, "Writes OUT.md and OUT.csv.")
flags.DEFINE_multi_string("report", [], "Metrics of the last evaluation to report too.")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE overrides for every row (also --config.FIELD).")
flags.mark_flags_as_required(["config", "row", "workdir", "out"])


def _load_module(path: str):
  spec = importlib.util.spec_from_file_location("table_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _override(config, assignment: str) -> None:
  """'data.manual_dir=/x' -> config.data.manual_dir = '/x', typed like the existing value."""
  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  field, _, text = assignment.partition("=")
  current = config
  for part in field.split("."):
    current = current[part]
  if isinstance(current, bool):
    value = text.lower() in ("1", "true", "yes")
  elif isinstance(current, (int, float, str)):
    value = type(current)(text)
  else:
    value = json.loads(text)
  config_lib.set_field(config, field, value)


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


class RowPreempted(RuntimeError):
  """A row's training stopped early (SIGTERM): its workdir holds a checkpoint to resume."""


def run_config(config, row: str, workdir: str, report: list[str] = (),
               paper: tuple[float, float] | None = None) -> dict:
  """Trains ``config`` (its seeds side by side) in ``workdir`` and returns the row's results."""
  from amr_jax import train  # pylint: disable=g-import-not-at-top
  start = time.time()
  _, summary = train.train_and_evaluate(config, workdir)
  wall = time.time() - start
  if summary["step"] < config.num_train_steps:
    raise RowPreempted(f"row {row!r} stopped at step {summary['step']} of "
                       f"{config.num_train_steps}")
  per_seed = lambda name: (summary.get(f"{name}_per_seed") or [summary[name]])
  seeds = config.num_seeds
  result = {
      "row": row, "model": config.model, "mixer": config.mixer, "k": config.k,
      "lamb": config.lamb, "dataset": config.data.name, "steps": summary["step"],
      "batch_size": config.batch_size, "seeds": list(range(config.seed, config.seed + seeds)),
      "valid": [100 * v for v in per_seed("best_valid_probe_acc")],
      "test": [100 * v for v in per_seed("test_probe_acc_at_best")],
      "wall_s_this_invocation": wall,
  }
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evaluations = [r for r in map(json.loads, f) if "valid_probe_acc" in r]
  for name in report:
    last = evaluations[-1]
    result[name] = last.get(f"{name}_per_seed") or [last[name]]
  result["paper"] = list(paper) if paper else None
  return result


def run_row(module, row: str, seeds: int, workdir: str, overrides: list[str],
            report: list[str]) -> dict:
  config = module.get_config(row)
  for assignment in overrides:
    _override(config, assignment)
  config.num_seeds = seeds
  try:
    return run_config(config, row, workdir, report,
                      getattr(module, "paper_number", lambda _: None)(row))
  except RowPreempted as e:  # pre-empted (SIGTERM): the row is unfinished
    raise SystemExit(f"{e} (pre-empted); run the same command to resume") from None


def write_tables(results: list[dict], out: str, report: list[str], hardware: str,
                 overrides: list[str] = ()) -> None:
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  header = ["row", "model", "mixer", "k", "lamb", "paper", "valid (ours)", "test (ours)",
            *report, "seeds", "steps x batch"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  rows = []
  for r in results:
    fmt = lambda v: "%.2f +- %.2f" % _mean_std(v)
    paper = "%.2f +- %.2f" % tuple(r["paper"]) if r["paper"] else "-"
    extra = [("%.3f +- %.3f" % _mean_std(r[name])) for name in report]
    cells = [r["row"], r["model"], r["mixer"], str(r["k"]), "%g" % r["lamb"], paper,
             fmt(r["valid"]), fmt(r["test"]), *extra, str(len(r["seeds"])),
             f"{r['steps']} x {r['batch_size']}"]
    lines.append("| " + " | ".join(cells) + " |")
    rows.append(cells)
  with open(out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n\n")
    f.write(f"Probe accuracy in %: per seed, the best validation accuracy over training and the "
            f"test accuracy at that evaluation; mean +- std (ddof=1) over seeds. Hardware: "
            f"{hardware}.\n")
    if overrides:
      f.write("\nOverrides on every row (the rest as in the row's config): "
              + " ".join(f"`{o}`" for o in overrides) + ".\n")
  with open(out + ".csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  with open(out + ".json", "w") as f:
    json.dump({"hardware": hardware, "overrides": list(overrides), "results": results}, f,
              indent=1)


def main(argv):
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and jax log a lot at INFO
  overrides = list(FLAGS.set) + [a[len("--config."):] for a in argv[1:]
                                 if a.startswith("--config.")]
  unknown = [a for a in argv[1:] if not a.startswith("--config.")]
  if unknown:
    raise app.UsageError(f"unknown arguments: {unknown}")
  module = _load_module(FLAGS.config)
  devices = jax.devices()
  hardware = (f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"jax {jax.__version__}")
  results = []
  for row in FLAGS.row:
    name = row.replace(",", "_").replace("=", "")
    results.append(run_row(module, row, FLAGS.seeds, os.path.join(FLAGS.workdir, name),
                           overrides, FLAGS.report))
    if jax.process_index() == 0:
      # After each row: partial tables.
      write_tables(results, FLAGS.out, FLAGS.report, hardware, overrides)
  if jax.process_index() == 0:
    print(open(FLAGS.out + ".md").read())


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
