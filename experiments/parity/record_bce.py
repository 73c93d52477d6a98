"""Records PyTorch's ``nn.BCELoss`` on ``torch.sigmoid(logits)``, values and gradients, as the
fixture of ``amr_jax.losses.bce_clamped`` (the authors' GAN loss). Runs in the torch venv:

  flock -x /tmp/torch_vs_jax.lock /tmp/torch-ref/bin/python experiments/parity/record_bce.py

It writes ``tests/fixtures/bce_clamped.npz`` (a few kB), which ``tests/test_authors_options.py``
reads without torch:

- ``logits`` (L,) and ``targets`` (T,), float32: the grid;
- ``loss_each`` (T, L): each pair's loss, ``BCELoss(reduction='none')``;
- ``grad_each`` (T, L): each pair's gradient with respect to its logit (the loss of one element);
- ``mean_logits`` (M,): the logits but those where torch's sigmoid is a float32 subnormal (XLA
  flushes it to 0; see the test);
- ``loss_mean`` (T,): ``BCELoss()`` (the mean) over the M ``mean_logits`` with one target;
- ``grad_mean`` (T, M): that mean's gradient with respect to them;
- ``torch_version``: the version that recorded it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

# Both sides of where float32 saturates: sigmoid rounds to 1 above ~16.6 and exp(-x) overflows
# below ~-88.7; p (1 - p) falls under BCELoss's 1e-12 below ~-27.6.
LOGITS = (-120.0, -100.0, -90.0, -88.0, -30.0, -28.0, -27.0, -17.0, -5.0, -1.0, -0.25, 0.0, 0.5,
          1.0, 5.0, 14.9, 16.0, 16.5, 17.0, 18.0, 30.0, 90.0)
TARGETS = (0.0, 1.0, 0.3)
SUBNORMAL = (-88.7, -87.3)  # logits whose sigmoid is a float32 subnormal in torch
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures",
                   "bce_clamped.npz")


def _loss_and_grad(logits: np.ndarray, target: float, reduction: str):
  x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
  t = torch.full_like(x, target)
  loss = torch.nn.BCELoss(reduction=reduction)(torch.sigmoid(x), t)
  loss.sum().backward()  # 'none': each element's own gradient (they do not interact)
  return loss.detach().numpy(), x.grad.numpy()


def main() -> None:
  logits = np.asarray(LOGITS, np.float32)
  mean_logits = logits[(logits <= SUBNORMAL[0]) | (logits >= SUBNORMAL[1])]
  each = [_loss_and_grad(logits, t, "none") for t in TARGETS]
  mean = [_loss_and_grad(mean_logits, t, "mean") for t in TARGETS]
  np.savez(os.path.normpath(OUT), logits=logits, targets=np.asarray(TARGETS, np.float32),
           mean_logits=mean_logits,
           loss_each=np.stack([l for l, _ in each]), grad_each=np.stack([g for _, g in each]),
           loss_mean=np.stack([l for l, _ in mean]), grad_mean=np.stack([g for _, g in mean]),
           torch_version=np.asarray(torch.__version__))
  print(f"wrote {os.path.normpath(OUT)} (torch {torch.__version__})")


if __name__ == "__main__":
  main()
