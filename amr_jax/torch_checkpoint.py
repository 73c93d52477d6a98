"""Reads a file written by ``torch.save`` without torch: tensors come back as numpy arrays.

Both formats torch has written: the zip archive of torch >= 1.6 and the legacy format of torch
1.0-1.5 (still written with ``_use_new_zipfile_serialization=False``): a magic number, a protocol
version and a system-info pickle, the object's pickle, the list of storage keys, then each
storage's raw bytes. In both, the object's pickle refers to storages by persistent id and
rebuilds tensors with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

The unpickler is restricted: it builds only the globals torch writes for tensors, parameters,
storages and containers (:data:`ALLOWED_GLOBALS`). A pickle naming any other global (which a
plain ``pickle.load`` would import and could call) raises :class:`DisallowedGlobalError`,
whose one-line message names it. What comes back: tensors and parameters as numpy arrays (their
own copies, with storage offsets and strides applied), ``torch.Size`` as a tuple,
``OrderedDict``, dicts, lists, tuples and Python scalars and strings as they are.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import tarfile
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = ["load", "TorchFileError", "DisallowedGlobalError", "ALLOWED_GLOBALS"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL_VERSION = 1001


class TorchFileError(pickle.UnpicklingError):
  """The file is not one ``torch.save`` wrote, or not in a way this reader takes."""


class DisallowedGlobalError(TorchFileError):
  """The pickle names a global that a torch checkpoint of tensors and containers never holds."""


def _storage_dtypes() -> dict[str, np.dtype]:
  dtypes = {"Float": np.float32, "Double": np.float64, "Half": np.float16, "Long": np.int64,
            "Int": np.int32, "Short": np.int16, "Char": np.int8, "Byte": np.uint8,
            "Bool": np.bool_}
  out = {}
  for name, dtype in dtypes.items():
    out[f"torch.{name}Storage"] = np.dtype(dtype)
    out[f"torch.cuda.{name}Storage"] = np.dtype(dtype)  # saved from a GPU: same bytes
  try:
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (installed with jax)
    out["torch.BFloat16Storage"] = out["torch.cuda.BFloat16Storage"] = np.dtype(ml_dtypes.bfloat16)
  except ImportError:
    pass
  return out


_STORAGE_DTYPES = _storage_dtypes()


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """A storage class named by the pickle (``torch.FloatStorage``): only its dtype matters."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass
class _Storage:
  """One storage: ``numel`` elements of ``dtype``; its bytes are filled in once read."""
  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass
class _StorageView:
  """A slice of another storage (legacy files: storages saved as views of a root storage)."""
  root: _Storage
  offset: int
  numel: int

  @property
  def dtype(self) -> np.dtype:
    return self.root.dtype


@dataclasses.dataclass
class _Tensor:
  """A tensor as the pickle describes it; made an array once every storage is read."""
  storage: _Storage | _StorageView
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _Tensor:
  del requires_grad, backward_hooks, metadata  # autograd state: nothing of the values
  return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride) -> _Tensor:
  return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> Any:
  del requires_grad, backward_hooks, state
  return data


def _size(dims=()) -> tuple[int, ...]:
  return tuple(dims)


def _allowed() -> dict[tuple[str, str], Any]:
  import codecs  # pylint: disable=g-import-not-at-top
  import collections  # pylint: disable=g-import-not-at-top
  allowed: dict[tuple[str, str], Any] = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("torch", "Size"): _size,
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("builtins", "set"): set,
      ("builtins", "frozenset"): frozenset,
      ("builtins", "slice"): slice,
      ("__builtin__", "set"): set,
      ("_codecs", "encode"): codecs.encode,  # how protocol 2 pickles bytes
  }
  for name, dtype in _STORAGE_DTYPES.items():
    module, _, cls = name.rpartition(".")
    allowed[(module, cls)] = _StorageType(name, dtype)
  return allowed


ALLOWED_GLOBALS = _allowed()
"""(module, name) -> what it is built as: the only globals :func:`load` lets a pickle name."""


class _Unpickler(pickle.Unpickler):
  """Builds only :data:`ALLOWED_GLOBALS`; storages come from ``persistent_load``."""

  def __init__(self, file: BinaryIO, path: str, persistent_load: Callable[[Any], Any]):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._persistent = persistent_load

  def find_class(self, module: str, name: str) -> Any:
    found = ALLOWED_GLOBALS.get((module, name))
    if found is None:
      raise DisallowedGlobalError(
          f"{self._path}: the pickle names the global {module}.{name}, which is not one torch "
          f"writes for tensors and containers; refusing to load it")
    return found

  def persistent_load(self, pid: Any) -> Any:
    return self._persistent(pid)


def _text(value: Any) -> str:
  return value.decode("ascii") if isinstance(value, bytes) else value


def _storage_type(value: Any, path: str) -> _StorageType:
  if not isinstance(value, _StorageType):
    raise TorchFileError(f"{path}: a storage of type {value!r}, not a typed storage")
  return value


def _materialise(obj: Any, path: str) -> Any:
  """``obj`` with every :class:`_Tensor` replaced by its numpy array (containers rebuilt)."""
  if isinstance(obj, _Tensor):
    return _array(obj, path)
  if isinstance(obj, dict):
    out = type(obj)() if type(obj) is not dict else {}
    for key, value in obj.items():
      out[key] = _materialise(value, path)
    return out
  if isinstance(obj, list):
    return [_materialise(value, path) for value in obj]
  if isinstance(obj, tuple):
    return tuple(_materialise(value, path) for value in obj)
  return obj


def _array(tensor: _Tensor, path: str) -> np.ndarray:
  storage = tensor.storage
  offset = tensor.offset
  if isinstance(storage, _StorageView):
    offset += storage.offset
    root, numel = storage.root, storage.offset + storage.numel
  else:
    root, numel = storage, storage.numel
  if root.data is None:
    raise TorchFileError(f"{path}: storage {root.key!r} has no data in the file")
  span = sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride)) + 1 if all(
      tensor.size) else 0
  if offset < 0 or any(s < 0 for s in tensor.stride) or offset + span > numel:
    raise TorchFileError(
        f"{path}: a tensor of size {tensor.size}, stride {tensor.stride}, offset {offset} does "
        f"not fit in its storage of {numel} elements")
  base = root.data[offset:]
  strides = tuple(s * base.itemsize for s in tensor.stride)
  view = np.lib.stride_tricks.as_strided(base, shape=tensor.size, strides=strides,
                                         writeable=False)
  return np.array(view, dtype=root.dtype.newbyteorder("="))


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise TorchFileError(f"{path}: a zip file without one data.pkl (not torch.save's)")
    prefix = pickles[0][:-len("data.pkl")]
    order = "<"
    if f"{prefix}byteorder" in archive.namelist():
      order = "<" if archive.read(f"{prefix}byteorder").strip() == b"little" else ">"
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
      if not (isinstance(pid, tuple) and _text(pid[0]) == "storage" and len(pid) == 5):
        raise TorchFileError(f"{path}: unknown persistent id {pid!r}")
      storage_type, key, _, numel = _storage_type(pid[1], path), _text(pid[2]), pid[3], pid[4]
      if key not in storages:
        dtype = storage_type.dtype.newbyteorder(order)
        raw = archive.read(f"{prefix}data/{key}")
        if len(raw) != numel * dtype.itemsize:
          raise TorchFileError(f"{path}: storage {key!r} holds {len(raw)} bytes, not "
                                       f"{numel} x {dtype.itemsize}")
        storages[key] = _Storage(key, dtype, numel, np.frombuffer(raw, dtype))
      return storages[key]

    obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, persistent_load).load()
  return _materialise(obj, path)


def _load_legacy(path: str, f: BinaryIO) -> Any:
  def plain() -> Any:
    return _Unpickler(f, path, lambda pid: _fail_pid(path, pid)).load()

  if plain() != _MAGIC_NUMBER:
    raise TorchFileError(f"{path}: not a torch.save file (no magic number)")
  if plain() != _PROTOCOL_VERSION:
    raise TorchFileError(f"{path}: torch serialization protocol other than "
                                 f"{_PROTOCOL_VERSION}")
  sys_info = plain()
  order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
  storages: dict[str, _Storage] = {}
  views: dict[str, _StorageView] = {}

  def persistent_load(pid: Any) -> _Storage | _StorageView:
    if not (isinstance(pid, tuple) and _text(pid[0]) == "storage" and len(pid) == 6):
      raise TorchFileError(f"{path}: unknown persistent id {pid!r}")
    storage_type, key, _, numel, view = _storage_type(pid[1], path), _text(pid[2]), *pid[3:]
    if key not in storages:
      storages[key] = _Storage(key, storage_type.dtype.newbyteorder(order), int(numel))
    if view is None:
      return storages[key]
    view_key, offset, view_numel = view
    views.setdefault(_text(view_key), _StorageView(storages[key], int(offset), int(view_numel)))
    return views[_text(view_key)]

  obj = _Unpickler(f, path, persistent_load).load()
  keys = plain()
  for key in keys:
    key = _text(key)
    if key not in storages:
      raise TorchFileError(f"{path}: data for storage {key!r}, which no tensor uses")
    storage = storages[key]
    header = f.read(8)
    if len(header) != 8:
      raise TorchFileError(f"{path}: the file ends before storage {key!r}")
    (numel,) = struct.unpack(order + "q", header)
    raw = f.read(numel * storage.dtype.itemsize)
    if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
      raise TorchFileError(f"{path}: storage {key!r} is truncated or has another size")
    storage.data = np.frombuffer(raw, storage.dtype)
  return _materialise(obj, path)


def _fail_pid(path: str, pid: Any) -> Any:
  raise TorchFileError(f"{path}: a persistent id {pid!r} outside the object's pickle")


def load(path: str | os.PathLike) -> Any:
  """The object ``torch.save`` wrote to ``path``, tensors as numpy arrays (see the module
  docstring). Raises DisallowedGlobalError for a pickle naming a global outside
  :data:`ALLOWED_GLOBALS`, TorchFileError (one line, naming the file) for a file that is not
  torch.save's."""
  path = os.fspath(path)
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    with open(path, "rb") as f:
      return _load_legacy(path, f)
  except (TorchFileError, OSError):
    raise
  except Exception as e:  # pickle raises many types on bytes that are not a pickle
    if tarfile.is_tarfile(path):
      raise TorchFileError(f"{path}: torch < 0.4's tar format is not supported (load and save "
                           f"it again with torch 1.x)") from None
    raise TorchFileError(f"{path}: not a torch.save file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
