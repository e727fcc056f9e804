"""Per-example losses against independent formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlrobust import losses


def test_cross_entropy_matches_optax():
  logits = jax.random.normal(jax.random.key(0), (6, 10))
  labels = jnp.arange(6)
  got = losses.cross_entropy(logits, None, jax.nn.one_hot(labels, 10))
  assert got.shape == (6,)
  np.testing.assert_allclose(
      got, optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      rtol=1e-5)


def test_mse_matches_numpy():
  rng = np.random.default_rng(0)
  out, tgt = rng.uniform(-1, 1, (5, 128)), rng.uniform(-1, 1, (5, 128))
  got = losses.mean_squared_error(None, jnp.asarray(out), jnp.asarray(tgt))
  np.testing.assert_allclose(got, ((out - tgt) ** 2).mean(-1), rtol=1e-5)


def test_unknown_loss_lists_choices():
  with pytest.raises(ValueError, match=r"\['ce', 'mse'\]"):
    losses.get('hinge')
