"""Test-wide JAX settings (small compile times, a persistent compilation cache) and fixtures."""

import jax
import pytest

from tests import children

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir", children.XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def mock_tfds(monkeypatch):
  """Yields a context manager: TFDS with `num_examples` random examples in every split."""
  from amr_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  tfds = tfds_source.import_tfds()
  # mock_data replaces reading, but `is_prepared` still looks for files in the (mocked,
  # nonexistent) data_dir; pretend they are there so `load` reads instead of building.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  # mock_data's batched read is broken in tfds 4.9.10 (it sets `__getitems__` on a MagicMock
  # instance, so it is called without `self`: "_getitems() missing ... 'record_keys'"); read
  # the mocked records one at a time instead.
  from tensorflow_datasets.core.data_sources import base
  monkeypatch.setattr(base.BaseDataSource, "__getitems__",
                      lambda self, keys: [self[k] for k in keys])
  return lambda n: tfds.testing.mock_data(num_examples=n)


@pytest.fixture
def config_error():
  """``config_error(edit, get=tiny.get_config)``: the message of the ConfigError that
  ``config.validate`` raises for ``get()`` changed by ``edit(config)``, checked to be one line."""
  from amr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top

  def error(edit, get=tiny.get_config) -> str:
    config = get()
    edit(config)
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(config, check_data=False)
    assert "\n" not in str(e.value)
    return str(e.value)

  return error
