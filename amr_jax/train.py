"""``train_and_evaluate(config, workdir)``: the one training loop.

It validates the config, loads the data, builds the networks, the jitted step and the evaluators
``config.evals`` names (:mod:`amr_jax.evaluators`), resumes from the newest good checkpoint, and
then trains, logging metrics, running the evaluators and saving checkpoints. Only process 0
writes logs and pictures; every process checkpoints.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from amr_jax import checkpointing
from amr_jax import config as config_lib
from amr_jax import data as data_lib
from amr_jax import networks as networks_lib
from amr_jax import parallel
from amr_jax import stepper as stepper_lib
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib
from amr_jax import workdir_lock
from amr_jax.evaluators import common as evaluators
from amr_jax.metrics_writer import MetricsWriter

# Streams of randomness, each derived from the seed; a step's key is fold_in(stream, step).
# (Stream 2 draws the pictures: amr_jax/evaluators/pictures.py.)
_INIT, _TRAIN = 0, 1
# How many calls the host may dispatch ahead of the device: enough to keep it fed, few enough
# that a SIGTERM (acted on between calls) is acted on promptly. Unbounded, the host ran up to the
# runtime's queue of 32 calls ahead and only noticed a SIGTERM once they had run: a row of
# experiments/accelerator/run.py (XLA:CPU, K=5) stopped 86 s after the signal, 41 s past its
# time limit; with this bound it stopped and saved 14 s after it.
MAX_CALLS_IN_FLIGHT = 2


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
      spectral_power_iterations=config.arch.spectral_power_iterations,
      decoder_logit_scale=config.arch.get("decoder_logit_scale", 1.0))


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


# Call boundaries counted over the process's life, for JAX's preemption sync manager (it lives
# as long as the process; a second run in the same process must not count from 0 again).
_CALL_BOUNDARIES = itertools.count(1)


class _Preemption:
  """Where a pre-emption notice (SIGTERM) stops the run: ``reached()``, asked at every call
  boundary, is True at the boundary where the run saves a checkpoint and exits.

  One process: a Python SIGTERM handler sets a flag; the next boundary is the one.

  Several processes (``jax.distributed``): hosts get their notices seconds apart, and saving
  and the next step are collective, so every process must stop at the same boundary. JAX's
  preemption sync manager (set up by ``jax.distributed.initialize()``) catches SIGTERM in C++
  and tells the coordination service; each process then reports its last boundary and all
  agree on the one after the furthest (``multihost_utils.reached_preemption_sync_point``),
  whichever host got the notice first and whether or not the others ever get theirs. A later
  SIGTERM is absorbed by the same C++ handler, so a process that has already stopped still
  exits 0. Python's SIGTERM handler is not installed then: it would replace JAX's (which
  ``signal.getsignal`` does not see).
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._synced = jax.process_count() > 1

  def __enter__(self):
    if self._synced:
      if not jax.config.jax_enable_preemption_service:
        logging.warning("jax_enable_preemption_service is off: SIGTERM ends this multi-process "
                        "run without a checkpoint")
        self._synced = False
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self) -> bool:
    """Whether to save and exit at this call boundary (ask once per boundary, in the same
    order on every process)."""
    if self._synced:
      # The sync manager compares a count of boundaries (consecutive, the same on every
      # process, never repeated while the process lives) with the agreed one.
      return multihost_utils.reached_preemption_sync_point(next(_CALL_BOUNDARIES))
    return self.requested

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


def _seed_keys(seeds: list[int]) -> jax.Array:
  """The seeds' keys, made inside jitted functions: every process computes the same ones and no
  host-local array enters a multi-process computation."""
  return jax.vmap(jax.random.key)(jnp.asarray(seeds)) if len(seeds) > 1 else jax.random.key(
      seeds[0])


def _per_seed(config: ml_collections.ConfigDict) -> Callable[[Callable], Callable]:
  """``fn`` over the seeds axis when several seeds train side by side."""
  batching = resolve_seed_batching(config.seed_batching)
  return (lambda fn: over_seeds(fn, batching)) if config.num_seeds > 1 else (lambda fn: fn)


def make_init_state(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                    nets: networks_lib.Networks, optimizers: train_state_lib.Optimizers,
                    mesh: jax.sharding.Mesh) -> Callable[[], train_state_lib.TrainState]:
  """Jitted ``init_state()``: the initial state of every seed (replicated over ``mesh``)."""
  seeds = [config.seed + i for i in range(config.num_seeds)]
  per_seed = _per_seed(config)
  return jax.jit(lambda: per_seed(lambda rng: train_state_lib.create(
      nets, optimizers, jax.random.fold_in(rng, _INIT), dataset.train.images.shape[1:],
      latent_shape(config), num_attributes(config, dataset)))(_seed_keys(seeds)),
                 out_shardings=parallel.replicated(mesh))


def make_seeded_step(config: ml_collections.ConfigDict, nets: networks_lib.Networks,
                     optimizers: train_state_lib.Optimizers) -> stepper_lib.SeededStep:
  """``seeded_step(state, batch, update_generator) -> (state, metrics)`` (not jitted): the
  train step of every seed side by side (``config.seed_batching``), each with its key
  ``fold_in(fold_in(seed, _TRAIN), state.step)``."""
  seeds = [config.seed + i for i in range(config.num_seeds)]
  per_seed = _per_seed(config)
  step_fn = train_step_lib.make_train_step(config, nets, optimizers)

  def seeded_step(s, batch, update_generator):
    return per_seed(lambda s1, b1, rng: step_fn(
        s1, b1, jax.random.fold_in(jax.random.fold_in(rng, _TRAIN), s1.step), update_generator))(
            s, batch, _seed_keys(seeds))

  return seeded_step


def make_jitted_state_and_steps(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                                 nets: networks_lib.Networks,
                                 optimizers: train_state_lib.Optimizers, mesh: jax.sharding.Mesh
                                 ) -> tuple[Callable, dict[bool, Callable]]:
  """``init_state()`` and the bare jitted step ``steps[update_generator](state, batch)``
  (benchmarks and profiling time it; the loop runs steps through ``amr_jax.stepper``).

  There is one compiled step with the generator's update and one without, picked on the host,
  so no ``lax.cond`` runs in the step (see ``train_step.make_train_step``); with g_every=1
  only the first exists.
  """
  seeded_step = make_seeded_step(config, nets, optimizers)
  steps = {flag: parallel.jit_data_parallel(
      functools.partial(seeded_step, update_generator=flag), mesh, batch_args=(1,), num_args=2,
      donate_state=True, seeds_axis=config.num_seeds > 1)
           for flag in ((True,) if config.g_every == 1 else (True, False))}
  return make_init_state(config, dataset, nets, optimizers, mesh), steps


def load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  return data_lib.load(
      config.data.name, seed=config.data.split_seed, image_size=config.data.image_size,
      manual_dir=config.data.manual_dir, data_dir=config.data.data_dir,
      num_valid=config.data.num_valid, num_train=config.data.num_train,
      train_subset=config.data.train_subset,
      attributes=tuple(config.data.attributes), download=config.data.download)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """WORKDIR/config.json, written whole then renamed (another process never reads half)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(path + ".tmp", path)


def make_evaluator_context(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                           nets: networks_lib.Networks, mesh: jax.sharding.Mesh
                           ) -> evaluators.Context:
  seeds = tuple(config.seed + i for i in range(config.num_seeds))
  multi = len(seeds) > 1
  batching = resolve_seed_batching(config.seed_batching)
  select = jax.jit(lambda s, i: jax.tree.map(lambda a: a[i], s) if multi else s,
                   static_argnums=1, out_shardings=parallel.replicated(mesh))
  return evaluators.Context(
      config=config, dataset=dataset, nets=nets, mesh=mesh, seeds=seeds,
      per_seed=lambda fn, shared=(): over_seeds(fn, batching, shared) if multi else fn,
      select=select)


def make_finite_check(mesh: jax.sharding.Mesh) -> Callable[[train_state_lib.TrainState],
                                                           list[str]]:
  """``bad_parts(state)``: the names of the state's parts holding a NaN or Inf."""
  finite = jax.jit(lambda s: {
      name: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(part)]))
      for name, part in vars(s).items() if name != "step"}, out_shardings=parallel.replicated(mesh))
  return lambda state: [name for name, ok in parallel.to_host(finite(state)).items() if not ok]


@dataclasses.dataclass
class _Call:
  """One call of the step: its last step, how many steps it ran, its metrics (on the device),
  and when the host saw it finished (None until then)."""
  last_step: int
  num_steps: int
  metrics: Any
  done: float | None = None


@dataclasses.dataclass
class _Pause:
  """Training paused for an evaluation or a checkpoint, from ``start`` to ``end``."""
  kind: str
  start: float
  end: float
  reported: bool  # already in a record (an evaluation is reported with its own results)


class _MetricsLog:
  """The step's metrics, kept on device and read in windows, and each window's training speed.

  At a log step the window's metrics start copying to the host and are read at the next log
  step, long after they arrived, so the host never waits for the device there; evaluations and
  checkpoints, which need the state anyway, read everything.

  A window's wall-clock time runs from the end of the previous window to the moment its last
  call has finished on the device, as the host sees it: at each call the host notes which
  calls have finished (in steady state it has just waited for the oldest of the
  MAX_CALLS_IN_FLIGHT ahead), so a window's time is the device's, not the dispatch's (which
  runs ahead, and after a pause dispatches the first calls at once). Evaluations and
  checkpoints (``pause``) first wait for the steps dispatched before them, so that wait counts
  as training; their own time is reported apart (``eval_s``, ``checkpoint_s``) and left out of
  ``steps_per_s``.
  """

  def __init__(self, multi_seed: bool,
               unstack: Callable[[int, Any], list[dict[str, np.ndarray]]]):
    self._pending: list[_Call] = []
    self._in_flight: list[_Call] = []  # the last window, on its way
    self._unfinished: collections.deque[_Call] = collections.deque()  # in dispatch order
    self._window_start = time.perf_counter()  # where the next window's time begins
    self._pauses: list[_Pause] = []  # pauses not yet inside a computed window
    self._multi = multi_seed
    self._unstack = unstack

  def add(self, step: int, num_steps: int, metrics: Any) -> None:
    """A call's metrics (``num_steps`` steps ending at ``step``), still on the device."""
    call = _Call(step, num_steps, metrics)
    self._pending.append(call)
    self._unfinished.append(call)
    self._note_finished()

  def _note_finished(self, through: _Call | None = None) -> None:
    """Stamps the calls seen finished now (in order: a call finishes after the ones before it);
    ``through``: that call and those before it are known to have finished."""
    now = time.perf_counter()
    while self._unfinished:
      call = self._unfinished[0]
      if through is None and not all(leaf.is_ready() for leaf in jax.tree.leaves(call.metrics)):
        return
      self._unfinished.popleft().done = now
      if call is through:
        return

  @contextlib.contextmanager
  def pause(self, kind: str, wait_for: Any, record: dict[str, Any] | None = None
            ) -> Iterator[None]:
    """Times what runs inside as ``kind`` ('eval' or 'checkpoint'), after waiting for
    ``wait_for`` (the state: the steps dispatched so far). Its seconds go into
    ``record[kind + '_s']`` when given (the record of this step, not yet written), else into
    the record of the window it falls in (the next one)."""
    jax.block_until_ready(wait_for)
    if self._unfinished:
      self._note_finished(through=self._unfinished[-1])
    start = time.perf_counter()
    try:
      yield
    finally:
      end = time.perf_counter()
      self._pauses.append(_Pause(kind, start, end, reported=record is not None))
      if record is not None:
        record[f"{kind}_s"] = end - start

  def read(self, everything: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(last step, record) of each window ready to read: the one in flight, and with
    ``everything`` also the pending one; the rest starts copying. Raises NonFiniteLossError at
    the first window holding a NaN or Inf (its record is not returned)."""
    windows = [self._in_flight] if self._in_flight else []
    if everything:
      windows.append(self._pending)
      self._in_flight = []
    else:
      for call in self._pending:
        jax.tree.map(lambda a: a.copy_to_host_async(), call.metrics)
      self._in_flight = self._pending
    self._pending = []
    return (self._record(window) for window in windows)  # read in turn: a bad one stops there

  def _record(self, window: list[_Call]) -> tuple[int, dict[str, Any]]:
    """Means of a window's metrics (and over the seeds), and its training speed."""
    history = [(call.last_step - call.num_steps + 1 + i, m) for call in window
               for i, m in enumerate(self._unstack(call.num_steps,
                                                   parallel.to_host(call.metrics)))]
    if window[-1].done is None:  # read to the host just now: it has finished
      self._note_finished(through=window[-1])
    bad = _first_non_finite(history)
    if bad is not None:
      raise NonFiniteLossError(bad)
    # A metric missing from some steps (G's loss terms, computed on G's steps only) is the mean
    # over the steps that have it.
    names = dict.fromkeys(name for _, m in history for name in m)
    stacked = {name: np.stack([m[name] for _, m in history if name in m]) for name in names}
    record = {name: float(np.mean(values)) for name, values in stacked.items()}
    if self._multi:  # each seed's own curve too (its window mean)
      record.update({f"{name}_per_seed": values.mean(axis=0).tolist()
                     for name, values in stacked.items()})
    return window[-1].last_step, {**record, **self._timing(window)}

  def _timing(self, window: list[_Call]) -> dict[str, float]:
    """``steps_per_s`` over the window's time less its pauses; the pauses' seconds by kind."""
    end = window[-1].done
    inside = [p for p in self._pauses if p.start < end]  # a pause lies between two calls
    self._pauses = [p for p in self._pauses if p.start >= end]
    training = end - self._window_start - sum(p.end - p.start for p in inside)
    self._window_start = end
    timing = {"steps_per_s": sum(call.num_steps for call in window) / max(training, 1e-9)}
    for kind in ("eval", "checkpoint"):
      timing[f"{kind}_s"] = sum((p.end - p.start for p in inside
                                 if p.kind == kind and not p.reported), 0.0)
    return timing


@dataclasses.dataclass
class Run:
  """A config's run in a workdir, set up and nothing compiled: what training and evaluating a
  checkpoint (:mod:`amr_jax.evaluate`) share."""
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  nets: networks_lib.Networks
  mesh: jax.sharding.Mesh
  optimizers: train_state_lib.Optimizers
  init_state: Callable[[], train_state_lib.TrainState]
  # The state's shapes and shardings (a trace, nothing compiled or run): enough to restore a
  # checkpoint into (a resumed run never builds the initial state) and to compile the step.
  state_spec: Any
  evals: list[evaluators.Scheduled]
  checkpointer: checkpointing.Checkpointer

  def restore_latest(self) -> tuple[int, train_state_lib.TrainState] | None:
    """(step, state) of the newest readable checkpoint, with what the evaluators keep across a
    run (the probe's best so far) restored from it; None if there is none."""
    restored = self.checkpointer.restore_latest(self.state_spec)
    if restored is None:
      return None
    step, state, meta = restored
    for item in self.evals:
      item.evaluator.restore(meta)
    return step, state


def set_up(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Validates ``config`` (and any config saved in ``workdir`` against it), then loads the data
  and builds the networks, the mesh, the evaluators and the checkpointer. Writes nothing.
  Raises ConfigError before anything compiles."""
  config_lib.validate(config)
  check_workdir(config, workdir)
  dataset = load_dataset(config)
  nets = build_networks(config, dataset)
  mesh = parallel.make_mesh()
  optimizers = train_state_lib.make_optimizers(config.optim)
  init_state = make_init_state(config, dataset, nets, optimizers, mesh)
  return Run(
      config=config, dataset=dataset, nets=nets, mesh=mesh, optimizers=optimizers,
      init_state=init_state,
      state_spec=parallel.with_sharding(jax.eval_shape(init_state), parallel.replicated(mesh)),
      evals=evaluators.build(make_evaluator_context(config, dataset, nets, mesh)),
      checkpointer=checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")))


def build_while_compiling(compile_fn: Callable[[], Any], build_fn: Callable[[], Any]) -> Any:
  """Runs ``compile_fn`` in a background thread while this thread runs ``build_fn`` (returns its
  result): the two overlap where XLA releases the GIL. Measured on 2 CPU cores, compiling the
  first step while building the initial state starts that step 0.25 s sooner (3.8 s after
  launch, svhn_dim256); the jitted step's own cache then holds the executable."""
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="amr_jax-compile") as pool:
    compiled = pool.submit(compile_fn)
    result = build_fn()
    compiled.result()
  return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> tuple[train_state_lib.TrainState, dict[str, Any]]:
  """Trains and evaluates AMR as configured; resumes from ``workdir`` if it holds a run.

  With ``config.num_seeds`` > 1, seeds ``seed, seed + 1, ...`` train side by side in one jitted
  step (a leading seeds axis on every state leaf), each with its own parameters, random draws
  and batch order.

  Returns the final train state and a summary: the last step and the evaluators' checkpointed
  values (the probe's: best validation accuracy, the test accuracy and step there), lists (one
  per seed) when num_seeds > 1.

  ``workdir`` belongs to this run while it runs (:mod:`amr_jax.workdir_lock`): a run that finds
  it held by a live run raises WorkdirLockError, having written nothing.
  """
  config_lib.validate(config)  # bad input fails before the workdir is locked (or created)
  check_workdir(config, workdir)
  with workdir_lock.hold_for_run(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                        ) -> tuple[train_state_lib.TrainState, dict[str, Any]]:
  """``train_and_evaluate`` once ``workdir`` is this run's."""
  run = set_up(config, workdir)
  evals, checkpointer, state_spec = run.evals, run.checkpointer, run.state_spec
  is_main = jax.process_index() == 0
  stepper = stepper_lib.make_stepper(
      config, run.dataset.train, make_seeded_step(config, run.nets, run.optimizers), run.mesh,
      stepper_lib.resolve_placement(config.data.placement, run.dataset.train))
  bad_parts = make_finite_check(run.mesh)
  if is_main:
    write_config(config, workdir)

  restored = run.restore_latest()
  step = 0
  if restored is not None:
    step = restored[0]
    if is_main:
      print(f"resuming from the checkpoint at step {step} in {workdir}", flush=True)

  plan = stepper.plan(step, config.num_train_steps)  # the calls: (first step, steps)

  def compile_first_step():
    if plan:  # (a finished run, resumed, trains no step)
      stepper.compile(state_spec, *plan[0])

  # Only a fresh run builds (compiles and runs) the initial state.
  state = build_while_compiling(compile_first_step,
                                run.init_state if restored is None else lambda: restored[1])

  writer = MetricsWriter(workdir, enabled=is_main, resume_step=step)
  log = _MetricsLog(config.num_seeds > 1, stepper.unstack)
  progress = tqdm.tqdm(total=config.num_train_steps, initial=step, disable=not is_main,
                       dynamic_ncols=True, desc="train")
  try:
    with _Preemption() as preemption, data_lib.Prefetcher(
        lambda i: stepper.inputs(*plan[i]), 0, len(plan)) as inputs:
      in_flight = collections.deque()  # the newest calls' metrics
      for first, n in plan:  # evaluations, checkpoints and SIGTERM act between calls
        state, metrics = stepper.run(state, first, n, inputs.next())
        in_flight.append(metrics)
        if len(in_flight) > MAX_CALLS_IN_FLIGHT:
          jax.block_until_ready(in_flight.popleft())
        step = first + n
        log.add(step, n, metrics)
        progress.update(n)
        is_last = step == config.num_train_steps
        preempted = preemption.reached()  # once per call: the same boundary on every process
        checkpoint_now = step % config.checkpoint_every == 0 or is_last or preempted
        eval_now = evaluators.any_due(evals, step, is_last)
        if step % config.log_every == 0 or checkpoint_now or eval_now:
          for end, record in log.read(everything=checkpoint_now or eval_now):
            if eval_now and end == step:
              with log.pause("eval", state, record):  # timed apart from training
                result = evaluators.run_due(evals, state, step, is_last)
                record.update(_summarise(result.metrics))
                writer.write_pictures(step, result.pictures)
            writer.write(end, record)
            progress.set_postfix({k: f"{record[k]:.3g}" for k in
                                  ("d_loss", "g_loss", "recon", "probe_acc") if k in record})
        if checkpoint_now:
          with log.pause("checkpoint", state):  # in the next record: this one is written
            bad = bad_parts(state)
            if bad:  # never let a non-finite state overwrite a good checkpoint
              raise NonFiniteLossError(f"step {step}: non-finite values in the state's "
                                       f"{', '.join(bad)}")
            checkpointer.save(step, state, evaluators.merged_meta(evals))
        if preempted:
          if is_main:
            print(f"SIGTERM: saved the checkpoint at step {step}; exiting", flush=True)
          break
  except NonFiniteLossError as e:
    checkpointer.wait()
    kept = checkpointer.all_steps()
    raise NonFiniteLossError(f"{e}; stopped without saving this state; the last good "
                             f"checkpoint is step {kept[-1] if kept else 'none'}") from None
  finally:
    progress.close()
    checkpointer.close()
    writer.close()
  return state, {"step": step, **_summarise(evaluators.merged_meta(evals))}
