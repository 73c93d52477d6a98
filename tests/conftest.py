"""Test-wide JAX settings: small compile times and a persistent compilation cache."""

import os

import jax

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir",
                  os.path.expanduser(os.environ.get("AMR_TEST_XLA_CACHE", "~/.cache/amr_jax/test_xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
