"""The speed benchmark end to end on its tiny setting: it runs and writes a complete report."""

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import report as report_lib
from tests import children

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("step_images_per_s", "loop_images_per_s", "loop_to_step_ratio", "flops_per_step",
            "roofline_flops_per_s", "roofline_fraction", "compile_s_cold", "compile_s_warm",
            "peak_memory_bytes")


def test_tiny_run_writes_json_and_markdown(tmp_path):
  out = tmp_path / "report.json"
  # The tests' compilation cache: after the first run, compiles are read from it.
  cache = os.path.join(children.XLA_CACHE, "benchmarks")
  # A stand-in for the authors' step timing (its real one needs torch): a fixed speed.
  reference = tmp_path / "reference"
  reference.mkdir()
  (reference / "torch_step_speed.py").write_text(
      "import json, sys\nprint(json.dumps({'impl': 'authors_pytorch', 'arch': sys.argv[1], "
      "'g_every': int(sys.argv[2]), 'images_per_s': 1e6, 'torch': 'none', 'threads': 2}))\n")
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.run", "--tiny", "--configs=mnist_dim32", "--steps=10",
       "--first_step_runs=1", f"--cache_dir={cache}", f"--out={out}",
       f"--reference={reference}", f"--reference_python={sys.executable}",
       "--reference_rounds=1", "--steps_per_call=1,3,5"],
      cwd=ROOT, env=children.env(), capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  report = json.loads(out.read_text())
  row = report["configs"]["mnist_dim32"]
  for key in REQUIRED:
    assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row.get(key))
  assert row["batch_size"] == 8 and row["width"] == 2
  # A fresh process timed to its first step: it starts (is dispatched) before it finishes.
  assert 0 < row["first_step_start_s_warm"] < row["first_step_s_warm"]
  assert row["first_step_start_s_warm_runs"] == [row["first_step_start_s_warm"]]
  # flops_per_step_xla is the step with G's update; the average over a g_every cycle is lower.
  assert row["flops_per_step"] < row["flops_per_step_xla"]
  assert row["cache_events_warm"].get("cache_hits", 0) >= 1  # the warm compile read the cache
  assert report["hardware"]["jax_version"] and report["hardware"]["platform"]
  summary = (tmp_path / "report.md").read_text()
  assert "| mnist_dim32 | 8 |" in summary
  # The comparison with the authors' code: G every 5 (the config's) and every 1.
  assert row["reference_images_per_s"] == 1e6
  assert set(row["vs_reference"]) == {"mnist_dim32:5", "mnist_dim32:1"}
  ours = row["vs_reference"]["mnist_dim32:5"]["images_per_s"]
  assert ours > 0 and row["speedup_vs_reference"] == ours / 1e6
  assert "| mnist_dim32, G every 1 | 1e+06 |" in summary
  # The loop's calls at K steps per call (K=3 is not a multiple of g_every=5: skipped).
  by_k = row["steps_per_call"]["by_k"]
  assert sorted(by_k, key=int) == ["1", "5"] and all(v["images_per_s"] > 0 for v in by_k.values())
  assert row["steps_per_call"]["placement"] == "device"
  # Beside them the default CLI path: K chosen for CPU (the config's 78,125 steps: 10).
  default = row["steps_per_call"]["default"]
  assert default["steps_per_call"] == 10 and default["images_per_s"] > 0
  assert row["vs_reference"]["mnist_dim32:1"]["steps_per_call"] == 10
  assert "| mnist_dim32 | device |" in summary
  # The children ran with amr_jax's default XLA flags (amr_jax.xla_flags).
  assert "ynn_fusion_type" in report["hardware"]["xla_flags"]


def test_markdown_marks_a_failed_config():
  report = {"created": "now", "command": "python -m benchmarks.run", "tiny": True,
            "hardware": {}, "configs": {"dsprites": {"error": "boom"}}}
  assert "| dsprites | error" in report_lib.markdown(report)


def test_conv_paths_compares_approaches_in_fresh_processes(tmp_path):
  """benchmarks/conv_paths.py on its tiny setting: every approach timed, the report written."""
  out = tmp_path / "conv.json"
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.conv_paths", "--tiny", "--rounds=1", "--steps=2",
       "--approaches=xla+joint,chunked_weight_grad+apart,nchw+apart+ynn", f"--out={out}"],
      cwd=ROOT, env=children.env(), capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = report["approaches"]
  assert list(rows) == ["xla+joint", "chunked_weight_grad+apart", "nchw+apart+ynn"]
  assert all(r["images_per_s"] > 0 for r in rows.values())
  assert rows["xla+joint"]["vs_first"] == 1.0 and not rows["xla+joint"]["real_apart"]
  assert rows["chunked_weight_grad+apart"]["real_apart"]
  assert "individual_convolution" in rows["xla+joint"]["xla_flags"]  # amr_jax's default flag
  assert "individual_convolution" not in rows["nchw+apart+ynn"]["xla_flags"]
  assert "| chunked_weight_grad+apart | chunked_weight_grad | x apart |" in (
      tmp_path / "conv.md").read_text()
  bad = subprocess.run([sys.executable, "-m", "benchmarks.conv_paths", "--approaches=fft+apart"],
                       cwd=ROOT, env=children.env(), capture_output=True, text=True, timeout=120,
                       check=False)
  assert bad.returncode == 2 and "bad approach 'fft+apart'" in bad.stderr
