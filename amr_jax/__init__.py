"""Adversarial Mixup Resynthesis (Beckham et al., NeurIPS 2019) in JAX/Flax."""

import importlib.metadata

try:
  # setuptools-scm derives the installed version from git (pyproject.toml): tag, distance, commit.
  __version__ = importlib.metadata.version("amr_jax")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
  __version__ = "0+unknown"
