"""README.md's tables of config fields and evaluator options, checked against the code so that
they cannot fall behind it."""

import re
from pathlib import Path

import pytest

from amr_jax import config as config_lib
from amr_jax.evaluators import common

README = Path(__file__).resolve().parents[1] / "README.md"


def config_fields(config, prefix: str = "") -> list[str]:
  """Dotted names of every leaf of a config; ``evals`` (a dict of entries) counts as one."""
  names = []
  for key, value in config.items():
    if key == "evals" or not hasattr(value, "items"):
      names.append(prefix + key)
    else:
      names.extend(config_fields(value, prefix + key + "."))
  return names


def table_rows(header: str) -> list[list[str]]:
  """The rows (cells) of the README table whose header line is ``header``."""
  text = README.read_text()
  assert text.count(header) == 1, f"README should hold exactly one table headed {header!r}"
  lines = text.split(header, 1)[1].lstrip("\n").splitlines()[1:]  # after the |---| line
  rows = []
  for line in lines:
    if not line.startswith("|"):
      break
    rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
  return rows


def backticked(cell: str) -> set[str]:
  return set(re.findall(r"`([^`]+)`", cell))


def test_the_field_table_names_every_field_of_base_config_and_no_other():
  documented = set().union(*(backticked(row[0]) for row in table_rows(
      "| field | meaning (default) |")))
  fields = set(config_fields(config_lib.base_config()))
  assert sorted(fields - documented) == [], "fields missing from README's field table"
  assert sorted(documented - fields) == [], "README's field table names fields that do not exist"


def test_the_evaluator_table_names_every_evaluator_and_its_options():
  rows = {next(iter(backticked(row[0]))): row for row in table_rows(
      "| `config.evals` entry | measures | default in |")}
  assert sorted(rows) == common.available()
  for name in common.available():
    options = set(common.evaluator_class(name, {}).OPTIONS)
    missing = sorted(options - backticked(rows[name][1]))
    assert not missing, f"README's row for evaluator {name!r} misses its options {missing}"


def test_the_check_sees_a_missing_field():
  """Negative control: a config with one more field fails the same comparison."""
  config = config_lib.base_config()
  config.data.new_field = 1
  documented = set().union(*(backticked(row[0]) for row in table_rows(
      "| field | meaning (default) |")))
  with pytest.raises(AssertionError):
    assert set(config_fields(config)) <= documented
