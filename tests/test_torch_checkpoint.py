"""amr_jax.torch_checkpoint reads torch.save files without torch.

The files under tests/fixtures/torch_files were written by torch (2.x) with
experiments/parity/make_torch_files.py, in both formats; expected.npz holds every tensor's values.
"""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from amr_jax import torch_checkpoint

FILES = os.path.join(os.path.dirname(__file__), "fixtures", "torch_files")


def _flatten(obj, prefix=""):
  """{path: array} as make_torch_files.flatten writes them (torch.Size comes back a tuple of
  ints, which holds no array)."""
  if isinstance(obj, np.ndarray):
    return {prefix: obj}
  items = obj.items() if isinstance(obj, dict) else (
      enumerate(obj) if isinstance(obj, (list, tuple)) else ())
  out = {}
  for key, value in items:
    out.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
  return out


@pytest.mark.parametrize("name", ["objects_zip.pt", "objects_legacy.pt"])
def test_reads_what_torch_wrote(name):
  loaded = torch_checkpoint.load(os.path.join(FILES, name))
  expected = np.load(os.path.join(FILES, "expected.npz"))
  arrays = _flatten(loaded)
  assert set(arrays) == set(expected.files)
  for key in expected.files:
    assert arrays[key].dtype == expected[key].dtype, key
    assert arrays[key].shape == expected[key].shape, key
    np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
  # The views: an offset into, and a transpose of, one 4x5 storage; two views of another.
  np.testing.assert_array_equal(loaded["view_offset"], loaded["transposed"].T[1:3, 2:])
  np.testing.assert_array_equal(loaded["shared_tail"].ravel(), loaded["shared_all"][4:])
  assert loaded["scalar"].shape == () and loaded["empty"].shape == (0, 3)
  # Python objects as they were.
  assert loaded["size"] == (2, 3) and type(loaded["size"]) is tuple
  assert isinstance(loaded["nested"], collections.OrderedDict)
  assert list(loaded["nested"]) == ["list", "dict"]
  listed = loaded["nested"]["list"]
  assert listed[:3] == [1, 2.5, "text"] and listed[3][1] == 3 and listed[4:] == [None, True]
  assert loaded["nested"]["dict"][4] == "int key"
  # torch Adam's state_dict: parameters numbered, moments per parameter, step as a 0-d array.
  adam = loaded["adam"]
  assert adam["param_groups"][0]["params"] == [0, 1]
  assert adam["param_groups"][0]["betas"] == (0.5, 0.99)
  assert [int(adam["state"][i]["step"]) for i in (0, 1)] == [2, 2]
  assert adam["state"][0]["exp_avg"].shape == loaded["model"]["weight"].shape


def test_negative_control_values_are_compared():
  """The comparison above sees a change of one value (the transposed view read as stored)."""
  loaded = torch_checkpoint.load(os.path.join(FILES, "objects_zip.pt"))
  expected = np.load(os.path.join(FILES, "expected.npz"))
  assert not np.array_equal(loaded["transposed"].T, expected["transposed"])
  assert loaded["view_offset"].shape == expected["view_offset"].shape
  assert not np.array_equal(loaded["transposed"][:2, :3], expected["view_offset"])


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo unsafe",))


def _legacy_file(path, payload: bytes) -> None:
  with open(path, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      f.write(pickle.dumps(header, protocol=2))
    f.write(payload)
    f.write(pickle.dumps([], protocol=2))


@pytest.mark.parametrize("kind", ["legacy", "zip"])
def test_disallowed_global_fails_in_one_line(tmp_path, kind):
  payload = pickle.dumps({"weight": _Evil()}, protocol=2)
  path = str(tmp_path / f"evil_{kind}.pt")
  if kind == "legacy":
    _legacy_file(path, payload)
  else:
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("evil/data.pkl", payload)
  with pytest.raises(torch_checkpoint.DisallowedGlobalError) as e:
    torch_checkpoint.load(path)
  message = str(e.value)
  assert "\n" not in message
  assert f"{os.system.__module__}.system" in message


def test_not_a_torch_file_fails_in_one_line(tmp_path):
  path = tmp_path / "noise.pt"
  path.write_bytes(b"\x00\x01not a pickle at all")
  with pytest.raises(pickle.UnpicklingError) as e:
    torch_checkpoint.load(path)
  assert "\n" not in str(e.value) and "noise.pt" in str(e.value)
