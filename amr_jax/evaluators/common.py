"""The evaluator interface, the ``config.evals`` registry and helpers evaluators share.

An evaluator is built once per run from a :class:`Context` (config, dataset, networks, mesh,
seeds) and its options, then ``evaluate(state, step)`` returns an :class:`Evaluation`: metrics
with one value per seed, and pictures (uint8 arrays) that the loop writes as PNG files and
TensorBoard images. Evaluators run in every process (their jitted functions are collectives);
only process 0 writes what they return.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from amr_jax import data as data_lib
from amr_jax.errors import ConfigError
from amr_jax import networks as networks_lib
from amr_jax import parallel
from amr_jax import model as model_lib
from amr_jax.train_state import TrainState

# Fields of a config.evals entry that are not the evaluator's options.
_SCHEDULE_FIELDS = ("every", "module")


@dataclasses.dataclass(frozen=True)
class Context:
  """What every evaluator may use.

  Attributes:
    config: the experiment config.
    dataset: the loaded splits.
    nets: the networks (``Networks``); parameters come with the state at each evaluation.
    mesh: the device mesh; arrays an evaluator passes to jitted functions are sharded over it.
    seeds: the training seeds; with more than one, every state leaf has a leading seeds axis.
    per_seed: ``per_seed(fn, shared=())`` maps ``fn`` over that axis of its arguments except
      those in ``shared`` (identity for one seed).
    select: ``select(state, i)``: seed ``i``'s state alone (the state itself for one seed).
  """
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  nets: networks_lib.Networks
  mesh: Mesh
  seeds: tuple[int, ...]
  per_seed: Callable[..., Callable]
  select: Callable[[TrainState, int], TrainState]

  @property
  def num_seeds(self) -> int:
    return len(self.seeds)


@dataclasses.dataclass
class Evaluation:
  """One evaluator's results at one step.

  Attributes:
    metrics: name -> one value per seed (a list of length ``num_seeds``).
    pictures: name -> uint8 (H, W, C) picture, written as ``images/step_XXXXXXX_NAME.png``.
  """
  metrics: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
  pictures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class Evaluator:
  """Base class of evaluators; a module's ``Evaluator`` subclasses it.

  Class attributes:
    OPTIONS: option name -> default; a config.evals entry may set these (same type; integer
      options are counts, >= 1).
    DATASETS: the ``data.name`` values it works with (None: all).
  """
  OPTIONS: dict[str, Any] = {}
  DATASETS: tuple[str, ...] | None = None

  def __init__(self, context: Context, **options: Any):
    self.context = context
    self.options = options

  def evaluate(self, state: TrainState, step: int) -> Evaluation:
    raise NotImplementedError

  def meta(self) -> dict[str, Any]:
    """JSON-able state saved with each checkpoint (e.g. the best score so far)."""
    return {}

  def restore(self, meta: dict[str, Any]) -> None:
    """Takes back what ``meta`` returned (from a checkpoint's merged meta of all evaluators)."""
    del meta


@dataclasses.dataclass
class Scheduled:
  """An evaluator and its period in steps."""
  name: str
  every: int
  evaluator: Evaluator

  def due(self, step: int, is_last: bool) -> bool:
    return is_last or step % self.every == 0


def available() -> list[str]:
  """Names of the evaluator modules in this package."""
  package = importlib.import_module("amr_jax.evaluators")
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "common")


def _module_name(name: str, entry: ml_collections.ConfigDict) -> str:
  return entry.get("module", "") or f"amr_jax.evaluators.{name}"


def evaluator_class(name: str, entry: ml_collections.ConfigDict) -> type[Evaluator]:
  """The ``Evaluator`` class of config.evals entry ``name``; raises ConfigError if none."""
  module_name = _module_name(name, entry)
  try:
    spec = None if name == "common" else importlib.util.find_spec(module_name)
  except ModuleNotFoundError:  # a parent package is missing
    spec = None
  if spec is None:
    hint = (f"one of {', '.join(available())}, or an entry with module='package.module'"
            if not entry.get("module", "") else "an importable module")
    raise ConfigError(f"config.evals.{name}: no evaluator module {module_name!r}; allowed: {hint}")
  cls = getattr(importlib.import_module(module_name), "Evaluator", None)
  if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
    raise ConfigError(f"config.evals.{name}: module {module_name!r} defines no Evaluator "
                      "class (a subclass of amr_jax.evaluators.common.Evaluator)")
  return cls


def period(config: ml_collections.ConfigDict, entry: ml_collections.ConfigDict) -> int:
  return entry.get("every", 0) or config.eval_every


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks config.evals: known evaluators, periods, datasets and options (imports each
  evaluator's module, compiles nothing). Raises ConfigError with one line."""
  evals = config.get("evals")
  if not isinstance(evals, ml_collections.ConfigDict):
    raise ConfigError(f"config.evals={evals!r} is not allowed; allowed: a ConfigDict of "
                      "evaluator entries, e.g. {'probe': {'every': 0}}")
  for name, entry in evals.items():
    if not isinstance(entry, ml_collections.ConfigDict):
      raise ConfigError(f"config.evals.{name}={entry!r} is not allowed; allowed: a dict with "
                     "'every' (steps; 0 = config.eval_every) and the evaluator's options")
    if not isinstance(entry.get("module", ""), str):
      raise ConfigError(f"config.evals.{name}.module={entry.module!r} is not allowed; allowed: a "
                        "module path such as 'my_package.my_metric'")
    cls = evaluator_class(name, entry)
    every = entry.get("every", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
      raise ConfigError(f"config.evals.{name}.every={every!r} is not allowed; allowed: an "
                     "integer >= 0 (0 = config.eval_every)")
    if cls.DATASETS is not None and config.data.name not in cls.DATASETS:
      raise ConfigError(f"config.evals.{name} is not allowed with data.name={config.data.name!r}; "
                     f"allowed: data.name in {cls.DATASETS}")
    for option, value in entry.items():
      if option in _SCHEDULE_FIELDS:
        continue
      if option not in cls.OPTIONS:
        raise ConfigError(f"config.evals.{name}.{option} is not an option of this evaluator; "
                       f"allowed: {', '.join(sorted(cls.OPTIONS)) or 'none'}, every, module")
      default = cls.OPTIONS[option]
      if type(value) is not type(default) or (isinstance(default, int) and value < 1):
        what = "an integer >= 1" if isinstance(default, int) else type(default).__name__
        raise ConfigError(f"config.evals.{name}.{option}={value!r} is not allowed; allowed: {what}")


def build(context: Context) -> list[Scheduled]:
  """Every evaluator config.evals names, built once, in the config's order."""
  out = []
  for name, entry in context.config.evals.items():
    cls = evaluator_class(name, entry)
    options = {**cls.OPTIONS, **{k: v for k, v in entry.items() if k not in _SCHEDULE_FIELDS}}
    out.append(Scheduled(name, period(context.config, entry), cls(context, **options)))
  return out


def run_due(scheduled: list[Scheduled], state: TrainState, step: int,
            is_last: bool) -> Evaluation:
  """Runs the evaluators due at ``step`` and merges their results (names must not clash)."""
  merged = Evaluation()
  for item in scheduled:
    if not item.due(step, is_last):
      continue
    result = item.evaluator.evaluate(state, step)
    for kind in ("metrics", "pictures"):
      into, new = getattr(merged, kind), getattr(result, kind)
      clash = sorted(set(into) & set(new))
      if clash:
        raise ValueError(f"evaluator {item.name!r} returned {kind} {clash} that another "
                         "evaluator returned too")
      into.update(new)
  return merged


def merged_meta(scheduled: list[Scheduled]) -> dict[str, Any]:
  return {k: v for item in scheduled for k, v in item.evaluator.meta().items()}


def any_due(scheduled: list[Scheduled], step: int, is_last: bool) -> bool:
  return any(item.due(step, is_last) for item in scheduled)


# ----------------------------------------------------------------------------------------------
# Helpers: whole splits in sharded batches, codes of many images.


def padded_batches(mesh: Mesh, arrays: dict[str, np.ndarray],
                   batch_size: int) -> Iterator[dict[str, jax.Array]]:
  """Global batches covering ``arrays`` (each indexed by example) in order, the last one padded
  by repeating the final example; each carries 'weight' (1, or 0 on padding). Every process
  supplies only its own rows, so this works for any number of devices and processes."""
  total = len(next(iter(arrays.values())))
  rows = parallel.local_rows(batch_size)
  for start in range(0, total, batch_size):
    positions = np.arange(start, start + batch_size)
    weights = (positions < total).astype(np.float32)
    positions = np.minimum(positions, total - 1)[rows]
    local = {name: values[positions] for name, values in arrays.items()}
    yield parallel.global_batch(mesh, {**local, "weight": weights[rows]})


def make_encode(context: Context) -> Callable:
  """Jitted ``encode(state, images) -> codes`` of one seed's state (no seeds axis), sharded like
  training, for :func:`encode_all`."""
  nets, config = context.nets, context.config
  return parallel.jit_data_parallel(
      lambda s, x: model_lib.encode(nets, config, s.generator["encoder"], x),
      context.mesh, batch_args=(1,), num_args=2)


def encode_all(encode: Callable, state: TrainState, mesh: Mesh, images: np.ndarray,
               batch_size: int) -> np.ndarray:
  """Codes (N, D) of every image (N, ...), flattened; ``encode`` is a jitted
  ``encode(state, images) -> codes`` with replicated outputs."""
  codes = [parallel.to_host(encode(state, batch["image"]))
           for batch in padded_batches(mesh, {"image": images}, batch_size)]
  return np.concatenate(codes)[:len(images)].reshape(len(images), -1)
