"""Convolution paths (amr_jax/convolution.py): every path computes XLA's convolution, its input
gradient and its kernel gradient, under jit, vmap and grad, and the networks built on one train
as on XLA's."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax import convolution
from amr_jax import networks

PATHS = [p for p in convolution.CONV_PATHS if p not in ("auto", "xla")]
DN = ("NHWC", "HWIO", "NHWC")
# float32 sums in another order; a dropped or doubled slice is off by O(1).
RTOL = 2e-5


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _case(batch, size, c_in, c_out, kernel, padding, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, size, size, c_in), np.float32))
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in, c_out), np.float32))
  out = jax.eval_shape(lambda: jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                                           dimension_numbers=DN))
  g = jnp.asarray(rng.standard_normal(out.shape, np.float32))
  return x, w, g, padding


def _value_and_grads(fn, x, w, g, padding):
  conv = lambda x_, w_: fn(x_, w_, (1, 1), padding, dimension_numbers=DN)
  out, vjp = jax.vjp(conv, x, w)
  return (out, *vjp(g))


CASES = {
    "3x3, batch 40 (slices of 16: 16, 16, 8)": (40, 8, 3, 5, 3, "SAME"),
    "1x1 padded as the authors' input conv": (20, 6, 1, 4, 1, ((1, 1), (1, 1))),
    "batch under one slice": (5, 4, 2, 3, 3, "SAME"),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(CASES))
def test_path_equals_xla_forward_and_gradients(path, case):
  x, w, g, padding = _case(*CASES[case])
  fn = convolution.conv_general_dilated(path)
  fn = functools.partial(fn, chunk=16) if path == "chunked_weight_grad" else fn
  want = _value_and_grads(jax.lax.conv_general_dilated, x, w, g, padding)
  got = jax.jit(lambda *a: _value_and_grads(fn, *a, padding))(x, w, g)
  for name, a, b in zip(("output", "input grad", "kernel grad"), got, want):
    chex.assert_equal_shape([a, b])
    assert _rel(a, b) < RTOL, (path, name, _rel(a, b))


def test_a_dropped_slice_fails_the_same_check():
  """Negative control: the kernel gradient without its last slice is far off."""
  x, w, g, padding = _case(*CASES["3x3, batch 40 (slices of 16: 16, 16, 8)"])
  _, _, dw = _value_and_grads(jax.lax.conv_general_dilated, x, w, g, padding)
  _, _, partial_dw = _value_and_grads(jax.lax.conv_general_dilated, x[:32], w, g[:32], padding)
  assert _rel(partial_dw, dw) > 100 * RTOL


@pytest.mark.parametrize("path", PATHS)
def test_path_under_vmap_and_second_order_grad(path):
  """Seeds side by side (vmap over a leading axis), and grad of a grad (custom VJPs)."""
  x, w, _, padding = _case(3, 6, 2, 3, 3, "SAME")
  fn = convolution.conv_general_dilated(path)
  loss = lambda f, x_, w_: jnp.sum(jnp.tanh(f(x_, w_, (1, 1), padding, dimension_numbers=DN)))
  xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, -w])
  want = jax.vmap(jax.grad(functools.partial(loss, jax.lax.conv_general_dilated), 1))(xs, ws)
  got = jax.jit(jax.vmap(jax.grad(functools.partial(loss, fn), 1)))(xs, ws)
  assert _rel(got, want) < RTOL
  if path in ("batch_slices", "nchw"):  # plain autodiff: any order
    hess = lambda f: jax.grad(lambda w_: jnp.sum(jax.grad(functools.partial(loss, f), 1)(x, w_)))
    assert _rel(hess(fn)(w), hess(jax.lax.conv_general_dilated)(w)) < 1e-4


def test_auto_is_chunked_on_cpu_and_xla_elsewhere():
  assert convolution.resolve("auto", "cpu") == "chunked_weight_grad"
  assert convolution.resolve("auto", "gpu") == convolution.resolve("auto", "tpu") == "xla"
  assert convolution.resolve("nchw", "gpu") == "nchw"
  assert convolution.conv_general_dilated("xla") is None  # Flax's own
  with pytest.raises(ValueError, match="unknown conv path 'winograd'"):
    convolution.resolve("winograd")


@pytest.mark.parametrize("path", ["chunked_weight_grad", "nchw"])
def test_acai32_networks_on_a_path_equal_xla(path):
  """G and D built on ``path``: the same parameters, outputs and gradients as on XLA's."""
  build = lambda p: networks.build("acai32", image_channels=1, num_classes=10, width=4,
                                   conv_path=p)
  plain, other = build("xla"), build(path)
  x = jax.random.uniform(jax.random.key(0), (20, 32, 32, 1), minval=-1, maxval=1)  # 16 + 4
  d_vars = plain.discriminator.init(jax.random.key(1), x, update_stats=False)
  assert jax.tree.all(jax.tree.map(
      lambda a, b: bool(jnp.all(a == b)), d_vars,
      other.discriminator.init(jax.random.key(1), x, update_stats=False)))

  def d_loss(nets, params):
    return jnp.mean(nets.discriminator.apply({**d_vars, "params": params}, x,
                                             update_stats=False) ** 2)

  e_vars = plain.encoder.init(jax.random.key(2), x)
  dec_vars = plain.decoder.init(jax.random.key(3), plain.encoder.apply(e_vars, x))

  def ae_loss(nets, params):
    h = nets.encoder.apply({"params": params[0]}, x)
    return jnp.mean(jnp.abs(nets.decoder.apply({"params": params[1]}, h) - x))

  for loss, params in ((d_loss, d_vars["params"]),
                       (ae_loss, (e_vars["params"], dec_vars["params"]))):
    want_loss, want = jax.value_and_grad(functools.partial(loss, plain))(params)
    got_loss, got = jax.jit(jax.value_and_grad(functools.partial(loss, other)))(params)
    assert _rel(got_loss, want_loss) < RTOL
    flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])
    assert _rel(flat(got), flat(want)) < RTOL  # the group's relative L2, as tests/tolerances
