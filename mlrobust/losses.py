"""Per-example training losses ([B]); reduce at the call site.

Every loss takes the head's pre-activations, its outputs (after softmax or tanh)
and the target vectors of the examples ([B, d] rows of the target
representation), so that one signature serves cross-entropy (which needs the
logits for numerical stability) and mean-squared error (on the outputs).
"""

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, outputs: jax.Array,
                  target_vectors: jax.Array) -> jax.Array:
  """-sum_k t_k log softmax(logits)_k per example; t one-hot (or soft)."""
  del outputs  # Computed from the logits, which is stable.
  return -jnp.sum(target_vectors * jax.nn.log_softmax(logits), axis=-1)


def mean_squared_error(logits: jax.Array, outputs: jax.Array,
                       target_vectors: jax.Array) -> jax.Array:
  """mean_j (o_j - t_j)^2 per example, on the head outputs."""
  del logits
  return jnp.mean(jnp.square(outputs - target_vectors), axis=-1)


LOSSES = {'ce': cross_entropy, 'mse': mean_squared_error}


def get(name: str):
  """The per-example loss `name`; raises ValueError listing valid names."""
  try:
    return LOSSES[name]
  except KeyError:
    raise ValueError(f'unknown loss {name!r}; choose one of '
                     f'{sorted(LOSSES)}') from None
