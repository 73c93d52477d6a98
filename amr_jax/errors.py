"""The project's error types, in a leaf module: every other module may raise them without
importing the module that defines the rules (``amr_jax.config`` re-exports them)."""


class ConfigError(ValueError):
  """A config field holds a value that is not allowed."""
