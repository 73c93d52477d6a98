"""What every benchmark shares: its configs and their data, the compilation-cache policy, and
a description of the machine (hardware, load average, peak memory).

Importing this module does not import JAX: the functions that need it import it themselves, so
that the parent process of ``benchmarks.run`` never creates JAX's backend (an accelerator would
be held twice).
"""

from __future__ import annotations

import os
import platform
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The paper's model sizes. 32x32 rows use a synthetic in-memory dataset with the real dataset's
# shapes and split sizes (no download; indexing it is the same host work as the real in-memory
# arrays); dSprites uses the real, procedurally rendered loader.
CONFIGS: dict[str, dict[str, Any]] = {
    "mnist_dim32": {"table": "mnist", "row": "mixup", "channels": 1, "classes": 10,
                    "splits": (50_000, 10_000, 10_000)},
    "svhn_dim256": {"table": "svhn", "row": "mixup,dim=256", "channels": 3, "classes": 10,
                    "splits": (65_932, 7_325, 26_032)},
    "cifar10_dim1024": {"table": "cifar10", "row": "mixup,dim=1024", "channels": 3,
                        "classes": 10, "splits": (40_000, 10_000, 10_000)},
    "dsprites": {"dsprites": "mixup"},
}
TINY_SPLITS = (512, 200, 200)
# Configs the authors' step timing (../shared/reference/torch_step_speed.py) also builds.
REFERENCE_CONFIGS = ("mnist_dim32", "svhn_dim256")
# Settings of amr_jax.main: the same persistent-cache policy as a real run.
MIN_CACHED_COMPILE_S = 0.5


def use_compilation_cache(cache_dir: str) -> None:
  """Points JAX's persistent compilation cache at ``cache_dir``, with a real run's policy."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)


def make_config(name: str, *, tiny: bool, light_eval: bool):
  """The config of a benchmark row (the paper's 'mixup' row at that size)."""
  spec = CONFIGS[name]
  if "dsprites" in spec:
    from experiments.configs import dsprites  # pylint: disable=g-import-not-at-top
    config = dsprites.get_config(spec["dsprites"])
  else:
    from experiments.configs import paper_rows  # pylint: disable=g-import-not-at-top
    config = paper_rows.row_config(spec["table"], spec["row"])
  if tiny:
    config.log_every = 20  # the default path's windows (benchmarks/loop.py): a smoke test
    config.batch_size = 8
    config.arch.width = 2
    config.eval_batch_size = 50
    config.num_pictures = 3
  if (tiny or light_eval) and "disentanglement" in config.evals:
    # The disentanglement metrics of dsprites.py:runlocal (the full ones render ~2M images).
    config.evals.disentanglement.update(num_votes=100, votes_batch=64, beta_vae_train=300,
                                        beta_vae_eval=150, beta_vae_batch=16)
  if tiny and "dsprites" in spec:
    config.data.num_train = TINY_SPLITS[0]
    config.data.num_valid = TINY_SPLITS[1]
  return config


def make_dataset(name: str, config, *, tiny: bool, seed: int = 0):
  """The dataset the loop reads: synthetic (32x32 rows) or the real dSprites loader."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from amr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  spec = CONFIGS[name]
  if "dsprites" in spec:
    return data_lib.load(
        config.data.name, seed=config.data.split_seed, image_size=config.data.image_size,
        num_valid=config.data.num_valid, num_train=config.data.num_train)
  rng = np.random.default_rng(seed)
  size, channels = config.data.image_size, spec["channels"]

  def split(n: int):
    images = rng.random((n, size, size, channels), dtype=np.float32)
    images *= 2.0
    images -= 1.0
    return data_lib.Split(images=images,
                          labels=rng.integers(0, spec["classes"], n).astype(np.int32))

  train, valid, test = TINY_SPLITS if tiny else spec["splits"]
  return data_lib.Dataset(name=config.data.name, train=split(train), valid=split(valid),
                          test=split(test), num_classes=spec["classes"], image_channels=channels)


def set_up(config, dataset):
  """``amr_jax.train.set_up`` of ``config`` without its evaluators, on ``dataset``: the loop's
  own networks, seeds, initial state and resolved settings (its workdir is never written)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from amr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.evals = ml_collections.ConfigDict()
  with tempfile.TemporaryDirectory(prefix="amr_bench_setup_") as workdir:
    return train_lib.set_up(config, workdir, dataset)


def round_to(value: int, multiple: int) -> int:
  return max(multiple, value // multiple * multiple)


def peak_memory() -> tuple[int, str]:
  import resource  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use (memory_stats)"
  # Linux reports ru_maxrss in KiB.
  return (int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
          "process peak RSS (getrusage ru_maxrss; the device has no memory_stats)")


def hardware() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  cpu_model = ""
  try:
    with open("/proc/cpuinfo") as f:
      cpu_model = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "")
  except OSError:
    pass
  return {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "cpu_model": cpu_model or platform.processor(),
      "jax_version": jax.__version__,
      "jaxlib_version": jaxlib.__version__,
      "python_version": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None
