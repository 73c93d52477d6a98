"""MNIST: the paper's rows as named variants (see experiments/configs/paper_rows.py).

  python -m amr_jax.main --config=experiments/configs/mnist.py:mixup --workdir=runs/mnist

Rows (Table 1, dim 32): ae_gan, mixup (default), bern, mixup_k3, acai. TFDS downloads and
prepares MNIST on the first run; offline it builds from its four original files with
--config.data.manual_dir=DIR (README: "Getting the data").
"""

import pathlib
import sys

if __package__ != "experiments.configs":  # loaded by path (--config=...) from any directory
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root
from experiments.configs import paper_rows  # pylint: disable=g-import-not-at-top


def get_config(arg: str | None = None):
  return paper_rows.row_config("mnist", arg, default_dim=32)


def paper_number(arg: str | None = None) -> tuple[float, float] | None:
  """The paper's (mean, std) probe accuracy in % for this row, or None."""
  return paper_rows.paper_number("mnist", *paper_rows.parse(arg, 32))
