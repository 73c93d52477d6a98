"""Trains the authors' own MNIST dim-32 model briefly and saves it with their own ``save()``.

Runs in the torch venv (../shared/reference/README.md), never beside a JAX process:

  flock -x /tmp/torch_vs_jax.lock /tmp/torch-ref/bin/python \\
      experiments/parity/authors_mnist_checkpoint.py ../shared/reference ../shared/data/mnist \\
      SEED STEPS OUT_PREFIX

It runs ``torch_learning_curve.py`` unchanged (their data handling, seeds and hyperparameters; it
prints their probe's validation and test accuracy at the last step), then writes their
``TwoGAN.save`` of the trained model to ``OUT_PREFIX_zip.pt`` (torch's default format) and
``OUT_PREFIX_legacy.pt`` (torch 1.0-1.5's, as their 2019 checkpoints are). Evaluate either in
amr_jax without torch:

  python -m amr_jax.evaluate --config=experiments/configs/mnist.py:mixup,authors \\
      --config.data.manual_dir=../shared/data/mnist --workdir=DIR \\
      --authors_checkpoint=OUT_PREFIX_legacy.pt --evals=probe
"""
import os
import runpy
import sys


def main(reference: str, mnist_dir: str, seed: str, steps: str, out_prefix: str) -> None:
  import torch  # pylint: disable=g-import-not-at-top  (the torch venv)
  script = os.path.join(reference, "torch_learning_curve.py")
  sys.path.insert(0, os.path.abspath(reference))  # for its `import _authors`
  sys.argv = [script, mnist_dir, seed, steps, steps]
  gan = runpy.run_path(script, run_name="__main__")["gan"]
  gan.save(f"{out_prefix}_zip.pt", epoch=0)
  save = torch.save
  torch.save = lambda obj, f: save(obj, f, _use_new_zipfile_serialization=False)
  try:
    gan.save(f"{out_prefix}_legacy.pt", epoch=0)
  finally:
    torch.save = save
  print(f"wrote {out_prefix}_zip.pt, {out_prefix}_legacy.pt", flush=True)


if __name__ == "__main__":
  if len(sys.argv) != 6:
    sys.exit(__doc__)
  main(*sys.argv[1:])
