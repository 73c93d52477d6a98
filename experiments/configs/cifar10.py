"""CIFAR10: the paper's rows as named variants (see experiments/configs/paper_rows.py).

  python -m amr_jax.main --config=experiments/configs/cifar10.py:mixup --workdir=runs/cifar10

Rows (Table 3): dim=256 (default) or dim=1024; ae_gan, mixup (default), bern, mixup_k3,
mixup_k4, mixup_k6, mixup_k8, acai.
"""

import pathlib
import sys

if __package__ != "experiments.configs":  # loaded by path (--config=...) from any directory
  sys.path.append(str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root
from experiments.configs import paper_rows  # pylint: disable=g-import-not-at-top


def get_config(arg: str | None = None):
  return paper_rows.row_config("cifar10", arg, default_dim=256)


def paper_number(arg: str | None = None) -> tuple[float, float] | None:
  """The paper's (mean, std) probe accuracy in % for this row, or None."""
  return paper_rows.paper_number("cifar10", *paper_rows.parse(arg, 256))
