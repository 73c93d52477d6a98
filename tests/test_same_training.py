"""experiments.same_training: its comparison finds any bit that differs, and its child process
refuses an amr_jax from another tree. (Training both revisions is the command's job: minutes.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from amr_jax import checkpointing
from experiments import same_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(at=4, **changes):
  """A small train-state-like tree: parameters, an optimizer state, a step."""
  state = {
      "generator": {"Conv_0": {"kernel": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
                               "bias": np.zeros(4, np.float32)}},
      "opt": [{"count": np.int32(at)}, {"mu": np.full(3, 0.25, np.float32)}],
      "step": np.int32(at),
  }
  for path, value in changes.items():
    node = state
    *parents, leaf = path.split("/")
    for part in parents:
      node = node[int(part)] if isinstance(node, list) else node[part]
    node[leaf] = value
  return state


def _run(directory, states, meta=None, metrics=None):
  """A run directory as amr_jax leaves it: checkpoints/STEP/{state,meta}, metrics.jsonl."""
  checkpointer = checkpointing.Checkpointer(os.path.join(directory, "checkpoints"))
  for step, state in states.items():
    checkpointer.save(step, state, meta or {"best_step": [step]})
  checkpointer.close()
  with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
    for record in metrics or [{"step": 4, "d_loss": 0.5, "steps_per_s": 3.0}]:
      f.write(json.dumps(record) + "\n")
  return str(directory)


def test_equal_runs_compare_equal(tmp_path):
  before = _run(tmp_path / "a", {2: _state(2), 4: _state(4)})
  after = _run(tmp_path / "b", {2: _state(2), 4: _state(4)},
               metrics=[{"step": 4, "d_loss": 0.5, "steps_per_s": 7.0}])  # timing: ignored
  differences, summary = same_training.compare_runs(before, after)
  assert differences == []
  assert "2 checkpoints (steps [2, 4]) of 5 arrays" in summary


def _one_ulp_up(array, index):
  out = array.copy()
  out.flat[index] = np.nextafter(out.flat[index], np.float32(np.inf))
  return out


KERNEL = _state()["generator"]["Conv_0"]["kernel"]


@pytest.mark.parametrize("change, expected", [
    # One ulp in one element of one leaf: the negative control of bit-equality.
    ({"generator/Conv_0/kernel": _one_ulp_up(KERNEL, 5)},
     f"['generator']['Conv_0']['kernel']: max |diff| {np.spacing(abs(KERNEL.flat[5])):.3g} "
     "(1 of 24 elements differ)"),
    ({"generator/Conv_0/bias": np.array([0, -0.0, 0, 0], np.float32)},
     "['generator']['Conv_0']['bias']: max |diff| 0 (1 of 4 elements differ)"),  # -0.0 != 0.0
    ({"opt/1/mu": np.full(3, 0.25, np.float64)},
     "['opt'][1]['mu']: float32[3] before, float64[3] after"),
    ({"step": np.int32(5)}, "['step']: max |diff| 1 (1 of 1 elements differ)"),
    ({"generator/Conv_1": {"bias": np.zeros(1, np.float32)}}, "tree differs: 0 paths only "
     "before (first []), 1 only after (first [\"['generator']['Conv_1']['bias']\"])"),
])
def test_any_changed_leaf_is_found(tmp_path, change, expected):
  before = _run(tmp_path / "a", {4: _state()})
  after = _run(tmp_path / "b", {4: _state(**change)})
  differences, _ = same_training.compare_runs(before, after)
  assert differences == [f"step 4 {expected}"]


def test_meta_metrics_and_steps_are_compared(tmp_path):
  before = _run(tmp_path / "a", {2: _state(2), 4: _state()})
  after = _run(tmp_path / "b", {4: _state()}, meta={"best_step": [2]},
               metrics=[{"step": 4, "d_loss": float(np.nextafter(0.5, 1)), "eval_s": 1.0}])
  differences, _ = same_training.compare_runs(before, after)
  assert differences == [
      "checkpoint steps [2, 4] before, [4] after",
      "step 4 meta.best_step: [4] before, [2] after",
      "metrics step 4.d_loss: 0.5 before, 0.5000000000000001 after"]


def test_saved_before_runs_must_match_host_steps_and_configs():
  manifest = {"steps": 4, "environment": same_training.host_description(),
              "configs": {"mixup": same_training.CONFIGS["mixup"].cli(4)}}
  same_training.check_manifest(manifest, 4, ["mixup"])
  with pytest.raises(same_training.RunError, match="steps 4 then, 6 now.*'acai' was not recorded"):
    same_training.check_manifest(manifest, 6, ["mixup", "acai"])
  manifest["environment"] = dict(manifest["environment"], jaxlib="0.0.1")
  with pytest.raises(same_training.RunError, match="jaxlib '0.0.1' then"):
    same_training.check_manifest(manifest, 4, ["mixup"])


def _child(tree, cwd):
  return subprocess.run([sys.executable, "-c", same_training._CHILD, tree, "--helpshort"],
                        cwd=cwd, env=dict(os.environ, PYTHONPATH=tree), capture_output=True,
                        text=True, timeout=300)


def test_child_runs_the_tree_it_is_given(tmp_path):
  done = _child(REPO, REPO)
  assert done.returncode == 1, done.stderr  # absl's exit status after --helpshort
  assert f"amr_jax from {os.path.realpath(REPO)}/amr_jax/__init__.py" in done.stdout
  assert "--workdir" in done.stdout + done.stderr  # amr_jax.main's own help


def test_child_refuses_an_amr_jax_from_another_tree(tmp_path):
  """The negative control: a tree without amr_jax, so the import falls through to the installed
  one."""
  done = _child(str(tmp_path), str(tmp_path))
  assert done.returncode == 3, done.stderr
  assert "amr_jax was imported from" in done.stderr
  assert f"not from {os.path.realpath(tmp_path)}" in done.stderr


def test_json_values_compare_as_written():
  assert same_training.compare_values({"a": float("nan")}, {"a": float("nan")}, "m") == []
  assert same_training.compare_values({"a": 1}, {"a": 1.0}, "m") == ["m.a: 1 before, 1.0 after"]
  assert same_training.compare_values([0.0], [-0.0], "m") == ["m: [0.0] before, [-0.0] after"]
  assert same_training.compare_values({"a": 1}, {"b": 1}, "m") == ["m.a: only before",
                                                                  "m.b: only after"]


def test_recorded_before_runs_accumulate_per_revision(tmp_path):
  same_training.record_before(str(tmp_path), "commit a", 4, "mixup")
  same_training.record_before(str(tmp_path), "commit a", 4, "acai")
  manifest = json.loads((tmp_path / same_training.MANIFEST).read_text())
  same_training.check_manifest(manifest, 4, ["mixup", "acai"])
  same_training.record_before(str(tmp_path), "commit b", 4, "mixup")  # another revision: afresh
  manifest = json.loads((tmp_path / same_training.MANIFEST).read_text())
  assert list(manifest["configs"]) == ["mixup"] and manifest["revision"] == "commit b"
