r"""Proof that a change keeps the training: checkpoints of two revisions, compared bit for bit.

  python -m experiments.same_training --before=d1dbf32 --after=.
  python -m experiments.same_training --before=d1dbf32 --save_before=/tmp/same_training/before
  python -m experiments.same_training --before_dir=/tmp/same_training/before --after=.

For each tiny config of :data:`CONFIGS` (mixup, Bernoulli, k=3, ACAI, AE+GAN, beta-VAE,
supervised AMR, the authors' iteration, two seeds) both revisions train ``--steps`` steps through
their own ``python -m amr_jax.main``, each in a child process whose ``amr_jax`` and
``experiments`` are that revision's (checked in the child), with the same XLA flags. Then every
checkpoint both runs saved is read with plain orbax (no amr_jax class needed) and compared leaf
by leaf: the tree's paths, each array's dtype, shape and bytes, and the JSON the evaluators keep
beside it; the non-timing values of ``metrics.jsonl`` too. One line per config; the exit status
is 0 when every config is equal, 1 when one differs, 2 when a run failed.

A revision is a git revision (checked out with ``git worktree add --detach`` under ``--workdir``
and removed afterwards) or a directory (``.``: that working tree as it is, uncommitted edits
included). ``--save_before=DIR`` keeps the before runs and a manifest in DIR; ``--before_dir=DIR``
reuses them, so a later comparison trains only the after side (on the same host, jax version,
XLA flags and step count, which the manifest records and checks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

FLAGS = flags.FLAGS

# The XLA flags of every run, whatever each revision's defaults (amr_jax.xla_flags at d1dbf32:
# the CPU default users run), plus the caller's XLA_FLAGS.
XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# metrics.jsonl fields that time the run rather than describe the training.
TIMING_SUFFIX = "_s"
MANIFEST = "manifest.json"
TINY = "experiments/configs/tiny.py"
TINY_DSPRITES = "experiments/configs/tiny_dsprites.py"


@dataclasses.dataclass(frozen=True)
class TinyConfig:
  """One run: a config file (``FILE[:ARG]``, relative to the tree) and its field overrides."""
  config: str
  overrides: tuple[str, ...] = ()

  def cli(self, steps: int) -> list[str]:
    return [f"--config={self.config}", f"--config.num_train_steps={steps}",
            *(f"--config.{o}" for o in self.overrides)]


CONFIGS: dict[str, TinyConfig] = {
    "mixup": TinyConfig(TINY),
    "bernoulli": TinyConfig(TINY, ("mixer=bernoulli",)),
    "mixup_k3": TinyConfig(TINY, ("k=3",)),
    "acai": TinyConfig(TINY, ("model=acai",)),
    "ae_gan": TinyConfig(TINY, ("model=ae_gan",)),
    "beta_vae": TinyConfig(TINY, ("model=beta_vae",)),
    # Supervised AMR needs binary attributes: the generated dSprites has them (no download).
    "supervised": TinyConfig(f"{TINY_DSPRITES}:supervised"),
    # config.AUTHORS_EXACT: the authors' model and their iteration (one D call per loss term).
    "authors_exact": TinyConfig(TINY, (
        "arch.init=authors", "arch.input_conv_padding=1", "arch.spectral_input_conv=False",
        "discriminator_calls=per_term", "spectral_backward=last_call",
        "gan_loss=bce_clamped")),
    "two_seeds": TinyConfig(TINY, ("num_seeds=2",)),
}

def define_flags() -> None:
  """The command's flags, defined only when it runs (importing the module for its comparison
  functions must not clash with other commands' --workdir in the same process)."""
  flags.DEFINE_string("before", None, "The code before the change: a git revision or a "
                      "directory.")
  flags.DEFINE_string("after", None, "The code after the change: a git revision or a directory "
                      "('.': this working tree, uncommitted edits included).")
  flags.DEFINE_integer("steps", 4, "Training steps per run (tiny configs: g_every 2, a checkpoint "
                       "every 2 steps and at the end).")
  flags.DEFINE_string("workdir", None, "Where runs, logs and temporary worktrees go (default: a "
                      "new temporary directory, kept for inspection).")
  flags.DEFINE_string("save_before", None, "Keep the before runs here (with manifest.json) for "
                      "--before_dir later.")
  flags.DEFINE_string("before_dir", None, "Reuse the before runs that --save_before kept here "
                      "instead of training --before.")
  flags.DEFINE_list("only", [], "Run only these configs (names from --list_configs).")
  flags.DEFINE_bool("list_configs", False, "Print the configs and exit.")
  flags.DEFINE_multi_string("after_override", [], "FIELD=VALUE added to the after side's config "
                            "(--config.FIELD=VALUE): a negative control, which must differ.")
  flags.DEFINE_string("compilation_cache", "", "Persistent XLA compilation cache for both sides "
                      "(default: WORKDIR/xla_cache; 'off' turns it off). A cached executable is "
                      "the one the same program compiles to, so the comparison holds either way.")
  flags.DEFINE_integer("timeout", 1800, "Seconds one training run may take.")


# Runs in the child: fails unless every amr_jax and experiments module comes from the tree,
# then runs that tree's command line as ``python -m amr_jax.main`` would.
_CHILD = r"""
import os, runpy, sys
tree = os.path.realpath(sys.argv[1])
sys.argv = ["amr_jax.main", *sys.argv[2:]]

def check_modules():
  for name, module in list(sys.modules.items()):
    if name.split(".")[0] in ("amr_jax", "experiments"):
      path = getattr(module, "__file__", None)
      if path and not os.path.realpath(path).startswith(tree + os.sep):
        print(f"same_training: {name} was imported from {path}, not from {tree}", file=sys.stderr)
        os._exit(3)

import amr_jax
check_modules()
import experiments
check_modules()
print(f"same_training: amr_jax from {amr_jax.__file__}", flush=True)
try:
  runpy.run_module("amr_jax.main", run_name="__main__", alter_sys=True)
finally:
  check_modules()
"""


@dataclasses.dataclass
class Outcome:
  """One config's verdict: 'equal' (lines: a summary), 'differs' or 'failed' (lines: why)."""
  kind: str
  lines: list[str]

  def report(self, name: str, shown: int = 4) -> str:
    if self.kind == "equal":
      return f"{name:14} equal: {self.lines[0]}"
    head = "DIFFERS" if self.kind == "differs" else "FAILED"
    more = f" (+{len(self.lines) - shown} more)" if len(self.lines) > shown else ""
    return "\n".join([f"{name:14} {head}: {self.lines[0]}",
                      *(f"{'':14}   {line}" for line in self.lines[1:shown])]) + more


class RunError(RuntimeError):
  """A training run failed, or saved runs cannot be reused."""


# ---------------------------------------------------------------------------------------------
# Reading and comparing checkpoints.


def _as_numpy(leaf: Any) -> np.ndarray:
  import jax  # pylint: disable=g-import-not-at-top
  if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return np.asarray(leaf)


def read_checkpoint(step_dir: str) -> tuple[dict[str, np.ndarray], Any]:
  """The arrays of an amr_jax checkpoint (``CHECKPOINTS/STEP``), by tree path, and its meta JSON.

  Plain orbax, without a target: the saved tree as dicts and lists of arrays, so reading needs
  no amr_jax class and works for any revision's state layout.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state"))
  arrays = {jax.tree_util.keystr(path): _as_numpy(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  meta_path = os.path.join(step_dir, "meta", "metadata")
  meta = None
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
  return arrays, meta


def checkpoint_steps(run_dir: str) -> list[int]:
  directory = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def compare_arrays(before: Mapping[str, np.ndarray],
                   after: Mapping[str, np.ndarray]) -> list[str]:
  """Every difference between two flattened trees, one line each (empty: bit-equal).

  Equal means the same paths in the same order, and per path the same dtype, shape and bytes
  (so NaNs with the same bits are equal, and -0.0 differs from 0.0).
  """
  out = []
  if list(before) != list(after):
    missing = [p for p in before if p not in after]
    extra = [p for p in after if p not in before]
    if missing or extra:
      out.append(f"tree differs: {len(missing)} paths only before (first {missing[:3]}), "
                 f"{len(extra)} only after (first {extra[:3]})")
    else:
      out.append("tree differs: the same paths in another order")
  for path, a in before.items():
    b = after.get(path)
    if b is None:
      continue
    if a.dtype != b.dtype or a.shape != b.shape:
      out.append(f"{path}: {a.dtype}{list(a.shape)} before, {b.dtype}{list(b.shape)} after")
    elif a.tobytes() != b.tobytes():
      out.append(f"{path}: {_describe_difference(a, b)}")
  return out


def _describe_difference(a: np.ndarray, b: np.ndarray) -> str:
  if a.dtype.kind in "fciub":
    with np.errstate(invalid="ignore", over="ignore"):
      diff = np.abs(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
                    - b.astype(np.complex128 if b.dtype.kind == "c" else np.float64))
    unequal = np.count_nonzero(a.reshape(-1).view(np.uint8).reshape(a.size, -1)
                               != b.reshape(-1).view(np.uint8).reshape(b.size, -1), axis=1)
    return (f"max |diff| {np.nanmax(diff) if diff.size else 0:.3g} "
            f"({np.count_nonzero(unequal)} of {a.size} elements differ)")
  return "bytes differ"


def compare_values(before: Any, after: Any, where: str) -> list[str]:
  """Differences between two JSON values: each written the same way (so 1 != 1.0, -0.0 != 0.0,
  and NaN equals NaN)."""
  if json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True):
    return []
  if isinstance(before, dict) and isinstance(after, dict):
    out = []
    for key in sorted(set(before) | set(after)):
      if key not in after or key not in before:
        out.append(f"{where}.{key}: only {'before' if key in before else 'after'}")
      else:
        out.extend(compare_values(before[key], after[key], f"{where}.{key}"))
    return out
  return [f"{where}: {before!r} before, {after!r} after"]


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  """metrics.jsonl without the fields that time the run."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [{k: v for k, v in r.items() if not k.endswith(TIMING_SUFFIX)} for r in records]


def compare_runs(before_dir: str, after_dir: str, *, metrics: bool = True) -> tuple[list[str], str]:
  """(differences, summary) of two run directories: every checkpoint, its meta, the metrics."""
  steps_before, steps_after = checkpoint_steps(before_dir), checkpoint_steps(after_dir)
  out = []
  if not steps_before:
    out.append(f"no checkpoint in {before_dir}")
  if steps_before != steps_after:
    out.append(f"checkpoint steps {steps_before} before, {steps_after} after")
  num_arrays = 0
  for step in sorted(set(steps_before) & set(steps_after)):
    arrays_b, meta_b = read_checkpoint(os.path.join(before_dir, "checkpoints", str(step)))
    arrays_a, meta_a = read_checkpoint(os.path.join(after_dir, "checkpoints", str(step)))
    num_arrays = max(num_arrays, len(arrays_b))
    out.extend(f"step {step} {line}" for line in compare_arrays(arrays_b, arrays_a))
    out.extend(compare_values(meta_b, meta_a, f"step {step} meta"))
  if metrics:
    records_b, records_a = read_metrics(before_dir), read_metrics(after_dir)
    if len(records_b) != len(records_a):
      out.append(f"metrics.jsonl: {len(records_b)} records before, {len(records_a)} after")
    for record_b, record_a in zip(records_b, records_a):
      out.extend(compare_values(record_b, record_a, f"metrics step {record_b.get('step')}"))
  summary = (f"{len(steps_before)} checkpoints (steps {steps_before}) of {num_arrays} arrays "
             f"and their meta" + (", metrics.jsonl" if metrics else ""))
  return out, summary


# ---------------------------------------------------------------------------------------------
# Revisions and training runs.


def _git(repo: str, *args: str) -> str:
  done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
  if done.returncode:
    raise RunError(f"git {' '.join(args)}: {done.stderr.strip()}")
  return done.stdout.strip()


@dataclasses.dataclass
class Tree:
  """A revision's source tree; ``worktree``: a temporary checkout to remove afterwards."""
  spec: str
  path: str
  description: str
  worktree: bool = False


def open_tree(spec: str, repo: str, scratch: str, side: str) -> Tree:
  """A directory as it is, or a git revision checked out (detached) into ``scratch``."""
  if os.path.isdir(spec):
    path = os.path.realpath(spec)
    try:
      head = _git(path, "rev-parse", "HEAD")
      dirty = bool(_git(path, "status", "--porcelain", "--untracked-files=no"))
      description = f"{path} at {head[:12]}{' with uncommitted edits' if dirty else ''}"
    except RunError:  # not a git checkout
      description = path
    return Tree(spec, path, description)
  try:
    sha = _git(repo, "rev-parse", "--verify", f"{spec}^{{commit}}")
  except RunError:
    raise RunError(f"{spec!r} is neither a directory nor a git revision of {repo}") from None
  path = os.path.join(scratch, f"tree_{side}_{sha[:12]}")
  _git(repo, "worktree", "add", "--detach", path, sha)
  return Tree(spec, os.path.realpath(path), f"commit {sha}", worktree=True)


def close_tree(tree: Tree, repo: str) -> None:
  if tree.worktree:
    _git(repo, "worktree", "remove", "--force", tree.path)


def child_environment() -> dict[str, str]:
  """The caller's environment with the same XLA flags for every run and no revision defaults."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), XLA_FLAGS) if f)
  env["AMR_JAX_DEFAULT_XLA_FLAGS"] = "0"  # each revision's xla_flags adds nothing of its own
  env["PYTHONUNBUFFERED"] = "1"
  return env


def train(tree: Tree, config: TinyConfig, run_dir: str, *, steps: int, extra: Sequence[str],
          cache: str, log_path: str, timeout: int) -> float:
  """Trains ``config`` with ``tree``'s code into ``run_dir`` (made fresh); returns seconds."""
  if os.path.exists(run_dir):
    shutil.rmtree(run_dir)
  env = child_environment()
  env["PYTHONPATH"] = tree.path  # before the editable install of any other checkout
  command = [sys.executable, "-c", _CHILD, tree.path, *config.cli(steps),
             *(f"--config.{o}" for o in extra), f"--workdir={run_dir}",
             f"--compilation_cache={cache}"]
  start = time.time()
  with open(log_path, "w") as log:
    log.write(" ".join(command[:2] + ["<child>"] + command[3:]) + "\n")
    log.flush()
    try:
      rc = subprocess.run(command, cwd=tree.path, env=env, stdout=log, stderr=subprocess.STDOUT,
                          timeout=timeout).returncode
    except subprocess.TimeoutExpired:
      raise RunError(f"timed out after {timeout} s (log: {log_path})") from None
  if rc:
    with open(log_path) as f:
      tail = [line.rstrip() for line in f.readlines()[-3:]]
    raise RunError(f"exit status {rc} (log: {log_path}): " + " | ".join(tail))
  return time.time() - start


def host_description() -> dict[str, str]:
  """What must agree between the before runs of a manifest and the after runs."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  return {"host": platform.node(), "machine": platform.machine(),
          "jax": importlib.metadata.version("jax"), "jaxlib": importlib.metadata.version("jaxlib"),
          "orbax": importlib.metadata.version("orbax-checkpoint"),
          "xla_flags": child_environment()["XLA_FLAGS"], "python": platform.python_version()}


def check_manifest(manifest: dict[str, Any], steps: int, names: Sequence[str]) -> None:
  """Raises RunError when saved before runs cannot stand for this host, step count or configs."""
  now = host_description()
  problems = [f"{key} {manifest['environment'].get(key)!r} then, {value!r} now"
              for key, value in now.items() if manifest["environment"].get(key) != value]
  if manifest["steps"] != steps:
    problems.append(f"steps {manifest['steps']} then, {steps} now")
  for name in names:
    saved = manifest["configs"].get(name)
    if saved is None:
      problems.append(f"config {name!r} was not recorded")
    elif saved != CONFIGS[name].cli(steps):
      problems.append(f"config {name!r} was {saved}, is {CONFIGS[name].cli(steps)} now")
  if problems:
    raise RunError("the saved before runs do not fit (record them again with --save_before): "
                   + "; ".join(problems))


def record_before(directory: str, revision: str, steps: int, name: str) -> None:
  """Adds config ``name`` to DIRECTORY/manifest.json, which starts afresh when it described
  another revision, step count or environment."""
  path = os.path.join(directory, MANIFEST)
  manifest = {"revision": revision, "steps": steps, "environment": host_description(),
              "configs": {}}
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if all(saved.get(key) == manifest[key] for key in ("revision", "steps", "environment")):
      manifest = saved
  manifest["configs"][name] = CONFIGS[name].cli(steps)
  with open(path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(path + ".tmp", path)


def _prepare_before_store(directory: str) -> None:
  """--save_before's directory: new, empty, or one it wrote before (its runs are replaced)."""
  if os.path.isdir(directory) and os.listdir(directory):
    if not os.path.exists(os.path.join(directory, MANIFEST)):
      raise RunError(f"--save_before={directory} is not empty and holds no {MANIFEST}: refusing "
                     "to overwrite it")
  os.makedirs(directory, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# The command.


def _selected() -> list[str]:
  unknown = [n for n in FLAGS.only if n not in CONFIGS]
  if unknown:
    raise app.UsageError(f"unknown --only {unknown}; allowed: {', '.join(CONFIGS)}")
  return [n for n in CONFIGS if not FLAGS.only or n in FLAGS.only]


def _check_usage(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if (FLAGS.before is None) == (FLAGS.before_dir is None):
    raise app.UsageError("give exactly one of --before and --before_dir")
  if FLAGS.after is None and FLAGS.save_before is None:
    raise app.UsageError("give --after (or only record the before runs with --save_before)")
  if FLAGS.before_dir and FLAGS.save_before:
    raise app.UsageError("--save_before records --before: not with --before_dir")


def _before_root(names: Sequence[str], workdir: str) -> str:
  """Where the before runs are: reused (--before_dir, checked), kept, or under the workdir."""
  if FLAGS.before_dir:
    root = os.path.abspath(FLAGS.before_dir)
    with open(os.path.join(root, MANIFEST)) as f:
      manifest = json.load(f)
    check_manifest(manifest, FLAGS.steps, names)
    print(f"before: {manifest['revision']} (saved runs in {root})", flush=True)
    return root
  root = os.path.abspath(FLAGS.save_before or os.path.join(workdir, "before"))
  if FLAGS.save_before:
    _prepare_before_store(root)
  return root


def _run_config(name: str, trees: Mapping[str, Tree], roots: Mapping[str, str], workdir: str,
                cache: str) -> Outcome | None:
  """Trains ``name`` on each side there is a tree for, then compares (when there is an after)."""
  for side, tree in trees.items():
    try:
      seconds = train(tree, CONFIGS[name], os.path.join(roots[side], name), steps=FLAGS.steps,
                      extra=FLAGS.after_override if side == "after" else (), cache=cache,
                      log_path=os.path.join(workdir, "logs", f"{side}_{name}.log"),
                      timeout=FLAGS.timeout)
    except RunError as e:
      return Outcome("failed", [f"{side} run failed: {e}"])
    print(f"  trained {side:6} {name:14} {seconds:6.1f} s", flush=True)
    if side == "before" and FLAGS.save_before:
      record_before(roots["before"], tree.description, FLAGS.steps, name)
  if "after" not in trees:
    return None
  differences, summary = compare_runs(os.path.join(roots["before"], name),
                                      os.path.join(roots["after"], name))
  return Outcome("differs", differences) if differences else Outcome("equal", [summary])


def main(argv: Sequence[str]) -> None:
  if FLAGS.list_configs:
    for name, config in CONFIGS.items():
      print(f"{name:14} {' '.join(config.cli(FLAGS.steps))}")
    return
  _check_usage(argv)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every read at INFO
  names = _selected()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = os.path.abspath(FLAGS.workdir or tempfile.mkdtemp(prefix="same_training_"))
  os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
  cache = ("" if FLAGS.compilation_cache == "off"
           else os.path.abspath(FLAGS.compilation_cache or os.path.join(workdir, "xla_cache")))
  print(f"same_training: {len(names)} configs, {FLAGS.steps} steps; runs and logs in {workdir}",
        flush=True)
  trees: dict[str, Tree] = {}
  outcomes: dict[str, Outcome] = {}
  try:
    roots = {"before": _before_root(names, workdir), "after": os.path.join(workdir, "after")}
    for side in ("before", "after"):
      spec = None if side == "before" and FLAGS.before_dir else FLAGS[side].value
      if spec is not None:
        trees[side] = open_tree(spec, repo, workdir, side)
        print(f"{side}: {trees[side].description}", flush=True)
    for name in names:
      outcome = _run_config(name, trees, roots, workdir, cache)
      if outcome is not None:
        outcomes[name] = outcome
    if FLAGS.save_before:
      print(f"saved the before runs in {roots['before']}", flush=True)
  except RunError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  finally:
    for tree in trees.values():
      close_tree(tree, repo)

  if FLAGS.after_override:
    print(f"after side overridden: {' '.join(FLAGS.after_override)}")
  for name in names:
    if name in outcomes:
      print(outcomes[name].report(name))
  kinds = {o.kind for o in outcomes.values()}
  sys.exit(2 if "failed" in kinds else 1 if "differs" in kinds else 0)


if __name__ == "__main__":
  define_flags()
  app.run(main)
