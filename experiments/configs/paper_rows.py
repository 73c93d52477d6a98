"""The rows of the paper's Tables 1-3: method, mixer, k, latent size, lamb and training budget per
dataset, with the paper's numbers (probe accuracy %, mean and std over 3 runs); Table 4 is
``dsprites.py``.

Budgets are the authors' (:data:`EPOCHS`): the ``--epochs`` of each row's launch script in their
repository (christopher-beckham/amr, ``exps/<table dir>/<script>.sh``), epochs over the training
split at batch 64, each epoch ``ceil(N / 64)`` iterations as their DataLoader makes them (the
last batch partial). Their jobs resumed on a cluster with time limits, so these are upper bounds
on what the paper's runs trained.

A dataset config's argument names a row: ``--config=experiments/configs/svhn.py:mixup_k3``, with
options after a comma: ``dim=256`` (Table 3), ``train=1000`` (Table 2's SVHN ablation),
``authors`` (the authors' PyTorch model: ``amr_jax.config.AUTHORS_MODEL``) or ``authors_exact``
(their model and their iteration: D called once per loss term, their GAN loss;
``amr_jax.config.AUTHORS_EXACT``; on the ``acai`` row also their ACAI, ``acai.variant=
'amr_authors'`` with ``acai.advweight=1`` and ``g_every=5``).
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from amr_jax.config import AUTHORS_EXACT, AUTHORS_MODEL, base_config, set_field

# method -> (model, mixer, k)
METHODS = {
    "ae_gan": ("ae_gan", "mixup", 2),
    "mixup": ("amr", "mixup", 2),
    "bern": ("amr", "bernoulli", 2),
    "mixup_k3": ("amr", "mixup", 3),
    "mixup_k4": ("amr", "mixup", 4),
    "mixup_k6": ("amr", "mixup", 6),
    "mixup_k8": ("amr", "mixup", 8),
    "acai": ("acai", "mixup", 2),
}

# (dataset, dim, train size or None) -> {method: (lamb, paper mean, paper std)}
TABLES = {
    # Table 1: dim 32.
    ("mnist", 32, None): {"ae_gan": (5, 97.52, 0.29), "mixup": (10, 98.01, 0.10),
                          "bern": (10, 97.76, 0.58), "mixup_k3": (20, 97.61, 0.15),
                          "acai": (2, 98.66, 0.36)},
    ("kmnist", 32, None): {"ae_gan": (10, 76.18, 1.79), "mixup": (10, 80.39, 3.11),
                           "bern": (10, 81.54, 3.46), "mixup_k3": (10, 77.20, 0.43),
                           "acai": (10, 84.67, 1.16)},
    ("svhn", 32, None): {"ae_gan": (5, 37.01, 2.22), "mixup": (10, 43.98, 3.05),
                         "bern": (10, 38.31, 2.68), "mixup_k3": (10, 47.34, 3.79),
                         "acai": (2, 34.74, 1.12)},
    # Table 2: SVHN with 1k / 5k / 10k / 20k training examples, dim 32.
    ("svhn", 32, 1000): {"ae_gan": (10, 22.71, 0.73), "mixup": (10, 21.89, 0.19),
                         "bern": (20, 22.59, 1.31), "mixup_k3": (10, 22.96, 0.69),
                         "acai": (10, 24.15, 1.65)},
    ("svhn", 32, 5000): {"ae_gan": (10, 25.35, 0.44), "mixup": (20, 25.41, 1.15),
                         "bern": (20, 26.07, 1.87), "mixup_k3": (10, 29.92, 3.37),
                         "acai": (10, 29.58, 1.08)},
    ("svhn", 32, 10000): {"ae_gan": (10, 26.18, 0.81), "mixup": (10, 30.87, 0.74),
                          "bern": (10, 30.12, 2.37), "mixup_k3": (10, 31.87, 0.68),
                          "acai": (2, 29.56, 0.97)},
    ("svhn", 32, 20000): {"ae_gan": (20, 29.21, 1.01), "mixup": (10, 36.27, 3.76),
                          "bern": (10, 35.98, 0.56), "mixup_k3": (10, 37.04, 2.32),
                          "acai": (5, 31.23, 0.31)},
    # Table 3: dim 256 and 1024.
    ("svhn", 256, None): {"ae_gan": (5, 59.00, 0.12), "mixup": (5, 71.51, 1.35),
                          "bern": (10, 58.64, 2.18), "mixup_k3": (5, 73.33, 3.23),
                          "mixup_k4": (5, 74.69, 1.11), "mixup_k6": (5, 73.85, 0.84),
                          "mixup_k8": (5, 75.71, 1.29), "acai": (2, 68.64, 1.50)},
    ("cifar10", 256, None): {"ae_gan": (50, 53.08, 0.28), "mixup": (50, 54.24, 0.42),
                             "bern": (50, 52.40, 0.51), "mixup_k3": (50, 54.94, 0.37),
                             "mixup_k4": (50, 54.68, 0.33), "mixup_k6": (50, 52.95, 0.92),
                             "mixup_k8": (50, 53.07, 1.04), "acai": (20, 50.06, 1.33)},
    ("cifar10", 1024, None): {"ae_gan": (50, 59.93, 0.60), "mixup": (50, 60.80, 0.79),
                              "bern": (50, 59.81, 0.56), "mixup_k3": (50, 61.68, 0.67),
                              "mixup_k4": (50, 61.72, 0.20), "mixup_k6": (50, 60.34, 0.82),
                              "mixup_k8": (50, 59.75, 1.04), "acai": (20, 57.42, 1.29)},
}

# (dataset, dim, train size or None) -> {method: (epochs, the authors' launch script)}. The
# script of a row is the one with its table's directory, method and lamb (baseline = ae_gan,
# mixupfm2 = bern, gan3f = mixup_k3, ganXf = mixup_kX, acaif3 = acai). kmnist's acaif3_lamb2.sh
# and acaif3_lamb10.sh pass --lamb=10 and --lamb=2: the row (lamb 10) cites the one with --lamb=10.
EPOCHS = {
    ("mnist", 32, None): {"ae_gan": (2000, "mnist/baseline_lamb5.sh"),
                          "mixup": (2000, "mnist/mixup_lamb10.sh"),
                          "bern": (2000, "mnist/mixupfm2_lamb10.sh"),
                          "mixup_k3": (2000, "mnist/gan3f_lamb20.sh"),
                          "acai": (2000, "mnist/acaif3_lamb2.sh")},
    ("kmnist", 32, None): {"ae_gan": (5000, "kmnist/baseline_lamb10.sh"),
                           "mixup": (6000, "kmnist/mixup_lamb10.sh"),
                           "bern": (6000, "kmnist/mixupfm2_lamb10.sh"),
                           "mixup_k3": (6000, "kmnist/gan3f_lamb10.sh"),
                           "acai": (6000, "kmnist/acaif3_lamb2.sh")},
    ("svhn", 32, None): {"ae_gan": (4500, "svhn32/baseline_lamb5.sh"),
                         "mixup": (6000, "svhn32/mixup_lamb10.sh"),
                         "bern": (4500, "svhn32/mixupfm2_lamb10.sh"),
                         "mixup_k3": (6000, "svhn32/gan3f_lamb10.sh"),
                         "acai": (6000, "svhn32/acaif3_lamb2.sh")},
    ("svhn", 32, 1000): {"ae_gan": (6000, "svhn32_1k/baseline_lamb10.sh"),
                         "mixup": (6000, "svhn32_1k/mixup_lamb10.sh"),
                         "bern": (6000, "svhn32_1k/mixupfm2_lamb20.sh"),
                         "mixup_k3": (6000, "svhn32_1k/gan3f_lamb10.sh"),
                         "acai": (6000, "svhn32_1k/acaif3_lamb10.sh")},
    ("svhn", 32, 5000): {"ae_gan": (6000, "svhn32_5k/baseline_lamb10.sh"),
                         "mixup": (6000, "svhn32_5k/mixup_lamb20.sh"),
                         "bern": (6000, "svhn32_5k/mixupfm2_lamb20.sh"),
                         "mixup_k3": (7000, "svhn32_5k/gan3f_lamb10.sh"),
                         "acai": (7000, "svhn32_5k/acaif3_lamb10.sh")},
    ("svhn", 32, 10000): {"ae_gan": (6000, "svhn32_10k/baseline_lamb10.sh"),
                          "mixup": (6000, "svhn32_10k/mixup_lamb10.sh"),
                          "bern": (6000, "svhn32_10k/mixupfm2_lamb10.sh"),
                          "mixup_k3": (6000, "svhn32_10k/gan3f_lamb10.sh"),
                          "acai": (6000, "svhn32_10k/acaif3_lamb2.sh")},
    ("svhn", 32, 20000): {"ae_gan": (4000, "svhn32_20k/baseline_lamb20.sh"),
                          "mixup": (4000, "svhn32_20k/mixup_lamb10.sh"),
                          "bern": (4000, "svhn32_20k/mixupfm2_lamb10.sh"),
                          "mixup_k3": (4000, "svhn32_20k/gan3f_lamb10.sh"),
                          "acai": (4000, "svhn32_20k/acaif3_lamb5.sh")},
    ("svhn", 256, None): {"ae_gan": (6000, "svhn256/baseline_lamb5.sh"),
                          "mixup": (6000, "svhn256/mixup_lamb5.sh"),
                          "bern": (4500, "svhn256/mixupfm2_lamb10.sh"),
                          "mixup_k3": (4500, "svhn256/gan3f_lamb5.sh"),
                          "mixup_k4": (4500, "svhn256/gan4f_lamb5.sh"),
                          "mixup_k6": (6000, "svhn256/gan6f_lamb5.sh"),
                          "mixup_k8": (4500, "svhn256/gan8f_lamb5.sh"),
                          "acai": (4500, "svhn256/acaif3_lamb2.sh")},
    ("cifar10", 256, None): {"ae_gan": (3000, "cifar10/baseline_lamb50.sh"),
                             "mixup": (3000, "cifar10/mixup_lamb50.sh"),
                             "bern": (3000, "cifar10/mixupfm2_lamb50.sh"),
                             "mixup_k3": (3000, "cifar10/gan3f_lamb50.sh"),
                             "mixup_k4": (3000, "cifar10/gan4f_lamb50.sh"),
                             "mixup_k6": (3000, "cifar10/gan6f_lamb50.sh"),
                             "mixup_k8": (3000, "cifar10/gan8f_lamb50.sh"),
                             "acai": (3000, "cifar10/acaif3_lamb20.sh")},
    ("cifar10", 1024, None): {"ae_gan": (8000, "cifar10_1024/baseline_lamb50.sh"),
                              "mixup": (8000, "cifar10_1024/mixup_lamb50.sh"),
                              "bern": (8000, "cifar10_1024/mixupfm2_lamb50.sh"),
                              "mixup_k3": (8000, "cifar10_1024/gan3f_lamb50.sh"),
                              "mixup_k4": (8000, "cifar10_1024/gan4f_lamb50.sh"),
                              "mixup_k6": (8000, "cifar10_1024/gan6f_lamb50.sh"),
                              "mixup_k8": (8000, "cifar10_1024/gan8f_lamb50.sh"),
                              "acai": (8000, "cifar10_1024/acaif3_lamb20.sh")},
}

TFDS_NAMES = {"mnist": "mnist", "kmnist": "kmnist", "svhn": "svhn_cropped", "cifar10": "cifar10"}
# The training split's size, amr_jax's and the authors' alike: MNIST and KMNIST 60,000 - 10,000
# validation, SVHN 90% of 73,257, CIFAR10 50,000 - 10,000.
TRAIN_SIZES = {"mnist": 50_000, "kmnist": 50_000, "svhn": 65_931, "cifar10": 40_000}
AUTHORS_BATCH_SIZE = 64  # every launch script's --batch_size


def steps_for_epochs(epochs: int, examples: int, batch_size: int = AUTHORS_BATCH_SIZE) -> int:
  """Iterations of ``epochs`` passes over ``examples`` at ``batch_size``, the last batch of each
  pass partial, as the authors' DataLoader (drop_last=False) makes them."""
  return epochs * -(-examples // batch_size)


# An option naming the authors' code -> the fields it sets.
AUTHORS_OPTIONS = {"authors": AUTHORS_MODEL, "authors_exact": AUTHORS_EXACT}


def parse(arg: str | None, default_dim: int
          ) -> tuple[str, int, int | None, Mapping[str, Any]]:
  """'mixup_k3,dim=256,train=1000,authors' -> (method, dim, train size or None, the fields the
  authors option sets: AUTHORS_MODEL, AUTHORS_EXACT or {} without one)."""
  words = [w for w in (arg or "mixup").split(",") if w]
  method, dim, train, authors = words[0], default_dim, None, {}
  for option in words[1:]:
    key, _, value = option.partition("=")
    if key == "dim":
      dim = int(value)
    elif key == "train":
      train = int(value)
    elif option in AUTHORS_OPTIONS:
      authors = AUTHORS_OPTIONS[option]
    else:
      raise ValueError(f"unknown option {option!r}; allowed: dim=N, train=N, "
                       f"{', '.join(AUTHORS_OPTIONS)}")
  return method, dim, train, authors


def paper_number(dataset: str, method: str, dim: int, train: int | None,
                 authors: Mapping[str, Any] | None = None) -> tuple[float, float] | None:
  del authors  # the paper's number is the authors' model's
  row = TABLES.get((dataset, dim, train), {}).get(method)
  return None if row is None else (row[1], row[2])


def row_config(dataset: str, arg: str | None, default_dim: int = 32
               ) -> ml_collections.ConfigDict:
  """The config of one table row (see the module docstring)."""
  method, dim, train, authors = parse(arg, default_dim)
  table = TABLES.get((dataset, dim, train))
  if table is None:
    rows = sorted(f"dim={d}" + (f",train={n}" if n else "")
                  for (ds, d, n) in TABLES if ds == dataset)
    raise ValueError(f"{dataset} has no table with dim={dim}, train={train}; the paper has: "
                     f"{'; '.join(rows)}")
  if method not in table:
    raise ValueError(f"unknown {dataset} row {method!r}; allowed: {', '.join(table)}")
  model, mixer, k = METHODS[method]
  config = base_config()
  config.data.name = TFDS_NAMES[dataset]
  config.model, config.mixer, config.k = model, mixer, k
  config.lamb = float(table[method][0])
  if model == "acai":
    config.g_every = 1  # ACAI updates its autoencoder every step
  config.arch.latent_channels = dim // 16  # 4x4 spatial: 32 -> 2, 256 -> 16, 1024 -> 64
  if train is not None:
    config.data.num_train = train
  examples = train or TRAIN_SIZES[dataset]
  config.num_train_steps = steps_for_epochs(EPOCHS[(dataset, dim, train)][method][0], examples,
                                            config.batch_size)
  config.eval_every = config.checkpoint_every = max(config.num_train_steps // 50, 100)
  for field, value in authors.items():
    set_field(config, field, value)
  if authors is AUTHORS_EXACT and model == "acai":
    # Their ACAI (acaif3): BCE critic targets, its G term unweighted (models/acai_f3.py), and
    # their default G schedule (task_launcher's --update_g_every=5; no ACAI script changes it).
    config.acai.variant, config.acai.advweight = "amr_authors", 1.0
    config.g_every = 5
  return config
