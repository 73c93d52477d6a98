"""``train_and_evaluate(config, workdir)``: the one training loop.

``set_up`` validates the config, loads the data (or takes a dataset), builds the networks, the
seeds (:mod:`amr_jax.seeds`) and the evaluators ``config.evals`` names (:mod:`amr_jax.evaluators`)
and resolves the 'auto' settings, once. The loop then resumes from the newest good checkpoint and
trains in calls of the jitted step (:mod:`amr_jax.stepper`), logging metrics
(:mod:`amr_jax.metrics_log`), running the evaluators and saving checkpoints; a SIGTERM stops it
at a call boundary with a checkpoint (:mod:`amr_jax.preemption`). Only process 0 writes logs and
pictures; every process checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import tqdm

from amr_jax import checkpointing
from amr_jax import config as config_lib
from amr_jax import data as data_lib
from amr_jax import model as model_lib
from amr_jax import networks as networks_lib
from amr_jax import parallel
from amr_jax import preemption as preemption_lib
from amr_jax import seeds as seeds_lib
from amr_jax import stepper as stepper_lib
from amr_jax import train_state as train_state_lib
from amr_jax import workdir_lock
from amr_jax.evaluators import common as evaluators
from amr_jax.metrics_log import MetricsLog
from amr_jax.metrics_log import NonFiniteLossError  # the loop's error (main.py catches it)
from amr_jax.metrics_writer import MetricsWriter


def load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  return data_lib.load(
      config.data.name, seed=config.data.split_seed, image_size=config.data.image_size,
      manual_dir=config.data.manual_dir, data_dir=config.data.data_dir,
      num_valid=config.data.num_valid, num_train=config.data.num_train,
      train_subset=config.data.train_subset,
      attributes=tuple(config.data.attributes), download=config.data.download)


def make_init_state(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                    nets: networks_lib.Networks, optimizers: train_state_lib.Optimizers,
                    mesh: jax.sharding.Mesh, seeds: seeds_lib.Seeds
                    ) -> Callable[[], train_state_lib.TrainState]:
  """Jitted ``init_state()``: the initial state of every seed (replicated over ``mesh``)."""
  latent = networks_lib.latent_shape(config.arch.name, latent_channels=config.arch.latent_channels,
                                     latent_dim=config.arch.latent_dim)
  attributes = model_lib.num_attributes(config, dataset)
  return jax.jit(lambda: seeds.per_seed(lambda rng: train_state_lib.create(
      nets, optimizers, jax.random.fold_in(rng, seeds_lib.INIT_STREAM),
      dataset.train.images.shape[1:], latent, attributes))(seeds.keys()),
                 out_shardings=parallel.replicated(mesh))


def make_evaluator_context(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                           nets: networks_lib.Networks, mesh: jax.sharding.Mesh,
                           seeds: seeds_lib.Seeds) -> evaluators.Context:
  return evaluators.Context(
      config=config, dataset=dataset, nets=nets, mesh=mesh, seeds=seeds.seeds,
      per_seed=seeds.per_seed, select=seeds.make_select(parallel.replicated(mesh)))


def make_finite_check(mesh: jax.sharding.Mesh) -> Callable[[train_state_lib.TrainState],
                                                           list[str]]:
  """``bad_parts(state)``: the names of the state's parts holding a NaN or Inf."""
  finite = jax.jit(lambda s: {
      name: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(part)]))
      for name, part in vars(s).items() if name != "step"}, out_shardings=parallel.replicated(mesh))
  return lambda state: [name for name, ok in parallel.to_host(finite(state)).items() if not ok]


@dataclasses.dataclass
class Run:
  """A config's run in a workdir, set up and nothing compiled: what training and evaluating a
  checkpoint (:mod:`amr_jax.evaluate`) share. The 'auto' settings are resolved here, once."""
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  nets: networks_lib.Networks
  mesh: jax.sharding.Mesh
  optimizers: train_state_lib.Optimizers
  seeds: seeds_lib.Seeds  # the seed list and its batching ('vmap' or 'unroll')
  placement: str  # of the training split: 'host' or 'device'
  loop: str  # of a call's steps: 'scan' or 'unroll'
  steps_per_call: int  # K: config.steps_per_call, or the backend's choice for 0
  init_state: Callable[[], train_state_lib.TrainState]
  # The state's shapes and shardings (a trace, nothing compiled or run): enough to restore a
  # checkpoint into (a resumed run never builds the initial state) and to compile the step.
  state_spec: Any
  evals: list[evaluators.Scheduled]
  checkpointer: checkpointing.Checkpointer

  def make_stepper(self) -> stepper_lib.Stepper:
    """The jitted step, in calls of ``steps_per_call`` steps (places the data if ``placement``
    is 'device')."""
    return stepper_lib.make_stepper(self.config, self.dataset.train, self.nets, self.optimizers,
                                    self.mesh, self.seeds, placement=self.placement,
                                    loop=self.loop, steps_per_call=self.steps_per_call)

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


def set_up(config: ml_collections.ConfigDict, workdir: str,
           dataset: data_lib.Dataset | None = None) -> Run:
  """Validates ``config`` (and any config saved in ``workdir`` against it), then loads the data
  (unless ``dataset`` is given) and builds the networks, the mesh, the evaluators and the
  checkpointer. Writes nothing. Raises ConfigError before anything compiles."""
  config_lib.validate(config, check_data=dataset is None)
  config_lib.check_workdir(config, workdir)
  dataset = load_dataset(config) if dataset is None else dataset
  nets = model_lib.build_networks(config, dataset)
  mesh = parallel.make_mesh()
  optimizers = train_state_lib.make_optimizers(config.optim)
  seeds = seeds_lib.Seeds.of(config)
  init_state = make_init_state(config, dataset, nets, optimizers, mesh, seeds)
  return Run(
      config=config, dataset=dataset, nets=nets, mesh=mesh, optimizers=optimizers, seeds=seeds,
      placement=stepper_lib.resolve_placement(config.data.placement, dataset.train),
      loop=stepper_lib.resolve_loop(config.steps_per_call_loop),
      steps_per_call=stepper_lib.resolve_steps_per_call(
          config, seed_copies=len(seeds.seeds) if seeds.batching == "unroll" else 1),
      init_state=init_state,
      state_spec=parallel.with_sharding(jax.eval_shape(init_state), parallel.replicated(mesh)),
      evals=evaluators.build(make_evaluator_context(config, dataset, nets, mesh, seeds)),
      checkpointer=checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")))


def build_while_compiling(compile_fn: Callable[[], Any], build_fn: Callable[[], Any]) -> Any:
  """Runs ``compile_fn`` in a background thread while this thread runs ``build_fn`` (returns its
  result): the two overlap where XLA releases the GIL, so the first step starts sooner; the
  jitted step's own cache then holds the executable."""
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="amr_jax-compile") as pool:
    compiled = pool.submit(compile_fn)
    result = build_fn()
    compiled.result()
  return result


@dataclasses.dataclass
class Hooks:
  """What a caller timing the loop from outside (benchmarks/) may ask of it.

  ``on_event(event, step)`` is called at 'ready' (set up, before compiling), 'compiled' (the
  first call compiled, the state built or restored), 'dispatched' (a call ending at ``step``
  dispatched), 'eval' (an evaluation starts), 'logged' (a metrics line written) and 'saved' (a
  checkpoint saved). An exception it raises ends the run as any error would.
  ``wait_for_saves``: wait for each checkpoint's background write before training on (its
  whole cost then falls in the checkpoint's time).
  """
  on_event: Callable[[str, int], None] = lambda event, step: None
  wait_for_saves: bool = False


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       dataset: data_lib.Dataset | None = None, hooks: Hooks | None = None
                       ) -> tuple[train_state_lib.TrainState, dict[str, Any]]:
  """Trains and evaluates AMR as configured; resumes from ``workdir`` if it holds a run.

  With ``config.num_seeds`` > 1, seeds ``seed, seed + 1, ...`` train side by side in one jitted
  step (a leading seeds axis on every state leaf), each with its own parameters, random draws
  and batch order. ``dataset``: train on it instead of loading ``config.data``.

  Returns the final train state and a summary: the last step and the evaluators' checkpointed
  values (the probe's: best validation accuracy, the test accuracy and step there), lists (one
  per seed) when num_seeds > 1.

  ``workdir`` belongs to this run while it runs (:mod:`amr_jax.workdir_lock`): a run that finds
  it held by a live run raises WorkdirLockError, having written nothing.
  """
  config_lib.validate(config, check_data=dataset is None)  # before the workdir is locked
  config_lib.check_workdir(config, workdir)
  with workdir_lock.hold_for_run(workdir):
    return _train_and_evaluate(set_up(config, workdir, dataset), workdir, hooks or Hooks())


def _train_and_evaluate(run: Run, workdir: str, hooks: Hooks
                        ) -> tuple[train_state_lib.TrainState, dict[str, Any]]:
  """``train_and_evaluate`` once ``workdir`` is this run's: the loop, one call per iteration;
  evaluations, checkpoints and SIGTERM act between calls."""
  config, is_main, on_event = run.config, jax.process_index() == 0, hooks.on_event
  stepper = run.make_stepper()
  if is_main:
    config_lib.write_to_workdir(config, workdir)
  step, state, plan = _start(run, stepper, workdir, on_event)
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=step)
  log = MetricsLog(run.seeds.multi, preemption_lib.MAX_CALLS_IN_FLIGHT)
  progress = tqdm.tqdm(total=config.num_train_steps, initial=step, disable=not is_main,
                       dynamic_ncols=True, desc="train")
  save = _make_save(run, log, hooks)
  try:
    with preemption_lib.Preemption() as preemption, stepper.prefetch(plan) as inputs:
      for first, n in plan:
        state, metrics = stepper.run(state, first, n, inputs.next())
        step = first + n
        on_event("dispatched", step)
        log.add(step, n, metrics)
        progress.update(n)
        is_last = step == config.num_train_steps
        preempted = preemption.reached()  # once per call: the same boundary on every process
        checkpoint_now = step % config.checkpoint_every == 0 or is_last or preempted
        eval_now = evaluators.any_due(run.evals, step, is_last)
        if step % config.log_every == 0 or checkpoint_now or eval_now:
          for end, record in log.read(everything=checkpoint_now or eval_now):
            if eval_now and end == step:
              _evaluate(run, log, writer, state, step, is_last, record, on_event)
            writer.write(end, record)
            on_event("logged", end)
            progress.set_postfix({k: f"{record[k]:.3g}" for k in
                                  ("d_loss", "g_loss", "recon", "probe_acc") if k in record})
        if checkpoint_now:
          save(state, step)
        if preempted:
          if is_main:
            print(f"SIGTERM: saved the checkpoint at step {step}; exiting", flush=True)
          break
  except NonFiniteLossError as e:
    run.checkpointer.wait()
    kept = run.checkpointer.all_steps()
    raise NonFiniteLossError(f"{e}; stopped without saving this state; the last good "
                             f"checkpoint is step {kept[-1] if kept else 'none'}") from None
  finally:
    progress.close()
    run.checkpointer.close()
    writer.close()
  return state, {"step": step, **seeds_lib.summarise(evaluators.merged_meta(run.evals))}


def _start(run: Run, stepper: stepper_lib.Stepper, workdir: str,
           on_event: Callable[[str, int], None]
           ) -> tuple[int, train_state_lib.TrainState, list[tuple[int, int]]]:
  """(first step, state, the calls to run): the newest checkpoint's, else step 0's initial
  state, built (a fresh run only) while the first call compiles."""
  restored = run.restore_latest()
  step = 0 if restored is None else restored[0]
  if jax.process_index() == 0:
    if restored is not None:
      print(f"resuming from the checkpoint at step {step} in {workdir}", flush=True)
    chosen = " (config.steps_per_call=0: chosen for the backend)" * (
        not run.config.steps_per_call)
    print(f"{run.steps_per_call} training step(s) per jitted call{chosen}", flush=True)
  plan = stepper.plan(step, run.config.num_train_steps)
  on_event("ready", step)

  def compile_first_call():
    if plan:  # (a finished run, resumed, trains no step)
      stepper.compile(run.state_spec, *plan[0])

  state = build_while_compiling(compile_first_call,
                                run.init_state if restored is None else lambda: restored[1])
  on_event("compiled", step)
  return step, state, plan


def _evaluate(run: Run, log: MetricsLog, writer: MetricsWriter, state: train_state_lib.TrainState,
              step: int, is_last: bool, record: dict[str, Any],
              on_event: Callable[[str, int], None]) -> None:
  """The evaluators due at ``step``, timed apart from training; their metrics go in ``record``
  (this step's, not yet written) and their pictures to the writer."""
  with log.pause("eval", state, record):
    on_event("eval", step)
    result = evaluators.run_due(run.evals, state, step, is_last)
    record.update(seeds_lib.summarise(result.metrics))
    writer.write_pictures(step, result.pictures)


def _make_save(run: Run, log: MetricsLog, hooks: Hooks
               ) -> Callable[[train_state_lib.TrainState, int], None]:
  """``save(state, step)``: checks the state is finite (a non-finite state never overwrites a
  good checkpoint) and checkpoints it with the evaluators' state, timed apart from training
  (in the next record: this step's is written)."""
  bad_parts = make_finite_check(run.mesh)

  def save(state: train_state_lib.TrainState, step: int) -> None:
    with log.pause("checkpoint", state):
      bad = bad_parts(state)
      if bad:
        raise NonFiniteLossError(f"step {step}: non-finite values in the state's "
                                 f"{', '.join(bad)}")
      run.checkpointer.save(step, state, evaluators.merged_meta(run.evals))
      if hooks.wait_for_saves:
        run.checkpointer.wait()
      hooks.on_event("saved", step)

  return save
