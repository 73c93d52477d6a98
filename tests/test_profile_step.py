"""The step profiler finds every convolution and matmul, forward and backward, and times them."""

import jax
import jax.numpy as jnp

from benchmarks import profile_step


def loss(params, x):
  h = jax.lax.conv_general_dilated(x, params["conv"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jnp.tanh(h.reshape(x.shape[0], -1) @ params["dense"]))


def test_finds_forward_and_backward_contractions_inside_jit():
  params = {"conv": jnp.ones((3, 3, 2, 4)), "dense": jnp.ones((8 * 8 * 4, 5))}
  x = jnp.ones((2, 8, 8, 2))
  # Gradient with respect to the parameters and the input: the conv then appears three times
  # (forward, input gradient, weight gradient), and so does the matmul.
  jaxpr = jax.make_jaxpr(jax.jit(jax.grad(loss, argnums=(0, 1))))(params, x).jaxpr
  found = profile_step.contractions(jaxpr)
  names = [eqn.primitive.name for eqn in found]
  assert names.count("conv_general_dilated") == 3 and names.count("dot_general") == 3
  labels = {profile_step._signature(eqn) for eqn in found}  # pylint: disable=protected-access
  assert len(labels) == 6  # each distinct op has its own label


def test_times_one_equation_with_its_flops():
  params = {"conv": jnp.ones((3, 3, 2, 4)), "dense": jnp.ones((8 * 8 * 4, 5))}
  jaxpr = jax.make_jaxpr(loss)(params, jnp.ones((2, 8, 8, 2))).jaxpr
  conv = next(e for e in profile_step.contractions(jaxpr)
              if e.primitive.name == "conv_general_dilated")
  timing = profile_step.time_alone(conv, reps=2, windows=1)
  assert timing["seconds"] > 0
  # 2 FLOPs per multiply-add: batch 2, 4 output channels, 2 input channels, and the 3x3 taps
  # that land inside the 8x8 image (XLA skips the zero padding): 8 * 3 - 2 = 22 per axis.
  assert timing["flops"] == 2 * 2 * 4 * 2 * 22 * 22
