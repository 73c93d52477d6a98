"""How the loop dispatches training steps: one per jitted call, or ``config.steps_per_call`` (K)
per call with ``lax.scan``; batches fed from the host, or gathered on the device from a training
split placed there once (``config.data.placement``).

Either way the steps are the same: the batch of step ``s`` is ``batch_indices(seed, s, ...)`` of
the training split, and its key is ``fold_in(seed's stream, s)``, so K steps in one call end
equal to K single steps, and device-gathered batches equal host-fed ones (tested).

A call of K steps covers whole ``g_every`` cycles (K is a multiple of g_every): the scan's body is
one cycle, G's step followed by a scan over the g_every - 1 steps without G's update, so no
``lax.cond`` runs (XLA:CPU ran it 3x slower; see ``train_step.make_train_step``). On XLA:CPU the
steps are unrolled instead (``config.steps_per_call_loop``; see :func:`resolve_loop`). Steps not
aligned to K (a run resumed from another K's checkpoint, or a last partial call) run one per call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from amr_jax import data as data_lib
from amr_jax import parallel
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
  """'auto' -> 'unroll' on CPU, else 'scan'. Measured on XLA:CPU (jax 0.10.2, mnist dim 32,
  batch 64, G every step, 2 vCPUs): the train step inside any XLA while loop (``lax.scan``,
  ``fori_loop``) ran at 12.6-14.0 s per step, against 0.37 s for the same two steps one after
  the other in the traced program; an unrolled call compiles K times the step's code."""
  if mode == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "scan"
  return mode


@dataclasses.dataclass
class Stepper:
  """Runs the training steps in calls; see the module docstring.

  Attributes:
    plan: ``plan(start, stop)``: the calls, as (first step, number of steps).
    inputs: ``inputs(step, n)``: the call's inputs (batches, or batch indices), built on the
      host; a prefetcher may build them ahead.
    run: ``run(state, step, n, inputs) -> (state, metrics)``.
    compile: ``compile(state_spec, step, n)``: compiles that call (cached by JAX afterwards).
    unstack: ``unstack(n, host_metrics)``: a call's metrics (on the host) as one dict per step.
  """
  plan: Callable[[int, int], list[tuple[int, int]]]
  inputs: Callable[[int, int], Any]
  run: Callable[[TrainState, int, int, Any], tuple[TrainState, Any]]
  compile: Callable[[Any, int, int], None]
  unstack: Callable[[int, Any], list[dict[str, np.ndarray]]]


def make_stepper(config: ml_collections.ConfigDict, train: data_lib.Split,
                 seeded_step: SeededStep, mesh: jax.sharding.Mesh, placement: str) -> Stepper:
  """A :class:`Stepper` for ``seeded_step(state, batch, update_generator)`` (seeds side by side
  already inside it) with K = ``config.steps_per_call`` and ``placement`` 'host' or 'device'."""
  seeds = [config.seed + i for i in range(config.num_seeds)]
  multi = len(seeds) > 1
  g_every, per_call = config.g_every, config.steps_per_call
  loop = resolve_loop(config.steps_per_call_loop)
  num_examples = len(train.labels)
  fields = ["image", "label"] + (["attributes"] if config.supervised.enabled else [])
  rows = parallel.local_rows(config.batch_size)
  batch_sharding = parallel.batch_sharded(mesh, seeds_axis=multi)
  # A call's stacked inputs carry a leading steps axis before the batch's own axes.
  stacked_sharding = NamedSharding(mesh, P(None, *batch_sharding.spec))

  def indices(step: int) -> np.ndarray:
    """([seeds,] batch) global indices of the examples in the batch of ``step``."""
    out = [data_lib.batch_indices(seed, step, num_examples, config.batch_size) for seed in seeds]
    return np.stack(out) if multi else out[0]

  def host_batch(step: int) -> dict[str, np.ndarray]:
    """This process's rows of the batch of ``step``."""
    idx = indices(step)[..., rows]
    return {"image": train.images[idx], "label": train.labels[idx],
            **({"attributes": train.attributes[idx]} if "attributes" in fields else {})}

  def plan(start: int, stop: int) -> list[tuple[int, int]]:
    calls, step = [], start
    while step < stop:
      n = per_call if step % per_call == 0 and step + per_call <= stop else 1
      calls.append((step, n))
      step += n
    return calls

  if placement == "device":
    # The split placed once, sharded along its examples over the 'data' axis (each process
    # supplies the rows its devices hold); padded so that every device holds as many.
    num_devices = mesh.devices.size
    padded = -(-num_examples // num_devices) * num_devices
    data_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))

    def place(values: np.ndarray) -> jax.Array:
      values = np.asarray(values)
      pad = np.zeros((padded - num_examples,) + values.shape[1:], values.dtype)
      whole = np.concatenate([values, pad])
      return jax.make_array_from_callback(whole.shape, data_sharding, lambda i: whole[i])

    split_field = {"image": "images", "label": "labels", "attributes": "attributes"}
    device_data = {name: place(getattr(train, split_field[name])) for name in fields}

    def gather(data, idx):
      batch = {name: values[idx] for name, values in data.items()}
      return jax.lax.with_sharding_constraint(batch, batch_sharding)

    def inputs(step: int, n: int) -> jax.Array:
      return parallel.replicate(mesh, np.stack([indices(s) for s in range(step, step + n)])
                                .astype(np.int32))
  else:
    device_data, data_sharding = {}, parallel.replicated(mesh)  # (no leaves)

    def gather(data, batch):
      del data
      return batch

    def inputs(step: int, n: int) -> dict[str, jax.Array]:
      batches = [host_batch(s) for s in range(step, step + n)]
      local = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
      return {k: jax.make_array_from_process_local_data(stacked_sharding, v)
              for k, v in local.items()}

  def call(state, xs, data, *, n: int, g_first: bool):
    """n steps from a step whose G flag is ``g_first`` (n == 1, or whole cycles)."""
    step_of = lambda s, x, flag: seeded_step(s, gather(data, x), flag)
    if n == 1:
      state, metrics = step_of(state, jax.tree.map(lambda a: a[0], xs), g_first)
      return state, jax.tree.map(lambda a: a[None], metrics)
    if g_every == 1:
      return scan(lambda s, x: step_of(s, x, True), state, xs)
    cycles = jax.tree.map(lambda a: a.reshape((n // g_every, g_every) + a.shape[1:]), xs)

    def cycle(s, x):
      s, with_g = step_of(s, jax.tree.map(lambda a: a[0], x), True)
      s, without_g = scan(lambda s2, x2: step_of(s2, x2, False), s,
                          jax.tree.map(lambda a: a[1:], x))
      return s, (with_g, without_g)

    return scan(cycle, state, cycles)

  def scan(body, carry, xs):
    """``lax.scan``, or with loop='unroll' the same steps one after the other in the traced
    program (outputs stacked the same way)."""
    if loop == "scan":
      return jax.lax.scan(body, carry, xs)
    outs = []
    for i in range(jax.tree.leaves(xs)[0].shape[0]):
      carry, out = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
      outs.append(out)
    return carry, jax.tree.map(lambda *o: jnp.stack(o), *outs)

  input_sharding = parallel.replicated(mesh) if placement == "device" else stacked_sharding
  jitted = {}

  def jitted_call(n: int, g_first: bool):
    key = (n, g_first if n == 1 else True)
    if key not in jitted:
      jitted[key] = jax.jit(
          lambda s, xs, data: call(s, xs, data, n=n, g_first=key[1]),
          in_shardings=(parallel.replicated(mesh), input_sharding, data_sharding),
          out_shardings=parallel.replicated(mesh), donate_argnums=(0,))
    return jitted[key]

  def run(state, step, n, xs):
    return jitted_call(n, step % g_every == 0)(state, xs, device_data)

  def compile_call(state_spec, step, n):
    jitted_call(n, step % g_every == 0).lower(state_spec, inputs(step, n), device_data).compile()

  def unstack(n: int, metrics) -> list[dict[str, np.ndarray]]:
    if n == 1 or g_every == 1:
      return [jax.tree.map(lambda a: a[i], metrics) for i in range(n)]
    with_g, without_g = metrics
    out = []
    for c in range(n // g_every):
      out.append(jax.tree.map(lambda a: a[c], with_g))
      out.extend(jax.tree.map(lambda a: a[c, j], without_g) for j in range(g_every - 1))
    return out

  return Stepper(plan=plan, inputs=inputs, run=run, compile=compile_call, unstack=unstack)
