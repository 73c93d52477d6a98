"""Command line: ``python -m amr_jax.main --config=experiments/configs/mnist.py --workdir=DIR``.

Any field can be overridden with ``--config.FIELD=VALUE`` (e.g. ``--config.mixer=bernoulli``).
This file is intentionally short: the work happens in ``amr_jax.train``.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where metrics, checkpoints and pictures go.")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/amr_jax/xla"),
                    "Persistent XLA compilation cache ('' turns it off).")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for multi-host runs "
                    "('auto' on TPU pods / SLURM); also JAX_COORDINATOR_ADDRESS.")
flags.DEFINE_integer("num_processes", 0, "Processes in a multi-host run (JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", -1, "This process's index (JAX_PROCESS_ID).")
flags.DEFINE_string("authors_checkpoint", None, "A file the AMR authors' save() wrote: imported "
                    "into an empty --workdir, then trained on; ignored (one log line) when the "
                    "workdir already has checkpoints, so a restarted run resumes its own.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from amr_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.apply_defaults()  # before any device exists: XLA reads XLA_FLAGS once
  import jax  # pylint: disable=g-import-not-at-top
  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from amr_jax import parallel  # pylint: disable=g-import-not-at-top
  from amr_jax import train  # pylint: disable=g-import-not-at-top
  from amr_jax import workdir_lock  # pylint: disable=g-import-not-at-top

  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and jax log a lot at INFO
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  try:
    if FLAGS.authors_checkpoint:
      _import_authors(FLAGS.config, FLAGS.authors_checkpoint, FLAGS.workdir)
    _, summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_lib.ConfigError, train.NonFiniteLossError, workdir_lock.WorkdirLockError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    logging.info("done: %s", summary)
    line = f"done: step {summary['step']}"
    if isinstance(summary.get("best_valid_probe_acc"), float):  # one seed, probe evaluated
      line += (f", best valid probe acc {summary['best_valid_probe_acc']:.4f} (step "
               f"{summary['best_step']}), test probe acc there "
               f"{summary['test_probe_acc_at_best']:.4f}")
    print(line)


def _import_authors(config, authors_checkpoint: str, workdir: str) -> None:
  """Converts the authors' saved model into ``workdir`` unless it already has checkpoints."""
  import pickle  # pylint: disable=g-import-not-at-top
  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from amr_jax import from_authors  # pylint: disable=g-import-not-at-top
  if from_authors.has_checkpoints(workdir):
    logging.warning("--authors_checkpoint ignored: %s already has checkpoints; resuming them",
                    workdir)
    return
  try:
    step = from_authors.import_checkpoint(config, authors_checkpoint, workdir)
  except (ValueError, pickle.UnpicklingError, OSError) as e:
    raise config_lib.ConfigError(str(e)) from None
  print(f"imported the authors' model as the checkpoint at step {step}", flush=True)


if __name__ == "__main__":
  app.run(main)
