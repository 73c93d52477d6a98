"""Writes the small torch files that tests/test_torch_checkpoint.py reads without torch.

Runs in the torch venv (../shared/reference/README.md), never beside a JAX process:

  flock -x /tmp/torch_vs_jax.lock /tmp/torch-ref/bin/python \\
      experiments/parity/make_torch_files.py tests/fixtures/torch_files

Writes ``objects_zip.pt`` (torch >= 1.6's zip format) and ``objects_legacy.pt`` (the format of
torch 1.0-1.5, ``_use_new_zipfile_serialization=False``) holding the same object: tensors of
every dtype the reader takes, a view with a storage offset, a non-contiguous (transposed) view,
two views of one storage, a 0-d and an empty tensor, an ``nn.Parameter``, a ``torch.Size``, a
torch Adam ``state_dict`` after two steps, and nested containers (OrderedDict, dict, list,
tuple) with Python scalars and strings. ``expected.npz`` holds every tensor's values under its
path in the object (keys joined by '/'), as the test flattens what it reads.
"""
import collections
import os
import sys

import numpy as np
import torch


def make_object() -> dict:
  torch.manual_seed(0)
  base = torch.arange(20, dtype=torch.float32).reshape(4, 5) / 7
  shared = torch.randn(10)
  model = torch.nn.Linear(3, 2)
  adam = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.99), weight_decay=1e-5)
  for _ in range(2):
    adam.zero_grad()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    adam.step()
  return {
      "float32": torch.randn(3, 4),
      "float64": torch.randn(2, 3, dtype=torch.float64),
      "float16": torch.randn(5).half(),
      "int64": torch.arange(-3, 3, dtype=torch.int64),
      "int32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
      "uint8": torch.arange(250, 256, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "view_offset": base[1:3, 2:],  # storage offset 7, strides (5, 1)
      "transposed": base.t(),  # strides (1, 5)
      "shared_all": shared,
      "shared_tail": shared[4:].view(2, 3),
      "scalar": torch.tensor(2.5),
      "empty": torch.zeros(0, 3),
      "parameter": torch.nn.Parameter(torch.randn(2, 2)),
      "size": torch.Size([2, 3]),
      "adam": adam.state_dict(),
      "model": model.state_dict(),
      "nested": collections.OrderedDict([
          ("list", [1, 2.5, "text", (torch.ones(2), 3), None, True]),
          ("dict", {"a": {"b": torch.full((2,), 7.0)}, 4: "int key"}),
      ]),
  }


def flatten(obj, prefix: str = "") -> dict[str, np.ndarray]:
  """{path: values} of every tensor in ``obj`` (dict keys and sequence indices joined by '/')."""
  if isinstance(obj, torch.Tensor):
    return {prefix: obj.detach().numpy().copy()}
  items = obj.items() if isinstance(obj, dict) else (
      enumerate(obj) if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size) else ())
  out = {}
  for key, value in items:
    out.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
  return out


def main(out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  obj = make_object()
  torch.save(obj, os.path.join(out_dir, "objects_zip.pt"))
  torch.save(obj, os.path.join(out_dir, "objects_legacy.pt"), _use_new_zipfile_serialization=False)
  np.savez(os.path.join(out_dir, "expected.npz"), **flatten(obj))
  for name in sorted(os.listdir(out_dir)):
    print(name, os.path.getsize(os.path.join(out_dir, name)))


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  main(sys.argv[1])
