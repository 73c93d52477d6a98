#!/usr/bin/env bash
# Prepares, on this machine (with network), what the `device` tool's H200 lacks: wheels of the
# packages its image does not hold, for its Python, in .whl/ (ignored by git), and MNIST prepared
# by TFDS in shared/tensorflow_datasets/ (array_record, which TFDS reads there without
# TensorFlow). Both travel with the checkout (`carry=[".whl"]`; shared/ always travels).
#
#   bash experiments/accelerator/prepare.sh [PYTHON_VERSION]   # default 3.12, the image's
#
# MNIST_DIR (default ../shared/data/mnist) holds MNIST's four original files.
set -euo pipefail
cd "$(dirname "$0")/../.."
python_version=${1:-3.12}
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
# What amr_jax and tensorflow-datasets import and the image lacks (it has jax, flax, optax, chex,
# orbax-checkpoint, numpy, scikit-learn, absl-py, etils, protobuf, pyarrow, six, wrapt, ...).
for package in ml-collections tensorflow-datasets array-record dm-tree immutabledict \
    simple-parsing docstring-parser tensorflow-metadata termcolor toml tensorboardX; do
  # shellcheck disable=SC2086
  python -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp $platforms -d .whl "$package"
done
python -m pip wheel -q --no-deps -w .whl promise  # published as source only (pure Python)
python - <<PY
from amr_jax import data
data.load("mnist", seed=0, manual_dir="${MNIST_DIR:-../shared/data/mnist}",
          data_dir="shared/tensorflow_datasets")
PY
du -sh .whl shared/tensorflow_datasets
