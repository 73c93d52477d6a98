"""Manifold mixup of a plain Flax classifier's hidden state with ``amr_jax.mixers``.

The part between the snippet markers is shown in README.md ("Using the mixers in your own code");
tests/test_readme_snippet.py checks that the two stay identical. Run from the repository root:

    python -m examples.manifold_mixup
"""

# [START snippet]
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from amr_jax import mixers


class MLP(nn.Module):  # any classifier, split into features -> head
  classes: int = 4

  def setup(self):
    self.hidden = nn.Dense(64)
    self.out = nn.Dense(self.classes)

  def features(self, x):
    return nn.relu(self.hidden(x))

  def head(self, h):
    return self.out(h)

  def __call__(self, x):
    return self.head(self.features(x))


model, tx = MLP(), optax.adam(1e-2)


def loss_fn(params, key, x, y):
  key_pairs, key_mix = jax.random.split(key)
  h = model.apply(params, x, method=MLP.features)  # (B, 64)
  hs = mixers.partners(key_pairs, h, 2)  # (k=2, B, 64): the batch and a shuffled copy
  mixed, w = mixers.mixup(key_mix, hs)  # w: (2, B, 1)
  # The same key gives the labels the same permutation; mix them with the same weights.
  ys = mixers.partners(key_pairs, jax.nn.one_hot(y, model.classes), 2)
  y_mix = jnp.sum(w.reshape(2, -1, 1) * ys, axis=0)
  logits = model.apply(params, mixed, method=MLP.head)
  return optax.softmax_cross_entropy(logits, y_mix).mean()


@jax.jit
def train_step(params, opt_state, key, x, y):
  loss, grads = jax.value_and_grad(loss_fn)(params, key, x, y)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss
# [END snippet]


def main(steps: int = 60, seed: int = 0) -> list[float]:
  """Trains on a random, learnable toy problem; returns the loss of every step."""
  key_data, key_init, key_train = jax.random.split(jax.random.key(seed), 3)
  key_x, key_w = jax.random.split(key_data)
  x = jax.random.normal(key_x, (256, 16))
  y = jnp.argmax(x @ jax.random.normal(key_w, (16, model.classes)), axis=-1)
  params = model.init(key_init, x)
  opt_state = tx.init(params)
  losses = []
  for step, key in enumerate(jax.random.split(key_train, steps)):
    params, opt_state, loss = train_step(params, opt_state, key, x, y)
    losses.append(float(loss))
    if step % 10 == 0 or step == steps - 1:
      print(f"step {step:3d}  loss {losses[-1]:.4f}")
  return losses


if __name__ == "__main__":
  main()
