"""What the authors' PyTorch code recorded and how, shared by the recorder and the parity tests.

``experiments/parity/record_authors.py`` (torch) writes ``tests/fixtures/authors/NAME.npz``;
``tests/test_authors_parity.py`` (no torch) reads them. Both sides import this module, which needs
only numpy: the fixtures' table (:data:`FIXTURES`), the initial weights and the batch, made from
numpy seeds so that only outputs are committed (:func:`authors_weights`, :func:`authors_batch`,
and the Adam state of a run in mid-training, :func:`adam_moments`, :data:`ADAM_STEPS`), and the
CountSketch that keeps large tensors small (:func:`pack`, :func:`group_error`).

A tensor of at most :data:`FULL_SIZE` elements is stored as it is (``KEY``); a larger one as its
CountSketch (``KEY#sketch``, :data:`BUCKETS` buckets, each element's bucket and sign drawn from
``np.random.RandomState(zlib.crc32(name))``) and its exact L2 norm (``KEY#norm``). A CountSketch
is linear and preserves L2 norms in expectation, so ``||S(a) - S(b)|| / ||b||`` estimates the
relative L2 difference of ``a`` and ``b`` (over a group of tensors its relative spread shrinks
like one over the square root of the buckets summed).

On disk (:func:`save`, :func:`load`) the entries are three arrays, not one npz member each (a
member costs ~200 bytes of headers): every float value concatenated (float32), every integer
(int64), and a JSON index of each entry's offset and shape.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import zlib
from typing import Iterable, Mapping

import numpy as np

FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "authors"
FULL_SIZE = 256
BUCKETS = 64
BATCH = 8
NETS = ("g", "disc_x", "cls_enc")  # the authors' save() keys of G, D and the probe
# Adam's step counts at the start (mid-training): D's count is amr_jax's TrainState.step, 100, a
# G step (100 % 5 == 0) as their iter=1 is, and 101 is not (their iter=2); G steps every 5th.
ADAM_STEPS = {"g": 20, "disc_x": 100, "cls_enc": 100}


@dataclasses.dataclass(frozen=True)
class Fixture:
  """One recorded method: the authors' model and flags, amr_jax's config of it, the seeds."""
  authors_model: str  # task_launcher's --model
  arch: str  # _authors.ARCHS key: 'mnist_dim32' or 'svhn_dim256'
  mixer: str  # their --mixer
  lamb: float  # their --lamb (the row's; exps/ script below)
  script: str  # the launch script in their exps/ whose flags these are
  config: str  # amr_jax config: experiments/configs/FILE:ARG ('authors' is added)
  disable_mix: bool = False
  k: int | None = None  # kgan's --k
  spectral_u: str = "converged"  # D's u, v: 'converged' (1,000 power iterations) or 'random'
  seed: int = 0  # weights, batch and draws


FIXTURES = {
    # Seed 24: its weights and batch put no LeakyReLU pre-activation (G's and D's, at the initial
    # state) or L1 residual closer to 0 than 0.52 x its layer's float32 rounding (RMS of float32
    # - float64); seed 1 had one at 0.013 x, whose slope flipped between torch and XLA (G's
    # gradient 0.7 of its bound, D's 1.4 in iteration 2).
    "mnist_ae_gan": Fixture("swapgan", "mnist_dim32", "mixup", 5.0, "mnist/baseline_lamb5.sh",
                            "mnist.py:ae_gan", disable_mix=True, seed=24),
    "mnist_mixup": Fixture("swapgan", "mnist_dim32", "mixup", 10.0, "mnist/mixup_lamb10.sh",
                           "mnist.py:mixup", seed=2),
    "mnist_mixup_random_u": Fixture("swapgan", "mnist_dim32", "mixup", 10.0,
                                    "mnist/mixup_lamb10.sh", "mnist.py:mixup",
                                    spectral_u="random", seed=3),
    "mnist_bern": Fixture("swapgan", "mnist_dim32", "fm2", 10.0, "mnist/mixupfm2_lamb10.sh",
                          "mnist.py:bern", seed=4),
    "mnist_mixup_k3_threegan": Fixture("threegan", "mnist_dim32", "mixup", 20.0,
                                       "mnist/gan3f_lamb20.sh", "mnist.py:mixup_k3", seed=5),
    "mnist_mixup_k3_kgan": Fixture("kgan", "mnist_dim32", "mixup", 20.0,
                                   "mnist/gan3f_lamb20.sh (--model=kgan --k=3)",
                                   "mnist.py:mixup_k3", k=3, seed=6),
    "mnist_acai": Fixture("acaif3", "mnist_dim32", "mixup", 2.0, "mnist/acaif3_lamb2.sh",
                          "mnist.py:acai", seed=7),
    "svhn256_mixup": Fixture("swapgan", "svhn_dim256", "mixup", 5.0, "svhn256/mixup_lamb5.sh",
                             "svhn.py:mixup,dim=256", seed=8),
}

# The loss function's calls in one authors' iteration, in their order (their gan_loss_fn, bce):
# G's terms, then D's. swapgan with --disable_mix still computes G's mix term (unused).
GAN_CALLS = {
    "swapgan": ("disc_g_recon", "disc_g_mix", "d_real", "d_rec", "d_mix"),
    "swapgan_disable_mix": ("disc_g_recon", "disc_g_mix", "d_real", "d_rec"),
    "threegan": ("disc_g_recon", "disc_g_mix", "d_real", "d_rec", "d_mix"),
    "kgan": ("disc_g_recon", "disc_g_mix", "d_real", "d_rec", "d_mix"),
    "acaif3": ("disc_g_mix", "d_real", "d_rec", "d_mix"),
}


def gan_calls(fixture: Fixture) -> tuple[str, ...]:
  return GAN_CALLS[fixture.authors_model + ("_disable_mix" if fixture.disable_mix else "")]


def channels(fixture: Fixture) -> int:
  return {"mnist_dim32": 1, "svhn_dim256": 3}[fixture.arch]


def _rng(seed: int, name: str) -> np.random.RandomState:
  return np.random.RandomState((zlib.crc32(name.encode()) + 7919 * seed) % 2**32)


def authors_weights(names: Mapping[str, Mapping[str, tuple[int, ...]]], seed: int
                    ) -> dict[str, dict[str, np.ndarray]]:
  """Initial weights in the authors' state-dict layout, at the scales of their init.

  ``names``: ``{net: {name: shape}}`` (``from_authors.authors_names``). Each tensor comes from its
  own ``RandomState`` (seed and name), so a tensor does not depend on the others. Scales:
  G's convs and D's unnormalised input conv ~ N(0, std) of their ``Initializer`` (1 / sqrt(1.04
  * prod(shape[:-1]))); instance-norm scales ~ N(0, 1 / sqrt(1.04)), as that initialiser makes
  them; D's spectrally normalised convs and the probe at PyTorch's default scale (U(+-1 /
  sqrt(fan_in)), their biases too); the biases their initialiser zeroes ~ N(0, 0.02), nonzero so
  that a bias mapped to the wrong place shows; D's ``weight_u``, ``weight_v`` ~ N(0, 1)
  normalised, as their ``SpectralNorm`` draws them.
  """
  out: dict[str, dict[str, np.ndarray]] = {}
  for net, tensors in names.items():
    out[net] = {}
    for name, shape in tensors.items():
      rng = _rng(seed, f"{net}/{name}")
      shape = tuple(int(s) for s in shape)
      leaf = name.rsplit(".", 1)[-1]
      if leaf in ("weight_u", "weight_v"):
        value = rng.normal(size=shape)
        value /= np.linalg.norm(value) + 1e-12
      elif ".module." in name or net == "cls_enc":  # PyTorch's default init
        weight = tensors[name.replace("bias", "weight_bar")] if ".module." in name else (
            tensors[name.replace("bias", "weight")])
        bound = 1.0 / np.sqrt(np.prod(weight[1:]))
        value = rng.uniform(-bound, bound, size=shape)
      elif leaf == "weight":  # their Initializer: a conv kernel or an instance-norm scale
        std = 1.0 / np.sqrt((1.0 + 0.2**2) * np.prod(shape[:-1]))
        value = rng.normal(0.0, std, size=shape)
      elif leaf == "bias":
        value = rng.normal(0.0, 0.02, size=shape)
      else:
        raise ValueError(f"no initial scale for {net}/{name} {shape}")
      out[net][name] = value.astype(np.float32)
  return out


def trainable_names(names: Mapping[str, Mapping[str, tuple[int, ...]]], net: str) -> list[str]:
  """The names of ``net``'s tensors that Adam steps, in the authors' order: all but D's spectral
  ``weight_u``, ``weight_v``."""
  return [n for n in names[net] if not n.endswith(("weight_u", "weight_v"))]


def adam_moments(names: Mapping[str, Mapping[str, tuple[int, ...]]],
                 scales: Mapping[str, np.ndarray], seed: int
                 ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
  """Adam moments of a state in mid-training: ``{net: {name: (exp_avg, exp_avg_sq)}}``.

  ``scales``: ``{net: (n,)}``, one per tensor of :func:`trainable_names` (the RMS of its
  gradient, measured by the recorder). ``exp_avg ~ N(0, s^2)``, ``exp_avg_sq ~ s^2 U(0.5, 2)``,
  each tensor from its own ``RandomState``. From zero moments Adam's first step is
  ``~g / |g|``: a component that rounding leaves near 0 flips a whole ``lr``-sized update;
  from these, a component's update moves by its rounding over ``s``."""
  out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
  for net, net_scales in scales.items():
    trainable = trainable_names(names, net)
    if len(trainable) != len(net_scales):
      raise ValueError(f"{net}: {len(net_scales)} scales for {len(trainable)} tensors")
    out[net] = {}
    for name, scale in zip(trainable, np.asarray(net_scales, np.float32)):
      rng = _rng(seed, f"adam/{net}/{name}")
      shape = tuple(int(s) for s in names[net][name])
      scale = float(scale)
      exp_avg = rng.normal(0.0, 1.0, size=shape) * scale
      exp_avg_sq = rng.uniform(0.5, 2.0, size=shape) * scale**2
      out[net][name] = (exp_avg.astype(np.float32), exp_avg_sq.astype(np.float32))
  return out


def authors_batch(seed: int, image_channels: int) -> tuple[np.ndarray, np.ndarray]:
  """``(x, y)``: :data:`BATCH` images NCHW float32 ~ U(-1, 1) and one-hot float32 labels."""
  rng = _rng(seed, "batch")
  x = rng.uniform(-1.0, 1.0, size=(BATCH, image_channels, 32, 32)).astype(np.float32)
  labels = rng.randint(0, 10, size=BATCH)
  return x, np.eye(10, dtype=np.float32)[labels]


@functools.lru_cache(maxsize=None)
def _hash(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Each element's bucket and sign (kept small: tests sketch the same tensors many times)."""
  rng = np.random.RandomState(zlib.crc32(name.encode()))
  bucket = rng.randint(0, BUCKETS, size=size).astype(np.uint8)
  sign = (rng.randint(0, 2, size=size) * 2 - 1).astype(np.int8)
  return bucket, sign


def sketch(name: str, array: np.ndarray) -> np.ndarray:
  """The CountSketch of ``array`` (float64, :data:`BUCKETS` values); its hash depends on
  ``name`` only."""
  flat = np.asarray(array, np.float64).reshape(-1)
  bucket, sign = _hash(name, flat.size)
  return np.bincount(bucket, weights=sign * flat, minlength=BUCKETS)


def pack(key: str, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
  """The npz entries of one tensor: ``{key: array}`` if small, else its sketch and norm."""
  array = np.asarray(array)
  if array.size <= FULL_SIZE:
    return {key: array.astype(np.float32) if array.dtype.kind == "f" else array}
  return {f"{key}#sketch": sketch(name, array),
          f"{key}#norm": np.asarray(np.linalg.norm(array.astype(np.float64)))}


def has(saved: Mapping[str, np.ndarray], key: str) -> bool:
  return key in saved or f"{key}#norm" in saved


def squared_error(saved: Mapping[str, np.ndarray], key: str, name: str, actual: np.ndarray
                  ) -> tuple[float, float]:
  """``(||actual - recorded||^2, ||recorded||^2)`` (through the sketch for a sketched tensor)."""
  actual = np.asarray(actual, np.float64)
  if key in saved:
    desired = np.asarray(saved[key], np.float64)
    if desired.shape != actual.shape:
      raise AssertionError(f"{key}: shape {actual.shape}, recorded {desired.shape}")
    return float(np.sum((actual - desired) ** 2)), float(np.sum(desired**2))
  diff = sketch(name, actual) - saved[f"{key}#sketch"]
  return float(np.sum(diff**2)), float(saved[f"{key}#norm"]) ** 2


def group_error(saved: Mapping[str, np.ndarray], entries: Iterable[tuple[str, str, np.ndarray]]
                ) -> float:
  """Relative L2 difference over a group of ``(key, name, actual)``, as
  ``tests.tolerances.relative_errors`` measures a group."""
  diff = norm = 0.0
  for key, name, actual in entries:
    d, n = squared_error(saved, key, name, actual)
    diff, norm = diff + d, norm + n
  return float(np.sqrt(diff / max(norm, 1e-30)))


def save(path: pathlib.Path, entries: Mapping[str, np.ndarray]) -> None:
  """Writes ``entries`` (float, integer or string arrays) as one compressed npz (see the module's
  docstring); :func:`load` gives them back, floats as float32."""
  parts: dict[str, list[np.ndarray]] = {"f": [], "i": []}
  sizes = {"f": 0, "i": 0}
  index = {}
  for key in sorted(entries):
    value = np.asarray(entries[key])
    if value.dtype.kind == "U":
      index[key] = ["s", str(value)]
      continue
    kind = "f" if value.dtype.kind == "f" else "i"
    index[key] = [kind, sizes[kind], list(value.shape)]
    parts[kind].append(value.reshape(-1))
    sizes[kind] += value.size
  np.savez_compressed(path, index=np.asarray(json.dumps(index)),
                      floats=np.concatenate(parts["f"]).astype(np.float32),
                      ints=np.concatenate(parts["i"]).astype(np.int64))


def load(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The entries :func:`save` wrote."""
  with np.load(path) as data:
    index = json.loads(str(data["index"]))
    arrays = {"f": data["floats"], "i": data["ints"]}
  out = {}
  for key, (kind, *where) in index.items():
    if kind == "s":
      out[key] = np.asarray(where[0])
    else:
      offset, shape = where
      out[key] = arrays[kind][offset:offset + int(np.prod(shape))].reshape(shape)
  return out
