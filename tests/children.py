"""What tests give the processes they start: conftest.py's JAX settings (XLA's optimisations off,
the tests' persistent compilation cache), so a child compiles as fast as the tests themselves."""

import os

# The tests' persistent compilation cache (conftest.py), shared with their children.
XLA_CACHE = os.path.expanduser(os.environ.get("AMR_TEST_XLA_CACHE", "~/.cache/amr_jax/test_xla"))


def env(**extra: str) -> dict[str, str]:
  """This process's environment with the tests' JAX settings, plus ``extra``."""
  return dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true", TF_CPP_MIN_LOG_LEVEL="3",
              JAX_COMPILATION_CACHE_DIR=XLA_CACHE,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", **extra)
