"""Data parallelism over every device of every host, with ``jax.jit`` and ``NamedSharding``.

This is the pmap design expressed the way current JAX recommends (``pmap`` is in maintenance
mode, itself re-implemented on ``jit`` + ``shard_map``): one mesh axis 'data' over all devices;
the train state replicated (``P()``), the global batch split along its first axis
(``P('data')``). XLA inserts the cross-device reductions a pmap version would write by hand as
``lax.pmean``, so the step code is the single-device code.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> bool:
  """Joins a multi-process run when one is described; returns whether it did.

  Arguments win over the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID. On a TPU pod slice or under SLURM/Open MPI, set JAX_DISTRIBUTED=auto (or pass
  coordinator_address='auto') to let ``jax.distributed.initialize()`` discover everything.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if os.environ.get("JAX_DISTRIBUTED", "") == "auto" or coordinator_address == "auto":
    jax.distributed.initialize()
    return True
  if not coordinator_address:
    return False
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "1"))
  process_id = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "0"))
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes). Auto axis types let
  the step permute the batch (``h[perm]``) across devices; XLA moves the data."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, *, seeds_axis: bool = False) -> NamedSharding:
  return NamedSharding(mesh, P(None, DATA_AXIS) if seeds_axis else P(DATA_AXIS))


def local_rows(global_batch_size: int) -> slice:
  """The rows of a global batch this process provides (processes hold equal, ordered parts)."""
  per_process = global_batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def global_batch(mesh: Mesh, local: dict[str, np.ndarray], *, seeds_axis: bool = False
                 ) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's rows (see ``local_rows``). With
  ``seeds_axis`` the arrays are (seeds, rows, ...) and the rows are the split axis."""
  sharding = batch_sharded(mesh, seeds_axis=seeds_axis)
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local.items()}


def replicate(mesh: Mesh, value: np.ndarray) -> jax.Array:
  """A host array that every process holds in full, as a replicated global array."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, replicated(mesh), lambda index: value[index])


def jit_data_parallel(fn: Callable, mesh: Mesh, *, batch_args: tuple[int, ...],
                      num_args: int, donate_state: bool = False,
                      seeds_axis: bool = False) -> Callable:
  """``jax.jit`` of ``fn`` with arguments in ``batch_args`` sharded over 'data' and everything
  else (the state, keys) and every output replicated."""
  in_shardings = tuple(batch_sharded(mesh, seeds_axis=seeds_axis) if i in batch_args
                       else replicated(mesh) for i in range(num_args))
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=replicated(mesh),
                 donate_argnums=(0,) if donate_state else ())


def with_sharding(spec: Any, sharding: jax.sharding.Sharding) -> Any:
  """``spec`` (e.g. from ``jax.eval_shape``) as ``jax.ShapeDtypeStruct`` leaves placed with
  ``sharding``: a target to restore a checkpoint into."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding,
                                                     weak_type=s.weak_type), spec)


def to_host(tree: Any) -> Any:
  """Fetches replicated arrays to numpy (valid in every process)."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array)
                      else np.asarray(a), tree)
