"""Evaluates a trained run's newest checkpoint with any evaluators, without training.

  python -m amr_jax.evaluate --config=experiments/configs/mnist.py:mixup --workdir=DIR \\
      --evals=frozen_probe

The config (and its overrides) must be the one the run trained with: it gives the data and the
networks' shapes. ``--evals`` names evaluators (:mod:`amr_jax.evaluators`); each takes its
options from ``config.evals`` when the config has an entry for it, else its defaults. The result,
one value per seed for each metric, is printed as a JSON line and appended to
``DIR/evaluations.jsonl``.

``--authors_checkpoint=FILE`` evaluates a model the AMR authors' code saved: it is converted
(:mod:`amr_jax.from_authors`) into ``DIR``, which must hold no checkpoint, first.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The run's experiment config.", lock_config=False)
flags.DEFINE_string("workdir", None, "The run's workdir (its checkpoints are read, not changed).")
flags.DEFINE_list("evals", ["frozen_probe"], "Evaluators to run (names in amr_jax/evaluators).")
flags.DEFINE_string("authors_checkpoint", None, "A file the AMR authors' save() wrote: imported "
                    "into --workdir (which must hold no checkpoint) first, then evaluated.")
flags.mark_flags_as_required(["config", "workdir"])


def with_evaluators(config: ml_collections.ConfigDict, names: Sequence[str]
                    ) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose ``evals`` holds exactly ``names`` (the config's entry for a name
  if it has one, else the evaluator's defaults)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.evals = ml_collections.ConfigDict(
      {name: config.evals[name].to_dict() if name in config.evals else {} for name in names})
  return config


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        names: Sequence[str]) -> dict[str, Any]:
  """Runs the evaluators ``names`` on the newest checkpoint in ``workdir``.

  Returns ``{"step": the checkpoint's step, metric: one value per seed, ...}``. Raises
  ConfigError for a bad config or evaluator name, FileNotFoundError if there is no checkpoint.
  """
  from amr_jax import train  # pylint: disable=g-import-not-at-top
  from amr_jax.evaluators import common as evaluators  # pylint: disable=g-import-not-at-top

  run = train.set_up(with_evaluators(config, names), workdir)
  try:
    restored = run.restore_latest()
    if restored is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    step, state = restored
    result = evaluators.run_due(run.evals, state, step, is_last=True)
  finally:
    run.checkpointer.close()
  return {"step": step, **result.metrics}


def main(argv: Sequence[str]) -> None:
  del argv
  from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.apply_defaults()  # before any device exists
  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    if FLAGS.authors_checkpoint:
      import pickle  # pylint: disable=g-import-not-at-top
      from amr_jax import from_authors  # pylint: disable=g-import-not-at-top
      from amr_jax import workdir_lock  # pylint: disable=g-import-not-at-top
      try:
        step = from_authors.import_checkpoint(FLAGS.config, FLAGS.authors_checkpoint,
                                              FLAGS.workdir)
      except (ValueError, pickle.UnpicklingError, OSError, workdir_lock.WorkdirLockError) as e:
        raise config_lib.ConfigError(str(e)) from None
      print(f"imported the authors' model as the checkpoint at step {step}", flush=True)
    result = evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.evals)
  except (config_lib.ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    line = json.dumps(result)
    print(line)
    with open(os.path.join(FLAGS.workdir, "evaluations.jsonl"), "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
