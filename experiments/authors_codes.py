"""Trains the authors' own model on real MNIST and saves its codes, for linear evaluation.

Runs in a Python with torch (see ../shared/reference/README.md), never beside a JAX process:

  /tmp/torch-ref/bin/python experiments/authors_codes.py ../shared/reference \\
      ../shared/data/mnist SEED STEPS OUT.npz

It runs ``torch_learning_curve.py`` unchanged (same data, seeds, hyperparameters and JSON lines
every 500 steps), then encodes the training, validation and test images with the trained encoder
exactly as that script's probe does, and writes ``train_codes``, ``train_labels``, ``valid_*``
and ``test_*`` to OUT.npz. ``python -m experiments.frozen_probe --codes=OUT.npz`` fits the same
linear evaluation on them as amr_jax's ``frozen_probe`` evaluator.
"""
import os
import runpy
import sys

import numpy as np


def main(reference: str, mnist_dir: str, seed: str, steps: str, out: str) -> None:
  import torch  # pylint: disable=g-import-not-at-top  (the torch venv)
  script = os.path.join(reference, "torch_learning_curve.py")
  sys.path.insert(0, os.path.abspath(reference))  # for its `import _authors`
  sys.argv = [script, mnist_dir, seed, steps, "500"]
  run = runpy.run_path(script, run_name="__main__")
  gan, code = run["gan"], run["code"]

  def encode(x):
    with torch.no_grad():
      return np.concatenate([gan.generator.encode(x[i:i + 500]).reshape(-1, code).numpy()
                             for i in range(0, len(x), 500)])

  splits = ("train", "valid", "test")
  np.savez(out, **{f"{name}_codes": encode(run[f"x_{name}"]) for name in splits},
           **{f"{name}_labels": np.asarray(run[f"y_{name}"]) for name in splits})
  print(f"wrote {out}", flush=True)


if __name__ == "__main__":
  if len(sys.argv) != 6:
    sys.exit(__doc__)
  main(*sys.argv[1:])
