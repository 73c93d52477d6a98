"""The accelerator launcher (experiments/accelerator/run.py): its --smoke mode runs the whole path
(speed, projections, a row through run_table, tables) on CPU; its deadline pre-empts cleanly."""

import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.accelerator import run as accelerator
from tests import children

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_runs_the_accelerator_path_on_cpu(tmp_path):
  t0 = time.time()
  result = subprocess.run(
      [sys.executable, "-m", "experiments.accelerator.run", "--smoke", "--time_limit=300",
       f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'table'}",
       f"--compilation_cache={children.XLA_CACHE}"], cwd=ROOT,
      env=children.env(JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  print(f"smoke: {time.time() - t0:.0f} s")
  summary = json.loads((tmp_path / "table_speed.json").read_text())
  assert summary["speed"]["images_per_s"] > 0 and summary["speed"]["placement"] == "device"
  assert summary["projected"]["Table 1 MNIST"]["rows"] == 5
  assert summary["rows"]["mixup"].startswith("finished: 10 steps")
  table = (tmp_path / "table.md").read_text()
  assert "| mixup | amr | mixup |" in table and "98.01 +- 0.10" in table  # the paper's number
  assert "Table 1 MNIST" in result.stdout


def test_deadline_signals_until_cancelled():
  deadline = accelerator._Deadline(0.05)  # pylint: disable=protected-access
  time.sleep(0.3)
  assert deadline.fired  # its SIGTERMs were noted by the handler it installed, not fatal
  deadline.cancel()
