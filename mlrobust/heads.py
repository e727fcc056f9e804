"""Target representations, head activations and the generic distance decoding.

A head maps the trunk's pre-activations into the target space (softmax over K
classes, or tanh over d units); every class has a target representation in that
space (a one-hot vector, or a codeword drawn once from U(-1, 1)^d with a secret
key, Saito & Roy Section 3.2). Decoding is one rule for every head: the score of
class k is minus the Euclidean distance between the output and target k, and
the prediction is the nearest target (Section 3.1). For softmax outputs with
one-hot targets this is the usual argmax, because
||p - e_k||^2 = ||p||^2 + 1 - 2 p_k.
"""

import jax
import jax.numpy as jnp

ACTIVATIONS = {
    'softmax': jax.nn.softmax,
    'tanh': jnp.tanh,
    'identity': lambda logits: logits,
}
TARGETS = ('onehot', 'codebook')
# 'bpda:<name>' is activation <name> in the forward pass and the identity in
# the backward one (Athalye, Carlini & Wagner 2018's BPDA, with the identity
# as the surrogate): an attack that differentiates through it is not stopped
# by a saturated tanh or softmax. Attacks only; never a config value.
BPDA_PREFIX = 'bpda:'


def activate(name: str, logits: jax.Array) -> jax.Array:
  """Applies the head activation `name` to pre-activations [..., d]."""
  if name.startswith(BPDA_PREFIX):
    forward = activate(name[len(BPDA_PREFIX):], logits)
    return logits + jax.lax.stop_gradient(forward - logits)
  try:
    fn = ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f'unknown head activation {name!r}; choose one of '
                     f'{sorted(ACTIVATIONS)}') from None
  return fn(logits)


def make_codebook(key: jax.Array, num_classes: int, dim: int) -> jax.Array:
  """K codewords drawn once from U(-1, 1)^d: [num_classes, dim] float32."""
  if num_classes < 2 or dim < 1:
    raise ValueError(f'a codebook needs num_classes >= 2 and dim >= 1, got '
                     f'num_classes={num_classes}, dim={dim}')
  return jax.random.uniform(key, (num_classes, dim), jnp.float32, -1.0, 1.0)


def make_targets(kind: str, num_classes: int, dim: int,
                 key: jax.Array | None = None) -> jax.Array:
  """Target representations [num_classes, dim] of kind 'onehot' or 'codebook'.

  Raises:
    ValueError: for an unknown kind, a one-hot `dim` other than `num_classes`,
      or a codebook without a key.
  """
  if kind == 'onehot':
    if dim != num_classes:
      raise ValueError(f'one-hot targets need head.dim == num_classes '
                       f'({num_classes}), got {dim}')
    return jnp.eye(num_classes, dtype=jnp.float32)
  if kind == 'codebook':
    if key is None:
      raise ValueError('codebook targets need a key')
    return make_codebook(key, num_classes, dim)
  raise ValueError(f'unknown target representation {kind!r}; choose one of '
                   f'{list(TARGETS)}')


def squared_distances(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Squared Euclidean distances [B, K] of outputs [B, d] to targets [K, d]."""
  return jnp.sum(jnp.square(outputs[:, None, :] - targets[None, :, :]), axis=-1)


def distances(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Euclidean distances [B, K] between outputs [B, d] and targets [K, d]."""
  sq = squared_distances(outputs, targets)
  # sqrt has an infinite derivative at 0; the floor keeps gradients finite when
  # an output lands exactly on a target.
  return jnp.sqrt(jnp.maximum(sq, 1e-20))


def class_scores(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Class scores [B, K]: minus the distance to each class's target."""
  return -distances(outputs, targets)


def predict(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Index [B] of the nearest target (int32)."""
  return jnp.argmax(class_scores(outputs, targets), axis=-1).astype(jnp.int32)
