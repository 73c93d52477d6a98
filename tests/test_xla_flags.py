"""amr_jax.xla_flags: the default XLA:CPU flags, how they combine with the user's, and that the
step computes the same with and without them."""

import os
import subprocess
import sys

import numpy as np
import pytest

from amr_jax import xla_flags
from tests import children
from tests import tolerances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_defaults_are_added_to_the_users_flags():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert xla_flags.apply_defaults(environ) == [FLAG]
  assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {FLAG}"
  assert xla_flags.apply_defaults(environ) == []  # once is enough
  empty = {}
  xla_flags.apply_defaults(empty)
  assert empty["XLA_FLAGS"] == FLAG


def test_the_users_own_setting_and_the_switch_win():
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
  assert xla_flags.apply_defaults(dict(mine)) == []
  off = {xla_flags.SWITCH: "0"}
  assert xla_flags.apply_defaults(off) == [] and "XLA_FLAGS" not in off


def test_too_late_is_an_error_not_a_silent_no_op(monkeypatch):
  import jax
  jax.devices()  # the test process's backends exist
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv(xla_flags.SWITCH, raising=False)
  with pytest.raises(RuntimeError, match="before JAX creates its backends"):
    xla_flags.apply_defaults()


def _run(tmp_path, name, switch):
  out = tmp_path / f"{name}.npz"
  env = {k: v for k, v in children.env().items() if k != "XLA_FLAGS"}
  env[xla_flags.SWITCH] = switch
  result = subprocess.run([sys.executable, "-m", "tests.xla_flags_worker", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  data = dict(np.load(out))
  return str(data.pop("xla_flags")), data


@pytest.mark.equivalence
def test_the_step_computes_the_same_with_and_without_the_default_flags(tmp_path):
  flags_on, on = _run(tmp_path, "on", "1")
  flags_off, off = _run(tmp_path, "off", "0")
  assert flags_on == FLAG and flags_off == ""
  pick = lambda d, prefix: {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
  tolerances.assert_close(pick(on, "state"), pick(off, "state"))
  # Negative control: one step further fails the same check.
  tolerances.assert_differs(pick(on, "extra"), pick(off, "state"))
