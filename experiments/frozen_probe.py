"""Linear evaluation of saved codes (e.g. the authors' model's, from experiments/authors_codes.py).

  python -m experiments.frozen_probe --codes=A.npz,B.npz [--mnist_dir=../shared/data/mnist]

For each file (``train_codes``, ``train_labels``, ``valid_*``, ``test_*``) it fits the linear
classifier of amr_jax's ``frozen_probe`` evaluator (the same function) and prints one JSON line.
``--mnist_dir`` adds the same fit on raw MNIST pixels (amr_jax's 50k/10k split, 32x32), the
baseline any encoder's codes are measured against. amr_jax runs are evaluated from their
checkpoints with ``python -m amr_jax.evaluate --config=... --workdir=... --evals=frozen_probe``.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app
from absl import flags

from amr_jax.evaluators import frozen_probe

_CODES = flags.DEFINE_list("codes", [], ".npz files of codes and labels")
_MNIST_DIR = flags.DEFINE_string("mnist_dir", "", "also fit on raw MNIST pixels from this folder")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 50_000, "training examples fitted on")


def main(argv):
  del argv
  for path in _CODES.value:
    with np.load(path) as f:
      splits = [(f[f"{s}_codes"].reshape(len(f[f"{s}_labels"]), -1), f[f"{s}_labels"])
                for s in ("train", "valid", "test")]
    splits[0] = splits[0][0][:_NUM_TRAIN.value], splits[0][1][:_NUM_TRAIN.value]
    print(json.dumps({"codes": path, "dim": splits[0][0].shape[1],
                      **frozen_probe.fit_linear_probe(*splits)}), flush=True)
  if _MNIST_DIR.value:
    from amr_jax import data  # pylint: disable=g-import-not-at-top
    dataset = data.load("mnist", seed=0, image_size=32, manual_dir=_MNIST_DIR.value)
    flat = lambda s, n=None: (s.images[:n].reshape(len(s.images[:n]), -1), s.labels[:n])
    print(json.dumps({"codes": "mnist pixels", "dim": 32 * 32, **frozen_probe.fit_linear_probe(
        flat(dataset.train, _NUM_TRAIN.value), flat(dataset.valid), flat(dataset.test))}),
          flush=True)


if __name__ == "__main__":
  app.run(main)
