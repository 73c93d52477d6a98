"""KMNIST: the paper's rows as named variants (see experiments/configs/paper_rows.py).

  python -m amr_jax.main --config=experiments/configs/kmnist.py:mixup --workdir=runs/kmnist

Rows (Table 1, dim 32): ae_gan, mixup (default), bern, mixup_k3, acai.
"""

import pathlib
import sys

if __package__ != "experiments.configs":  # loaded by path (--config=...) from any directory
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root
from experiments.configs import paper_rows  # pylint: disable=g-import-not-at-top


def get_config(arg: str | None = None):
  return paper_rows.row_config("kmnist", arg, default_dim=32)


def paper_number(arg: str | None = None) -> tuple[float, float] | None:
  """The paper's (mean, std) probe accuracy in % for this row, or None."""
  return paper_rows.paper_number("kmnist", *paper_rows.parse(arg, 32))
