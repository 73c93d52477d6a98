"""What an install holds: the core modules import with the core requirements only (no TensorFlow),
the version comes from git, and the config files load from any working directory."""

import configparser
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import packaging.requirements
import packaging.version
import pytest

import amr_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE_MODULES = ("amr_jax.mixers", "amr_jax.losses", "amr_jax.networks", "amr_jax.train_state",
                "amr_jax.train_step")
TENSORFLOW = ("tensorflow", "tensorflow_datasets")


def core_requirements() -> list[str]:
  """setup.cfg's install_requires: the distributions that `pip install amr_jax` installs."""
  setup = configparser.ConfigParser()
  setup.read(ROOT / "setup.cfg")
  lines = setup["options"]["install_requires"].splitlines()
  return [packaging.requirements.Requirement(line).name for line in lines if line.strip()]


def normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(names: list[str]) -> set[str]:
  """The installed distributions that ``names`` pull in (their unconditional requirements,
  recursively), as `pip install` without extras would install them."""
  seen, todo = set(), [normalized(n) for n in names]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    for line in importlib.metadata.requires(name) or []:
      requirement = packaging.requirements.Requirement(line)
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        todo.append(normalized(requirement.name))
  return seen


IMPORT_AS_IN_A_CORE_INSTALL = """
import json, sys
blocked = set(json.loads(sys.argv[1]))

class NotInstalled:
  \"\"\"Hides the distributions that a core install lacks, as if they were not installed.\"\"\"
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in blocked:
      raise ModuleNotFoundError(f"No module named {name!r} (not in the core install)", name=name)

at_start = set(sys.modules)
sys.meta_path.insert(0, NotInstalled())
for module in sys.argv[2:]:
  __import__(module)
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - at_start})))
"""


def import_as_in_a_core_install(modules: tuple[str, ...]) -> subprocess.CompletedProcess:
  """Imports ``modules`` in a fresh process where every installed distribution outside the core
  requirements' closure is hidden; stdout's last line: the top-level modules it loaded."""
  core = dependency_closure(core_requirements()) | {"amr-jax"}
  blocked = [module for module, distributions in importlib.metadata.packages_distributions().items()
             if not {normalized(d) for d in distributions} & core]
  return subprocess.run([sys.executable, "-c", IMPORT_AS_IN_A_CORE_INSTALL, json.dumps(blocked),
                         *modules], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_the_core_modules_import_with_the_core_requirements_only():
  """`import amr_jax.mixers` (and the other core modules) works with what setup.cfg's
  install_requires installs, all else hidden, and loads no TensorFlow."""
  result = import_as_in_a_core_install(CORE_MODULES)
  assert result.returncode == 0, result.stderr[-2000:]
  loaded = set(json.loads(result.stdout.splitlines()[-1]))
  assert {"amr_jax", "jax", "flax", "optax", "numpy"} <= loaded
  assert not any(m.startswith(TENSORFLOW) for m in loaded)


def test_the_training_loop_is_refused_by_a_core_install():
  """Negative control: the hiding works, and the loop needs the `train` extra (tqdm, ...)."""
  result = import_as_in_a_core_install(("amr_jax.train",))
  assert result.returncode != 0
  assert "not in the core install" in result.stderr


def test_the_core_modules_load_no_tensorflow_even_where_it_is_installed():
  """Nothing hidden (the full install): the import graph itself reaches no TensorFlow."""
  code = (f"import sys; import {', '.join(CORE_MODULES)}; "
          f"print([m for m in sys.modules if m.startswith({TENSORFLOW!r})])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, check=True).stdout
  assert out.splitlines()[-1] == "[]"


def test_the_core_requirements_are_jax_flax_optax_ml_collections_numpy():
  assert sorted(map(normalized, core_requirements())) == [
      "flax", "jax", "ml-collections", "numpy", "optax"]


def test_the_version_is_the_installed_distributions_and_pep_440():
  assert amr_jax.__version__ == importlib.metadata.version("amr_jax")
  assert str(packaging.version.Version(amr_jax.__version__)) == amr_jax.__version__


def scm_version(directory: pathlib.Path) -> str:
  """The version setuptools-scm gives ``directory`` under this repository's pyproject.toml."""
  out = subprocess.run([sys.executable, "-m", "setuptools_scm"], cwd=directory,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  return out.strip().splitlines()[-1]


def git(directory: pathlib.Path, *args: str) -> str:
  return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                        cwd=directory, capture_output=True, text=True, timeout=60,
                        check=True).stdout.strip()


def test_the_version_changes_with_each_commit_and_falls_back_without_git(tmp_path):
  """pyproject.toml's setuptools-scm settings, in a repository of two commits and in an export
  without git: each commit gets its own version, naming its hash; the export gets the fallback."""
  pytest.importorskip("setuptools_scm")
  if shutil.which("git") is None:
    pytest.skip("git is not installed")
  repo = tmp_path / "repo"
  repo.mkdir()
  for name in ("pyproject.toml", "setup.cfg"):
    shutil.copy(ROOT / name, repo / name)
  git(repo, "init", "-q")
  git(repo, "add", ".")
  git(repo, "commit", "-q", "-m", "one")
  first = scm_version(repo)
  git(repo, "commit", "-q", "--allow-empty", "-m", "two")
  second = scm_version(repo)
  assert first != second
  assert f"+g{git(repo, 'rev-parse', '--short', 'HEAD')}" in second
  for version in (first, second):
    packaging.version.Version(version)
  shutil.rmtree(repo / ".git")
  assert scm_version(repo) == "0.1.0"


def config_files() -> list[tuple[str, str | None]]:
  """(config file, variant) for every config in experiments/configs, with one named variant for
  the files that take one."""
  variants = {"mnist.py": "mixup", "kmnist.py": "bern", "svhn.py": "mixup_k3",
              "cifar10.py": "mixup,dim=1024", "dsprites.py": "mixup,k=3", "spiral.py": None}
  found = []
  for path in sorted((ROOT / "experiments" / "configs").glob("*.py")):
    if "def get_config" in path.read_text():
      found.append((path.name, None))
      if variants.get(path.name):
        found.append((path.name, variants[path.name]))
  return found


LOAD_CONFIGS = """
import json, sys
from absl import flags
from ml_collections import config_flags
loaded = {}
for path in sys.argv[1:]:
  flag_values = flags.FlagValues()  # a fresh --config flag for each file
  config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values)
  try:
    flag_values(["load", "--config=" + path])
    loaded[path] = [flag_values.config.model, flag_values.config.mixer]
  except Exception as e:  # pylint: disable=broad-except
    loaded[path] = f"{type(e).__name__}: {e}"
print(json.dumps(loaded))
"""


def test_every_config_loads_from_any_working_directory(tmp_path):
  """Each config as `python -m amr_jax.main --config=/abs/path/experiments/configs/NAME.py:VARIANT`
  loads it (ml_collections' config_flags), from a directory that puts neither the repository nor
  `experiments` on sys.path."""
  paths = [str(ROOT / "experiments" / "configs" / name) + (f":{variant}" if variant else "")
           for name, variant in config_files()]
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", LOAD_CONFIGS, *paths], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
  loaded = json.loads(result.stdout.splitlines()[-1])
  assert {p: v for p, v in loaded.items() if not isinstance(v, list)} == {}
  assert len(loaded) == len(paths) > 10


def test_the_license_file_is_the_one_setup_cfg_declares():
  setup = configparser.ConfigParser()
  setup.read(ROOT / "setup.cfg")
  assert setup["metadata"]["license"] == "Apache-2.0"
  text = (ROOT / setup["metadata"]["license_files"]).read_text()
  assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
  assert "END OF TERMS AND CONDITIONS" in text


def test_the_citation_names_this_software_and_prefers_the_paper():
  yaml = pytest.importorskip("yaml")
  citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
  assert citation["license"] == "Apache-2.0"
  paper = citation["preferred-citation"]
  assert paper["title"] == "On Adversarial Mixup Resynthesis" and paper["year"] == 2019
  assert [a["family-names"] for a in paper["authors"]] == [
      "Beckham", "Honari", "Verma", "Lamb", "Ghadiri", "Hjelm", "Bengio", "Pal"]
