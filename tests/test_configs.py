"""Every config file and every paper row is a valid config (checked without compiling)."""

import importlib

import pytest

from amr_jax import config as config_lib
from experiments.configs import paper_rows

ROWS = [(dataset, method, dim, train) for (dataset, dim, train), table in paper_rows.TABLES.items()
        for method in table]


@pytest.mark.parametrize("dataset, method, dim, train", ROWS)
def test_every_paper_row_is_a_valid_config(dataset, method, dim, train):
  arg = f"{method},dim={dim}" + (f",train={train}" if train else "")
  config = importlib.import_module(f"experiments.configs.{dataset}").get_config(arg)
  config_lib.validate(config, check_data=False)
  assert config.lamb == paper_rows.TABLES[(dataset, dim, train)][method][0]
  assert config.arch.latent_channels * 16 == dim
  assert config.data.num_train == (train or -1)
  model, mixer, k = paper_rows.METHODS[method]
  assert (config.model, config.mixer, config.k) == (model, mixer, k)


@pytest.mark.parametrize("module, arg", [
    ("default", None), ("tiny", None), ("celeba", None), ("tiny_dsprites", None),
    *[("dsprites", v) for v in ("beta_vae", "ae_gan", "mixup", "bern", "mixup,k=3", "bern,k=3",
                                "supervised", "mixup,runlocal")],
])
def test_other_configs_are_valid(module, arg):
  get_config = importlib.import_module(f"experiments.configs.{module}").get_config
  config = get_config(arg) if arg else get_config()
  config_lib.validate(config, check_data=False)


def test_unknown_rows_and_options_are_rejected_with_the_allowed_ones():
  from experiments.configs import dsprites, mnist, svhn
  with pytest.raises(ValueError, match="allowed: ae_gan, mixup, bern, mixup_k3, acai"):
    mnist.get_config("mixup_k8")
  with pytest.raises(ValueError, match="the paper has: .*dim=256"):
    svhn.get_config("mixup,dim=64")
  with pytest.raises(ValueError, match="allowed: beta_vae, ae_gan, mixup, bern, supervised"):
    dsprites.get_config("vae")


def test_authors_option_sets_the_authors_model_and_only_acai32_takes_it():
  from experiments.configs import dsprites, mnist
  config = mnist.get_config("mixup,authors")
  config_lib.validate(config, check_data=False)
  for field, value in config_lib.AUTHORS_MODEL.items():
    assert config_lib._get(config, field) == value, field
  plain = mnist.get_config("mixup")
  assert (plain.arch.init, plain.arch.input_conv_padding, plain.arch.spectral_input_conv,
          plain.arch.spectral_power_iterations) == ("flax", 0, True, 1)
  assert mnist.paper_number("mixup,authors") == mnist.paper_number("mixup")
  other = dsprites.get_config("mixup")
  other.arch.init = "authors"
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.arch.init='authors' is not allowed; allowed: 'flax' only "
                           r"with arch.name='dsprites64'"):
    config_lib.validate(other, check_data=False)
