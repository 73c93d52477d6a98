"""MNIST: the paper's rows as named variants (see experiments/configs/paper_rows.py).

  python -m amr_jax.main --config=experiments/configs/mnist.py:mixup --workdir=runs/mnist

Rows (Table 1, dim 32): ae_gan, mixup (default), bern, mixup_k3, acai. Real MNIST builds offline
from its four original files: --config.data.manual_dir=DIR.
"""

from experiments.configs import paper_rows


def get_config(arg: str | None = None):
  return paper_rows.row_config("mnist", arg, default_dim=32)


def paper_number(arg: str | None = None) -> tuple[float, float] | None:
  """The paper's (mean, std) probe accuracy in % for this row, or None."""
  return paper_rows.paper_number("mnist", *paper_rows.parse(arg, 32))
