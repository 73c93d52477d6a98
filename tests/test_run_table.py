"""The results-table runner: rows x seeds -> Markdown / CSV, and a second call reads, not reruns."""

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests import children

ROOT = Path(__file__).resolve().parents[1]


def run_table(tmp_path):
  # The seeds vmapped: the step is traced once, not once per seed.
  cmd = [sys.executable, "-m", "experiments.run_table", "--config=experiments/configs/tiny.py",
         "--row=ae_gan", "--row=bern", "--seeds=2", f"--workdir={tmp_path / 'runs'}",
         f"--out={tmp_path / 'table'}", "--config.num_train_steps=2",
         "--config.seed_batching=vmap"]
  result = subprocess.run(cmd, cwd=ROOT, env=children.env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_runner_writes_tables_with_every_seed_and_resumes(tmp_path):
  run_table(tmp_path)
  table = (tmp_path / "table.md").read_text()
  assert "| ae_gan | ae_gan | mixup | 2 |" in table and "| bern | amr | bernoulli | 2 |" in table
  with open(tmp_path / "table.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0][:3] == ["row", "model", "mixer"] and len(rows) == 3
  details = json.loads((tmp_path / "table.json").read_text())
  for row in details["results"]:
    assert row["seeds"] == [0, 1] and len(row["valid"]) == 2 and len(row["test"]) == 2
    assert row["steps"] == 2
  assert "Hardware" in table
  assert ("Overrides on every row (the rest as in the row's config): `num_train_steps=2` "
          "`seed_batching=vmap`") in table
  assert details["overrides"] == ["num_train_steps=2", "seed_batching=vmap"]
  # Both rows' runs finished: a second call reads them back and trains nothing more.
  again = run_table(tmp_path)
  assert "resuming from the checkpoint at step 2" in again.stdout
  without_time = lambda rows: [{k: v for k, v in r.items() if k != "wall_s_this_invocation"}
                                for r in rows]
  again_details = json.loads((tmp_path / "table.json").read_text())
  assert without_time(again_details["results"]) == without_time(details["results"])
