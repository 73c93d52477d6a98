"""Speed benchmarks of amr_jax: ``python -m benchmarks.run`` (see benchmarks/README.md)."""
