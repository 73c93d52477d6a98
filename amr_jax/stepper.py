"""The training step, built and jitted: every seed's train step side by side, run in calls of one
step or ``config.steps_per_call`` (K) steps, with batches fed from the host or gathered on the
device from a training split placed there once (``config.data.placement``).

Either way the steps are the same: the batch of step ``s`` is ``batch_indices(seed, s, ...)`` of
the training split, and its key is ``fold_in(fold_in(seed's key, TRAIN_STREAM), s)``, so K steps
in one call end equal to K single steps, and device-gathered batches equal host-fed ones
(tested).

A call of K steps covers whole ``g_every`` cycles (K is a multiple of g_every): the scan's body is
one cycle, G's step followed by a scan over the g_every - 1 steps without G's update, so no
``lax.cond`` runs (slow on XLA:CPU; see ``train_step.make_train_step``). On XLA:CPU the steps are
unrolled instead (``config.steps_per_call_loop``; see :func:`resolve_loop`). A call starts at
one of G's steps and never runs across a logging, evaluation or checkpoint step; steps where a
whole call does not fit run one per call (:func:`plan_calls`). ``steps_per_call = 0`` lets
:func:`resolve_steps_per_call` choose K for the backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from amr_jax import config as config_lib
from amr_jax import data as data_lib
from amr_jax import networks as networks_lib
from amr_jax import parallel
from amr_jax import seeds as seeds_lib
from amr_jax import train_state as train_state_lib
from amr_jax import train_step as train_step_lib
from amr_jax.train_state import TrainState

SeededStep = Callable[[TrainState, dict[str, jax.Array], bool], tuple[TrainState, Any]]


def resolve_placement(placement: str, train: data_lib.Split) -> str:
  """'auto' -> 'device' on accelerators when the training split is an in-memory array (not
  rendered on demand like dSprites') that takes under a quarter of a device's memory; else
  'host'."""
  if placement != "auto":
    return placement
  if jax.default_backend() == "cpu" or not isinstance(train.images, np.ndarray):
    return "host"
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit", 0)
  size = train.images.nbytes + train.labels.nbytes + (
      0 if train.attributes is None else train.attributes.nbytes)
  return "device" if limit and size < limit // 4 else "host"


def resolve_loop(mode: str) -> str:
  """'auto' -> 'unroll' on CPU (XLA:CPU runs the step many times slower inside any while loop;
  see benchmarks/README.md), else 'scan'. An unrolled call compiles K copies of the step."""
  if mode == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "scan"
  return mode


def make_seeded_step(config: ml_collections.ConfigDict, nets: networks_lib.Networks,
                     optimizers: train_state_lib.Optimizers, seeds: seeds_lib.Seeds
                     ) -> SeededStep:
  """``seeded_step(state, batch, update_generator) -> (state, metrics)`` (not jitted): the
  train step of every seed side by side (``seeds.batching``), each with its key
  ``fold_in(fold_in(seed's key, TRAIN_STREAM), state.step)``."""
  step_fn = train_step_lib.make_train_step(config, nets, optimizers)

  def seeded_step(s, batch, update_generator):
    return seeds.per_seed(lambda s1, b1, rng: step_fn(
        s1, b1, jax.random.fold_in(jax.random.fold_in(rng, seeds_lib.TRAIN_STREAM), s1.step),
        update_generator))(s, batch, seeds.keys())

  return seeded_step


# Steps per call chosen when config.steps_per_call = 0. XLA:CPU unrolls a call (resolve_loop),
# so compiling it costs ~K times one step's compile (~30 s more at K = 10, mnist_dim32): K = 10
# ran the loop's calls ~1.45x faster than K = 1 there (benchmarks/results/steps_per_call_cpu.md)
# and pays for its compile only over runs of MIN_STEPS_PER_UNROLLED_STEP x K steps or more.
# Accelerators scan a call (one compiled step whatever K): K = 100 keeps dispatch off the
# critical path while a log line still ends every call.
CPU_STEPS_PER_CALL = 10
ACCELERATOR_STEPS_PER_CALL = 100
MIN_STEPS_PER_UNROLLED_STEP = 100


def resolve_steps_per_call(config: ml_collections.ConfigDict, *, backend: str | None = None,
                           seed_copies: int = 1) -> int:
  """``config.steps_per_call``, or for 0 the K this backend runs best: CPU_STEPS_PER_CALL steps
  of one seed per call on CPU (``seed_copies`` seeds unrolled side by side share it) when the
  run is long enough to pay for compiling them, else ACCELERATOR_STEPS_PER_CALL; rounded to
  whole G cycles and to at most the shortest of :func:`config.periods`. What is computed does
  not depend on K."""
  if config.steps_per_call:
    return config.steps_per_call
  backend = backend or jax.default_backend()
  g_every = config.g_every
  if backend == "cpu":
    target = CPU_STEPS_PER_CALL // seed_copies
  else:
    target = ACCELERATOR_STEPS_PER_CALL
  target = min(target, min(config_lib.periods(config)))
  k = target // g_every * g_every
  if k <= 1:
    return 1
  if backend == "cpu" and config.num_train_steps < MIN_STEPS_PER_UNROLLED_STEP * k:
    return 1
  return k


def plan_calls(start: int, stop: int, per_call: int, *, g_every: int = 1,
               periods: Sequence[int] = ()) -> list[tuple[int, int]]:
  """The calls that run steps ``start .. stop - 1``, as (first step, number of steps): calls of
  ``per_call`` steps from G's steps (multiples of ``g_every``) where one ends before the next
  multiple of any of ``periods`` (logging, evaluations, checkpoints act between calls), single
  steps elsewhere."""
  calls, step = [], start
  while step < stop:
    end = min([stop] + [(step // p + 1) * p for p in periods])
    n = per_call if step % g_every == 0 and step + per_call <= end else 1
    calls.append((step, n))
    step += n
  return calls


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CallMetrics:
  """A call's metrics, each stacked along the call's steps: ``first`` holds the first step of
  each cycle (cycles, ...), ``rest`` the g_every - 1 steps after it (cycles, g_every - 1, ...),
  or None when every step is a cycle of its own (one step per call, or g_every = 1)."""
  first: Any
  rest: Any = None

  def per_step(self) -> list[dict[str, Any]]:
    """One dict per step, in step order (read it from a host copy: it slices every leaf)."""
    out = []
    for c in range(jax.tree.leaves(self.first)[0].shape[0]):
      out.append(jax.tree.map(lambda a: a[c], self.first))
      if self.rest is not None:
        inner = jax.tree.leaves(self.rest)[0].shape[1]
        out.extend(jax.tree.map(lambda a: a[c, j], self.rest) for j in range(inner))
    return out


class _HostFeed:
  """Each call's batches gathered on the host (this process's rows) and sent with the call."""

  def __init__(self, train: data_lib.Split, fields: list[str], indices: Callable,
               batch_sharding: NamedSharding, mesh: jax.sharding.Mesh, batch_size: int):
    self._train, self._fields, self._indices = train, fields, indices
    self._rows = parallel.local_rows(batch_size)
    # A call's stacked inputs carry a leading steps axis before the batch's own axes.
    self.input_sharding = NamedSharding(mesh, P(None, *batch_sharding.spec))
    self.device_data, self.data_sharding = {}, parallel.replicated(mesh)  # (no leaves)

  def inputs(self, step: int, n: int) -> dict[str, jax.Array]:
    batches = [self._host_batch(s) for s in range(step, step + n)]
    local = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    return {k: jax.make_array_from_process_local_data(self.input_sharding, v)
            for k, v in local.items()}

  def _host_batch(self, step: int) -> dict[str, np.ndarray]:
    idx = self._indices(step)[..., self._rows]
    train = self._train
    return {"image": train.images[idx], "label": train.labels[idx],
            **({"attributes": train.attributes[idx]} if "attributes" in self._fields else {})}

  @staticmethod
  def gather(data, batch):
    del data
    return batch


class _DeviceFeed:
  """The training split placed on the devices once; a call gets its batches' indices and
  gathers the rows there."""

  def __init__(self, train: data_lib.Split, fields: list[str], indices: Callable,
               batch_sharding: NamedSharding, mesh: jax.sharding.Mesh):
    self._indices, self._batch_sharding, self._mesh = indices, batch_sharding, mesh
    self.input_sharding = parallel.replicated(mesh)
    # Sharded along its examples over the 'data' axis (each process supplies the rows its
    # devices hold); padded so that every device holds as many.
    num_examples = len(train.labels)
    padded = -(-num_examples // mesh.devices.size) * mesh.devices.size
    self.data_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))

    def place(values: np.ndarray) -> jax.Array:
      values = np.asarray(values)
      pad = np.zeros((padded - num_examples,) + values.shape[1:], values.dtype)
      whole = np.concatenate([values, pad])
      return jax.make_array_from_callback(whole.shape, self.data_sharding, lambda i: whole[i])

    split_field = {"image": "images", "label": "labels", "attributes": "attributes"}
    self.device_data = {name: place(getattr(train, split_field[name])) for name in fields}

  def inputs(self, step: int, n: int) -> jax.Array:
    return parallel.replicate(self._mesh, np.stack([self._indices(s)
                                                    for s in range(step, step + n)])
                              .astype(np.int32))

  def gather(self, data, idx):
    batch = {name: values[idx] for name, values in data.items()}
    return jax.lax.with_sharding_constraint(batch, self._batch_sharding)


class Stepper:
  """Runs the training steps in calls; see the module docstring.

  ``plan(start, stop)`` lists the calls; ``inputs(step, n)`` builds a call's inputs on the host
  (``prefetch(plan)`` builds them ahead, in a background thread); ``run(state, step, n, inputs)``
  runs a call and returns the state and its :class:`CallMetrics` (on the device).
  """

  def __init__(self, config: ml_collections.ConfigDict, train: data_lib.Split,
               seeded_step: SeededStep, mesh: jax.sharding.Mesh, seeds: seeds_lib.Seeds, *,
               placement: str, loop: str, steps_per_call: int):
    """``seeded_step(state, batch, update_generator)`` (seeds side by side already inside it);
    ``placement`` 'host' or 'device', ``loop`` 'scan' or 'unroll' and ``steps_per_call`` (K),
    all resolved."""
    self._seeded_step, self._mesh, self._loop = seeded_step, mesh, loop
    self._g_every, self._per_call = config.g_every, steps_per_call
    self._periods = config_lib.periods(config)
    fields = ["image", "label"] + (["attributes"] if config.supervised.enabled else [])
    batch_sharding = parallel.batch_sharded(mesh, seeds_axis=seeds.multi)
    num_examples = len(train.labels)

    def indices(step: int) -> np.ndarray:
      """([seeds,] batch) global indices of the examples in the batch of ``step``."""
      out = [data_lib.batch_indices(seed, step, num_examples, config.batch_size)
             for seed in seeds.seeds]
      return np.stack(out) if seeds.multi else out[0]

    self._feed = (_DeviceFeed(train, fields, indices, batch_sharding, mesh)
                  if placement == "device" else
                  _HostFeed(train, fields, indices, batch_sharding, mesh, config.batch_size))
    self._jitted: dict[tuple[int, bool], Callable] = {}

  @property
  def device_data(self) -> dict[str, jax.Array]:
    """The training split on the devices (empty unless placement is 'device')."""
    return self._feed.device_data

  def plan(self, start: int, stop: int) -> list[tuple[int, int]]:
    return plan_calls(start, stop, self._per_call, g_every=self._g_every, periods=self._periods)

  def inputs(self, step: int, n: int) -> Any:
    """The inputs of the call of steps ``step .. step + n - 1`` (batches, or their indices)."""
    return self._feed.inputs(step, n)

  def prefetch(self, plan: list[tuple[int, int]]) -> data_lib.Prefetcher:
    """The inputs of ``plan``'s calls, in order, built ahead in a background thread."""
    return data_lib.Prefetcher(lambda i: self.inputs(*plan[i]), 0, len(plan))

  def run(self, state: TrainState, step: int, n: int, inputs: Any
          ) -> tuple[TrainState, CallMetrics]:
    return self.jitted(step, n)(state, inputs, self.device_data)

  def compile(self, state_spec: Any, step: int, n: int) -> Any:
    """Compiles the call of ``n`` steps from ``step`` (JAX's cache keeps it for ``run``); returns
    the compiled executable."""
    return self.jitted(step, n).lower(state_spec, self.inputs(step, n),
                                      self.device_data).compile()

  def jitted(self, step: int, n: int) -> Callable:
    """The jitted call ``(state, inputs, device_data) -> (state, CallMetrics)`` of ``n`` steps
    from ``step`` (one per length and, for one step, per G flag)."""
    g_first = step % self._g_every == 0
    key = (n, g_first if n == 1 else True)
    if key not in self._jitted:
      self._jitted[key] = jax.jit(
          lambda s, xs, data: self._call(s, xs, data, n=n, g_first=key[1]),
          in_shardings=(parallel.replicated(self._mesh), self._feed.input_sharding,
                        self._feed.data_sharding),
          out_shardings=parallel.replicated(self._mesh), donate_argnums=(0,))
    return self._jitted[key]

  def _call(self, state, xs, data, *, n: int, g_first: bool):
    """n steps from a step whose G flag is ``g_first`` (n == 1, or whole cycles)."""
    step_of = lambda s, x, flag: self._seeded_step(s, self._feed.gather(data, x), flag)
    if n == 1:
      state, metrics = step_of(state, jax.tree.map(lambda a: a[0], xs), g_first)
      return state, CallMetrics(jax.tree.map(lambda a: a[None], metrics))
    if self._g_every == 1:
      state, metrics = self._scan(lambda s, x: step_of(s, x, True), state, xs)
      return state, CallMetrics(metrics)
    cycles = jax.tree.map(lambda a: a.reshape((n // self._g_every, self._g_every) + a.shape[1:]),
                          xs)

    def cycle(s, x):
      s, with_g = step_of(s, jax.tree.map(lambda a: a[0], x), True)
      s, without_g = self._scan(lambda s2, x2: step_of(s2, x2, False), s,
                                jax.tree.map(lambda a: a[1:], x))
      return s, (with_g, without_g)

    state, (with_g, without_g) = self._scan(cycle, state, cycles)
    return state, CallMetrics(with_g, without_g)

  def _scan(self, body, carry, xs):
    """``lax.scan``, or with loop='unroll' the same steps one after the other in the traced
    program (outputs stacked the same way)."""
    if self._loop == "scan":
      return jax.lax.scan(body, carry, xs)
    outs = []
    for i in range(jax.tree.leaves(xs)[0].shape[0]):
      carry, out = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
      outs.append(out)
    return carry, jax.tree.map(lambda *o: jnp.stack(o), *outs)


def make_stepper(config: ml_collections.ConfigDict, train: data_lib.Split,
                 nets: networks_lib.Networks, optimizers: train_state_lib.Optimizers,
                 mesh: jax.sharding.Mesh, seeds: seeds_lib.Seeds, *, placement: str,
                 loop: str, steps_per_call: int) -> Stepper:
  """The :class:`Stepper` of ``config``'s train step (:func:`make_seeded_step`)."""
  return Stepper(config, train, make_seeded_step(config, nets, optimizers, seeds), mesh, seeds,
                 placement=placement, loop=loop, steps_per_call=steps_per_call)
