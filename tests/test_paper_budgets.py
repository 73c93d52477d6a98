"""The paper rows' training budgets: the authors' per-script epochs, as iterations.

The transcription is checked against the authors' launch scripts when their repository is beside
this one (``../shared/reference/amr_pytorch/exps``); without it those checks are skipped.
"""

import math
import re
from pathlib import Path

import pytest

from experiments.configs import dsprites
from experiments.configs import paper_rows

EXPS = Path(__file__).resolve().parents[2] / "shared/reference/amr_pytorch/exps"
ROWS = [(dataset, dim, train, method) for (dataset, dim, train), table in paper_rows.TABLES.items()
        for method in table]
# Our method -> the authors' (--model, --mixer, --k) (swapgan is their default model; 'fm2' is
# their one-p-per-batch Bernoulli mixer).
AUTHORS_METHOD = {"ae_gan": ("swapgan", "mixup", None), "mixup": ("swapgan", "mixup", None),
                  "bern": ("swapgan", "fm2", None), "mixup_k3": ("threegan", "mixup", None),
                  "mixup_k4": ("kgan", "mixup", "4"), "mixup_k6": ("kgan", "mixup", "6"),
                  "mixup_k8": ("kgan", "mixup", "8"), "acai": ("acaif3", "mixup", None)}
AUTHORS_DATASET = {"mnist": "mnist", "kmnist": "kmnist", "svhn": "svhn", "cifar10": "cifar10"}
AUTHORS_ARCH = {32: "arch_acai_kyle.py", 256: "arch_acai_kyle_256.py",
                1024: "arch_acai_kyle_1024.py"}


def _arg(script: str, name: str) -> str | None:
  match = re.search(rf"--{name}=(\S+)", script)
  return match.group(1) if match else None


def script_mismatches(script: str, dataset: str, dim: int, train: int | None, method: str,
                      epochs: int, lamb: float) -> list[str]:
  """What in a launch script disagrees with a row (empty: it is the row's script)."""
  model, mixer, k = AUTHORS_METHOD[method]
  want = {"epochs": str(epochs), "dataset": AUTHORS_DATASET[dataset], "batch_size": "64",
          "model": model, "mixer": mixer, "k": k,
          "subset_train": None if train is None else str(train)}
  got = {name: _arg(script, name) for name in want}
  got["model"] = got["model"] or "swapgan"
  out = [f"--{n}={got[n]}, row has {v}" for n, v in want.items() if got[n] != v]
  if float(_arg(script, "lamb")) != lamb:
    out.append(f"--lamb={_arg(script, 'lamb')}, row has {lamb}")
  if not (_arg(script, "arch") or "").endswith(AUTHORS_ARCH[dim]):
    out.append(f"--arch={_arg(script, 'arch')}, row has dim {dim}")
  if ("--disable_mix" in script) != (method == "ae_gan"):
    out.append("--disable_mix where the row mixes, or its absence where it does not")
  return out


def _arg_string(dim, train, method):
  return method + ("" if dim == 32 else f",dim={dim}") + ("" if train is None else
                                                          f",train={train}")


def test_every_row_has_its_epochs_and_a_script():
  assert paper_rows.EPOCHS.keys() == paper_rows.TABLES.keys()
  for key, table in paper_rows.TABLES.items():
    assert paper_rows.EPOCHS[key].keys() == table.keys(), key
    for epochs, script in paper_rows.EPOCHS[key].values():
      assert epochs >= 500 and script.endswith(".sh")


@pytest.mark.parametrize("dataset,dim,train,method", ROWS)
def test_row_trains_the_authors_iterations(dataset, dim, train, method):
  config = paper_rows.row_config(dataset, _arg_string(dim, train, method))
  epochs = paper_rows.EPOCHS[(dataset, dim, train)][method][0]
  examples = train or paper_rows.TRAIN_SIZES[dataset]
  # Their DataLoader keeps each epoch's last, partial batch: ceil(N / 64) iterations an epoch.
  assert config.num_train_steps == epochs * math.ceil(examples / 64)
  assert config.batch_size == 64


def test_steps_for_epochs_counts_the_partial_batch():
  assert paper_rows.steps_for_epochs(2000, 50_000) == 2000 * 782  # 781 full batches + 1
  assert paper_rows.steps_for_epochs(3, 128) == 6  # no partial batch: exactly N / 64


needs_scripts = pytest.mark.skipif(not EXPS.is_dir(), reason=f"no launch scripts at {EXPS}")


@needs_scripts
@pytest.mark.parametrize("dataset,dim,train,method", ROWS)
def test_row_budget_is_its_launch_script(dataset, dim, train, method):
  epochs, script = paper_rows.EPOCHS[(dataset, dim, train)][method]
  lamb = paper_rows.TABLES[(dataset, dim, train)][method][0]
  assert script_mismatches((EXPS / script).read_text(), dataset, dim, train, method, epochs,
                           lamb) == []


@needs_scripts
def test_script_check_rejects_another_row():
  # Negative controls: the guessed 100 epochs, another row's script, another table's script.
  text = (EXPS / "mnist/mixup_lamb10.sh").read_text()
  assert script_mismatches(text, "mnist", 32, None, "mixup", 2000, 10) == []
  assert script_mismatches(text, "mnist", 32, None, "mixup", 100, 10) == [
      "--epochs=2000, row has 100"]
  assert script_mismatches(text, "mnist", 32, None, "bern", 2000, 10)
  assert script_mismatches(text, "mnist", 32, None, "ae_gan", 2000, 10)
  assert script_mismatches(text, "svhn", 32, 1000, "mixup", 2000, 10)
  assert script_mismatches(text, "mnist", 256, None, "mixup", 2000, 10)


@pytest.mark.parametrize("variant,k,epochs", [("beta_vae", 2, 500), ("ae_gan", 2, 500),
                                              ("mixup", 2, 500), ("bern", 2, 500),
                                              ("mixup", 3, 1000), ("bern", 3, 500)])
def test_dsprites_rows_train_the_authors_epochs(variant, k, epochs):
  config = dsprites.get_config(f"{variant},k={k}")
  assert config.num_train_steps == epochs * math.ceil(737_280 / 64)
  script = dsprites.EPOCHS[(variant, k)][1]
  if EXPS.is_dir():
    assert _arg((EXPS / script).read_text(), "epochs") == str(epochs)
