"""``train_and_evaluate(config, workdir)``: the one training loop.

It validates the config, loads the data, builds the networks and the jitted step, resumes from
the newest good checkpoint, and then trains, logging metrics, evaluating the probe, saving
pictures and checkpoints. Only process 0 writes logs and pictures; every process checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import signal
import time
from typing import Any, Callable

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
from amr_jax import spiral
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
      dtype=None if config.arch.compute_dtype == "float32" else jnp.bfloat16,
      num_attributes=num_attributes(config, dataset), init=config.arch.init,
      input_conv_padding=config.arch.input_conv_padding,
      spectral_input_conv=config.arch.spectral_input_conv,
      spectral_power_iterations=config.arch.spectral_power_iterations)


def num_attributes(config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> int:
  """Attributes the supervised mixer conditions on (0 when supervised AMR is off; config
  validation already allows it only for datasets with attributes)."""
  return dataset.train.attributes.shape[1] if config.supervised.enabled else 0


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


def resolve_seed_batching(mode: str) -> str:
  """'auto' -> 'unroll' on CPU, else 'vmap'. Measured on XLA:CPU (acai32, width 16, batch 64,
  3 seeds): vmap 28 images/s, whose per-seed weights turn every convolution into a grouped one;
  lax.map about as slow; unrolled 172 images/s, against 140 for one seed alone."""
  if mode == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "vmap"
  return mode


def over_seeds(fn: Callable, mode: str, shared: tuple[int, ...] = ()) -> Callable:
  """``fn`` applied over a leading seeds axis of its arguments (except those in ``shared``,
  which every seed sees whole), inside one traced function: ``jax.vmap`` (one batched
  computation) or 'unroll' (one copy of ``fn`` per seed, results stacked). Either way each seed
  computes what it would compute alone."""
  if mode not in ("vmap", "unroll"):
    raise ValueError(f"seed batching must be 'vmap' or 'unroll'; got {mode!r}")

  def seeded(*args):
    if mode == "vmap":
      in_axes = tuple(None if i in shared else 0 for i in range(len(args)))
      return jax.vmap(fn, in_axes=in_axes)(*args)
    num_seeds = jax.tree.leaves([a for i, a in enumerate(args) if i not in shared])[0].shape[0]
    outs = [fn(*(a if i in shared else jax.tree.map(lambda x: x[s], a)
                 for i, a in enumerate(args))) for s in range(num_seeds)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return seeded


def _first_non_finite(history: list[tuple[int, dict[str, np.ndarray]]]) -> str | None:
  for step, metrics in history:
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        return f"non-finite loss at step {step}: {name}={np.asarray(value).tolist()}"
  return None


def _summarise(per_seed: dict[str, list]) -> dict[str, Any]:
  """Per-seed lists -> plain values for one seed; for several, the mean under the plain name
  and the list under NAME_per_seed."""
  out = {}
  for name, values in per_seed.items():
    if len(values) == 1:
      out[name] = values[0]
    else:
      out[name] = float(np.mean(values))
      out[f"{name}_per_seed"] = values
  return out


def make_jitted_state_and_steps(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                                 nets: networks_lib.Networks,
                                 optimizers: train_state_lib.Optimizers, mesh: jax.sharding.Mesh
                                 ) -> tuple[Callable, dict[bool, Callable]]:
  """The loop's jitted functions: ``init_state()`` (replicated over ``mesh``) and the train step
  ``steps[update_generator](state, batch)``, with ``config.num_seeds`` seeds side by side
  (``config.seed_batching``) when more than one.

  There is one compiled step with the generator's update and one without, picked on the host,
  so no ``lax.cond`` runs in the step (see ``train_step.make_train_step``); with g_every=1
  only the first exists.
  """
  seeds = [config.seed + i for i in range(config.num_seeds)]
  multi = len(seeds) > 1
  batching = resolve_seed_batching(config.seed_batching)

  def per_seed(fn):
    """``fn`` over the seeds axis when several seeds train side by side."""
    return over_seeds(fn, batching) if multi else fn

  # Keys are derived inside the jitted functions (from the seed and the state's step), so every
  # process computes the same ones and no host-local array enters a multi-process computation.
  def seed_keys():
    return jax.vmap(jax.random.key)(jnp.asarray(seeds)) if multi else jax.random.key(seeds[0])

  init_state = jax.jit(lambda: per_seed(lambda rng: train_state_lib.create(
      nets, optimizers, jax.random.fold_in(rng, _INIT), dataset.train.images.shape[1:],
      latent_shape(config), num_attributes(config, dataset)))(seed_keys()),
                       out_shardings=parallel.replicated(mesh))
  step_fn = train_step_lib.make_train_step(config, nets, optimizers)

  def seeded_step(s, batch, update_generator):
    return per_seed(lambda s1, b1, rng: step_fn(
        s1, b1, jax.random.fold_in(jax.random.fold_in(rng, _TRAIN), s1.step), update_generator))(
            s, batch, seed_keys())

  steps = {flag: parallel.jit_data_parallel(
      functools.partial(seeded_step, update_generator=flag), mesh, batch_args=(1,), num_args=2,
      donate_state=True, seeds_axis=multi) for flag in ((True,) if config.g_every == 1
                                                        else (True, False))}
  return init_state, steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> tuple[train_state_lib.TrainState, dict[str, Any]]:
  """Trains and evaluates AMR as configured; resumes from ``workdir`` if it holds a run.

  With ``config.num_seeds`` > 1, seeds ``seed, seed + 1, ...`` train side by side in one jitted
  step (``vmap`` over a leading seeds axis of the train state), each with its own parameters,
  random draws and batch order; every state leaf then has that leading axis.

  Returns the final train state and a summary: last step, best validation probe accuracy, the
  test accuracy at that point and the step it was reached (lists, one per seed, when
  num_seeds > 1).
  """
  config_lib.validate(config)
  check_workdir(config, workdir)
  is_main = jax.process_index() == 0

  dataset = data_lib.load(
      config.data.name, seed=config.data.split_seed, image_size=config.data.image_size,
      manual_dir=config.data.manual_dir, data_dir=config.data.data_dir,
      num_valid=config.data.num_valid, num_train=config.data.num_train,
      attributes=tuple(config.data.attributes))
  nets = build_networks(config, dataset)
  optimizers = train_state_lib.make_optimizers(config.optim)
  mesh = parallel.make_mesh()
  seeds = [config.seed + i for i in range(config.num_seeds)]
  multi = len(seeds) > 1
  batching = resolve_seed_batching(config.seed_batching)
  init_state, steps = make_jitted_state_and_steps(config, dataset, nets, optimizers, mesh)
  # The state's shapes and shardings (a trace, nothing compiled or run): enough to restore a
  # checkpoint into (a resumed run never builds the initial state) and to compile the step.
  state_spec = parallel.with_sharding(jax.eval_shape(init_state), parallel.replicated(mesh))
  step_variant = lambda step: steps[step % config.g_every == 0]
  # One seed's state out of the stack (pictures and disentanglement metrics are per seed).
  select = jax.jit(lambda s, i: jax.tree.map(lambda a: a[i], s) if multi else s,
                   static_argnums=1, out_shardings=parallel.replicated(mesh))
  encode = evaluation.make_encode(
      lambda s, x: train_step_lib.code(nets, config, s.generator["encoder"], x), mesh)
  finite_parts = jax.jit(lambda s: {
      name: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(part)]))
      for name, part in vars(s).items() if name != "step"}, out_shardings=parallel.replicated(mesh))
  count_correct = evaluation.make_correct_count(
      train_step_lib.make_probe_logits(nets, config), mesh,
      over_seeds=(lambda fn: over_seeds(fn, batching, shared=(1, 2, 3))) if multi else None)
  pictures_fn = jax.jit(
      lambda s, x: train_step_lib.generated_images(
          config, nets, s, x, jax.random.fold_in(jax.random.key(seeds[0]), _PICTURES)),
      out_shardings=parallel.replicated(mesh))
  if config.data.name == "spiral":  # the appendix toy: decoded mixes measured against the curve
    spiral_host = dataset.train.images[:spiral.NUM_MIX_POINTS]
    spiral_points = parallel.replicate(mesh, spiral_host)
    spiral_encode = jax.jit(
        lambda s, x: train_step_lib.code(nets, config, s.generator["encoder"], x),
        out_shardings=parallel.replicated(mesh))
    spiral_decode = jax.jit(lambda s, h: train_step_lib.to_image(
        nets.decoder.apply({"params": s.generator["decoder"]}, h), config.recon_loss),
        out_shardings=parallel.replicated(mesh))

  if is_main:
    os.makedirs(workdir, exist_ok=True)
    # Written whole then renamed, so another process never reads half a file.
    path = os.path.join(workdir, "config.json")
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(path + ".tmp", path)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  # The best validation accuracy so far, per seed, and the test accuracy and step there.
  meta = {"best_valid_probe_acc": [-1.0] * len(seeds),
          "test_probe_acc_at_best": [-1.0] * len(seeds), "best_step": [-1] * len(seeds)}
  restored = checkpointer.restore_latest(state_spec)
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
    """This process's rows of the batch at ``step``: each seed has its own batch order."""
    per_seed_batches = []
    for seed in seeds:
      idx = data_lib.batch_indices(seed, step, len(train.labels), config.batch_size)[rows]
      batch = {"image": train.images[idx], "label": train.labels[idx]}
      if config.supervised.enabled:
        batch["attributes"] = train.attributes[idx]
      per_seed_batches.append(batch)
    if not multi:
      return per_seed_batches[0]
    return {k: np.stack([b[k] for b in per_seed_batches]) for k in per_seed_batches[0]}

  def evaluate(step: int) -> dict[str, Any]:
    valid_acc = np.atleast_1d(evaluation.probe_accuracy(
        count_correct, state, mesh, dataset.valid.images, dataset.valid.labels,
        config.eval_batch_size))
    test_acc = np.atleast_1d(evaluation.probe_accuracy(
        count_correct, state, mesh, dataset.test.images, dataset.test.labels,
        config.eval_batch_size))
    per_seed_scores = []
    if dataset.train.factors is not None:  # ground-truth factors: disentanglement metrics
      for i, seed in enumerate(seeds):
        per_seed_scores.append(evaluation.disentanglement_scores(
            encode, select(state, i), mesh, lambda f: dsprites.LazyImages(f)[:],
            dsprites.FACTOR_SIZES, config.disentanglement, config.eval_batch_size, seed=seed))
    if config.data.name == "spiral":  # points, not images: a scatter instead of the grids
      for i, seed in enumerate(seeds):
        seed_state = select(state, i)
        stats, mixes = spiral.evaluate_mixes(
            spiral_points, seed, encode_fn=lambda x: spiral_encode(seed_state, x),
            decode_fn=lambda h: spiral_decode(seed_state, h), k=config.k, mixer=config.mixer)
        per_seed_scores.append({"spiral_mix_mean_distance": stats["mean_distance"],
                                "spiral_mix_within_tol": stats["fraction_within_tolerance"]})
        if is_main and i == 0:
          spiral.plot(os.path.join(workdir, "images", f"step_{step:07d}_spiral.png"),
                      spiral_host, mixes, title=f"step {step}, beta={config.beta}: mean distance "
                      f"{stats['mean_distance']:.3f}, within {spiral.TOLERANCE}: "
                      f"{stats['fraction_within_tolerance']:.2f}")
    for i in range(len(seeds)):
      if valid_acc[i] > meta["best_valid_probe_acc"][i]:
        meta["best_valid_probe_acc"][i] = float(valid_acc[i])
        meta["test_probe_acc_at_best"][i] = float(test_acc[i])
        meta["best_step"][i] = step
    if config.data.name != "spiral":
      pictures = pictures_fn(select(state, 0), pictures_x)  # every process takes part
      if is_main:
        visualize.save_pictures(os.path.join(workdir, "images"), step, parallel.to_host(pictures))
    per_seed = {"valid_probe_acc": valid_acc.tolist(), "test_probe_acc": test_acc.tolist(),
                **{k: [s[k] for s in per_seed_scores] for k in (per_seed_scores or [{}])[0]},
                **meta}
    return _summarise(per_seed)

  # Metrics stay on device. At a log step the window's metrics start copying to the host and
  # are read at the next log step, long after they arrived, so the host never waits for the
  # device there; evaluations and checkpoints, which need the state anyway, read everything.
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  in_flight: list[tuple[int, dict[str, jax.Array]]] = []  # the last window, on its way
  last_read = (time.time(), start_step)
  stop_reason = None

  def read_window(window) -> tuple[dict[str, float], str | None]:
    """Means of a window's metrics (and over the seeds), or the first non-finite value."""
    nonlocal last_read
    history = [(s, parallel.to_host(m)) for s, m in window]
    bad = _first_non_finite(history)
    # A metric missing from some steps (G's loss terms, computed on G's steps only) is the mean
    # over the steps that have it.
    names = dict.fromkeys(name for _, m in history for name in m)
    stacked = {name: np.stack([m[name] for _, m in history if name in m]) for name in names}
    record = {name: float(np.mean(values)) for name, values in stacked.items()}
    if multi:  # each seed's own curve too (its window mean)
      record.update({f"{name}_per_seed": values.mean(axis=0).tolist()
                     for name, values in stacked.items()})
    now, end = time.time(), window[-1][0]
    record["steps_per_s"] = (end - last_read[1]) / max(now - last_read[0], 1e-9)
    last_read = (now, end)
    return record, bad

  def batch_at(s: int) -> dict[str, jax.Array]:
    return parallel.global_batch(mesh, local_batch(s), seeds_axis=multi)

  # The first step is traced, lowered and compiled (or loaded from the persistent cache) in a
  # background thread while this thread builds the initial state: the two overlap where XLA
  # releases the GIL. Measured on 2 CPU cores: the first step starts 0.25 s sooner (3.8 s
  # after launch, svhn_dim256). The jitted step's own cache then holds the executable.
  def compile_first_step():
    if start_step < config.num_train_steps:  # (a finished run, resumed, trains no step)
      step_variant(start_step).lower(state_spec, batch_at(start_step)).compile()

  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="amr_jax-compile") as pool:
    compiled = pool.submit(compile_first_step)
    if restored is None:
      state = init_state()  # only a fresh run compiles and runs the initialisation
    compiled.result()

  progress = tqdm.tqdm(total=config.num_train_steps, initial=start_step, disable=not is_main,
                       dynamic_ncols=True, desc="train")
  with _Preemption() as preemption, data_lib.Prefetcher(
      batch_at, start_step, config.num_train_steps) as batches:
    step = start_step
    while step < config.num_train_steps:
      state, metrics = step_variant(step)(state, batches.next())
      pending.append((step + 1, metrics))
      step += 1
      progress.update(1)

      is_last = step == config.num_train_steps
      preempted = preemption.requested  # read once: a SIGTERM may land at any moment
      checkpoint_now = step % config.checkpoint_every == 0 or is_last or preempted
      eval_now = step % config.eval_every == 0 or is_last
      if step % config.log_every == 0 or checkpoint_now or eval_now:
        windows = [in_flight] if in_flight else []
        if checkpoint_now or eval_now:
          windows.append(pending)
          in_flight = []
        else:
          for _, m in pending:
            jax.tree.map(lambda a: a.copy_to_host_async(), m)
          in_flight = pending
        pending = []
        for window in windows:
          record, stop_reason = read_window(window)
          if stop_reason is not None:
            break
          if eval_now and window[-1][0] == step:
            record.update(evaluate(step))
          writer.write(window[-1][0], record)
          progress.set_postfix({k: f"{record[k]:.3g}" for k in
                                ("d_loss", "g_loss", "recon", "probe_acc") if k in record})
        if stop_reason is not None:
          break
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
  return state, {"step": step, **_summarise(meta)}
