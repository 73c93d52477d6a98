"""XLA:CPU flags amr_jax sets by default: they make its train step faster on CPU hosts.

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` takes single convolutions out
of XLA:CPU's YNNPACK fusions, so XLA's own convolution code runs them: measured 1.3-1.5x
images/s on the MNIST and SVHN steps (benchmarks/README.md), results within float32 rounding of
the default path (tests/test_xla_flags.py). It only changes code XLA compiles for the CPU; an
accelerator's code is untouched.

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, so :func:`apply_defaults` must
run before anything asks for a device (``amr_jax.main`` calls it first thing). A flag the user
already set in ``XLA_FLAGS`` is kept as they set it; ``AMR_JAX_DEFAULT_XLA_FLAGS=0`` adds none.
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping

DEFAULT_CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
SWITCH = "AMR_JAX_DEFAULT_XLA_FLAGS"


def apply_defaults(environ: MutableMapping[str, str] | None = None) -> list[str]:
  """Adds DEFAULT_CPU_FLAGS to ``XLA_FLAGS`` (the user's own settings win); returns those added.

  Raises RuntimeError when JAX's backends already exist (the flags would silently do nothing).
  """
  environ = os.environ if environ is None else environ  # another mapping: e.g. a child's env
  if environ.get(SWITCH, "1") == "0":
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in DEFAULT_CPU_FLAGS.items()
           if not re.search(rf"--{re.escape(name)}(=|\s|$)", current)]
  if not added:
    return []
  if environ is not os.environ:  # a copy for a child process: JAX's state does not matter
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise RuntimeError(f"amr_jax.xla_flags.apply_defaults() must run before JAX creates its "
                       f"backends (XLA reads XLA_FLAGS once); set {SWITCH}=0 to skip it")
  environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
