"""``train_and_evaluate(config, workdir)``: the one training loop.

It validates the config, loads the data, builds the networks and the jitted step, resumes from
the newest good checkpoint, and then trains, logging metrics, evaluating the probe, saving
pictures and checkpoints. Only process 0 writes logs and pictures; every process checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from amr_jax import checkpointing
from amr_jax import config as config_lib
from amr_jax import data as data_lib
from amr_jax.data import dsprites
from amr_jax import evaluation
from amr_jax import networks as networks_lib
from amr_jax import parallel
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib
from amr_jax import visualize
from amr_jax.metrics_writer import MetricsWriter

# Streams of randomness, each derived from the seed; a step's key is fold_in(stream, step).
_INIT, _TRAIN, _PICTURES = 0, 1, 2


class NonFiniteLossError(RuntimeError):
  """A loss became NaN or Inf; the run stopped without checkpointing the bad state."""


def build_networks(config: ml_collections.ConfigDict, dataset: data_lib.Dataset
                   ) -> networks_lib.Networks:
  return networks_lib.build(
      config.arch.name, image_channels=dataset.image_channels, num_classes=dataset.num_classes,
      width=config.arch.width, latent_channels=config.arch.latent_channels,
      latent_dim=config.arch.latent_dim, instance_norm=config.arch.instance_norm,
      leaky_slope=config.arch.leaky_slope, variational=config.model == "beta_vae",
      num_attributes=num_attributes(config, dataset))


def num_attributes(config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> int:
  """Attributes the supervised mixer conditions on (0 when supervised AMR is off)."""
  if not config.supervised.enabled:
    return 0
  if dataset.train.attributes is None:
    raise config_lib.ConfigError(
        f"config.supervised.enabled=True is not allowed for data.name={dataset.name!r}; allowed "
        "only with datasets that have binary attributes (dsprites, celeb_a)")
  return dataset.train.attributes.shape[1]


def latent_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  return networks_lib.latent_shape(config.arch.name, latent_channels=config.arch.latent_channels,
                                   latent_dim=config.arch.latent_dim)


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose saved config has different parameter shapes (nothing is written)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = ml_collections.ConfigDict(json.load(f))
  mismatches = config_lib.shape_mismatches(saved, config)
  if mismatches:
    raise config_lib.ConfigError(
        f"workdir {workdir!r} holds a run whose config differs in fields that change the "
        f"model's shapes ({'; '.join(mismatches)}); use another --workdir or the saved values")


class _Preemption:
  """Turns SIGTERM into a flag the loop checks at step boundaries (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _first_non_finite(history: list[tuple[int, dict[str, np.ndarray]]]) -> str | None:
  for step, metrics in history:
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        return f"non-finite loss at step {step}: {name}={float(value)}"
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> tuple[train_state_lib.TrainState, dict[str, Any]]:
  """Trains and evaluates AMR as configured; resumes from ``workdir`` if it holds a run.

  Returns the final train state and a summary: last step, best validation probe accuracy, the
  test accuracy at that point and the step it was reached.
  """
  config_lib.validate(config)
  check_workdir(config, workdir)
  is_main = jax.process_index() == 0

  dataset = data_lib.load(
      config.data.name, seed=config.seed, image_size=config.data.image_size,
      manual_dir=config.data.manual_dir, data_dir=config.data.data_dir,
      num_valid=config.data.num_valid, num_train=config.data.num_train,
      attributes=tuple(config.data.attributes))
  nets = build_networks(config, dataset)
  optimizers = train_state_lib.make_optimizers(config.optim)
  mesh = parallel.make_mesh()
  rng = jax.random.key(config.seed)
  image_shape = dataset.train.images.shape[1:]

  # Keys are derived inside the jitted functions (from the seed and the state's step), so every
  # process computes the same ones and no host-local array enters a multi-process computation.
  state = jax.jit(
      lambda: train_state_lib.create(nets, optimizers, jax.random.fold_in(rng, _INIT), image_shape,
                                     latent_shape(config), num_attributes(config, dataset)),
      out_shardings=parallel.replicated(mesh))()
  step_fn = train_step_lib.make_train_step(config, nets, optimizers)
  train_key = jax.random.fold_in(rng, _TRAIN)
  train_step = parallel.jit_data_parallel(
      lambda s, batch: step_fn(s, batch, jax.random.fold_in(train_key, s.step)), mesh,
      batch_args=(1,), num_args=2, donate_state=True)
  encode = evaluation.make_encode(
      lambda s, x: train_step_lib.code(nets, config, s.generator["encoder"], x), mesh)
  finite_parts = jax.jit(lambda s: {
      name: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(part)]))
      for name, part in vars(s).items() if name != "step"}, out_shardings=parallel.replicated(mesh))
  count_correct = evaluation.make_correct_count(
      train_step_lib.make_probe_logits(nets, config), mesh)
  pictures_fn = jax.jit(
      lambda s, x: train_step_lib.generated_images(config, nets, s, x,
                                                   jax.random.fold_in(rng, _PICTURES)),
      out_shardings=parallel.replicated(mesh))

  if is_main:
    os.makedirs(workdir, exist_ok=True)
    # Written whole then renamed, so another process never reads half a file.
    path = os.path.join(workdir, "config.json")
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(path + ".tmp", path)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  meta = {"best_valid_probe_acc": -1.0, "test_probe_acc_at_best": -1.0, "best_step": -1}
  restored = checkpointer.restore_latest(state)
  start_step = 0
  if restored is not None:
    start_step, state, meta = restored
    if is_main:
      print(f"resuming from the checkpoint at step {start_step} in {workdir}", flush=True)
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start_step)

  train = dataset.train
  rows = parallel.local_rows(config.batch_size)
  pictures_x = parallel.replicate(mesh, dataset.valid.images[:config.num_pictures])

  def local_batch(step: int) -> dict[str, np.ndarray]:
    idx = data_lib.batch_indices(config.seed, step, len(train.labels), config.batch_size)[rows]
    batch = {"image": train.images[idx], "label": train.labels[idx]}
    if config.supervised.enabled:
      batch["attributes"] = train.attributes[idx]
    return batch

  def evaluate(step: int) -> dict[str, float]:
    valid_acc = evaluation.probe_accuracy(count_correct, state, mesh, dataset.valid.images,
                                          dataset.valid.labels, config.eval_batch_size)
    test_acc = evaluation.probe_accuracy(count_correct, state, mesh, dataset.test.images,
                                         dataset.test.labels, config.eval_batch_size)
    scores = {}
    if dataset.train.factors is not None:  # ground-truth factors: disentanglement metrics
      scores = evaluation.disentanglement_scores(
          encode, state, mesh, lambda f: dsprites.LazyImages(f)[:], dsprites.FACTOR_SIZES,
          config.disentanglement, config.eval_batch_size, seed=config.seed)
    if valid_acc > meta["best_valid_probe_acc"]:
      meta.update(best_valid_probe_acc=valid_acc, test_probe_acc_at_best=test_acc, best_step=step)
    pictures = pictures_fn(state, pictures_x)  # every process takes part; process 0 writes
    if is_main:
      visualize.save_pictures(os.path.join(workdir, "images"), step, parallel.to_host(pictures))
    return {"valid_probe_acc": valid_acc, "test_probe_acc": test_acc, **scores, **meta}

  # Metrics stay on device and are fetched in groups, so the host never waits on every step.
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  stop_reason = None
  progress = tqdm.tqdm(total=config.num_train_steps, initial=start_step, disable=not is_main,
                       dynamic_ncols=True, desc="train")
  last_time, last_step = time.time(), start_step
  with _Preemption() as preemption:
    step = start_step
    while step < config.num_train_steps:
      batch = parallel.global_batch(mesh, local_batch(step))
      state, metrics = train_step(state, batch)
      pending.append((step + 1, metrics))
      step += 1
      progress.update(1)

      is_last = step == config.num_train_steps
      preempted = preemption.requested  # read once: a SIGTERM may land at any moment
      checkpoint_now = step % config.checkpoint_every == 0 or is_last or preempted
      eval_now = step % config.eval_every == 0 or is_last
      if step % config.log_every == 0 or checkpoint_now or eval_now:
        history = [(s, parallel.to_host(m)) for s, m in pending]
        pending.clear()
        bad = _first_non_finite(history)
        if bad is not None:
          stop_reason = bad
          break
        record = {name: float(np.mean([m[name] for _, m in history])) for name in history[-1][1]}
        now = time.time()
        record["steps_per_s"] = (step - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, step
        if eval_now:
          record.update(evaluate(step))
        writer.write(step, record)
        progress.set_postfix({k: f"{record[k]:.3g}" for k in
                              ("d_loss", "g_loss", "recon", "probe_acc") if k in record})
      if checkpoint_now:
        bad_parts = [name for name, ok in parallel.to_host(finite_parts(state)).items() if not ok]
        if bad_parts:  # never let a non-finite state overwrite a good checkpoint
          stop_reason = f"step {step}: non-finite values in the state's {', '.join(bad_parts)}"
          break
        checkpointer.save(step, state, meta)
      if preempted:
        if is_main:
          print(f"SIGTERM: saved the checkpoint at step {step}; exiting", flush=True)
        break
  progress.close()
  checkpointer.close()
  writer.close()
  if stop_reason is not None:
    kept = checkpointer.all_steps()
    raise NonFiniteLossError(
        f"{stop_reason}; stopped without saving this state; the last good "
        f"checkpoint is step {kept[-1] if kept else 'none'}")
  return state, {"step": step, **meta}
