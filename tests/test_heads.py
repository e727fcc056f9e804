"""Tests for target representations and the distance decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlrobust import heads


def test_softmax_onehot_decoding_equals_argmax():
  logits = jax.random.normal(jax.random.key(0), (500, 10)) * 3
  probs = jax.nn.softmax(logits)
  pred = heads.predict(probs, heads.make_targets('onehot', 10, 10))
  np.testing.assert_array_equal(pred, jnp.argmax(logits, -1))


def test_distances_match_numpy():
  rng = np.random.default_rng(0)
  out, tgt = rng.normal(size=(4, 7)), rng.normal(size=(3, 7))
  expected = np.linalg.norm(out[:, None] - tgt[None], axis=-1)
  np.testing.assert_allclose(heads.distances(jnp.asarray(out),
                                             jnp.asarray(tgt)), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(
      heads.class_scores(jnp.asarray(out), jnp.asarray(tgt)), -expected,
      rtol=1e-5)


def test_nearest_codeword_is_predicted():
  codebook = heads.make_codebook(jax.random.key(1), 10, 128)
  noisy = codebook[jnp.array([3, 7, 0])] + 0.05
  np.testing.assert_array_equal(heads.predict(noisy, codebook), [3, 7, 0])


def test_codebook_is_uniform_in_box_and_keyed():
  a = heads.make_codebook(jax.random.key(5), 10, 128)
  b = heads.make_codebook(jax.random.key(5), 10, 128)
  c = heads.make_codebook(jax.random.key(6), 10, 128)
  assert a.shape == (10, 128)
  assert float(a.min()) >= -1 and float(a.max()) <= 1
  assert float(a.min()) < -0.9 and float(a.max()) > 0.9
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_gradient_is_finite_on_a_target():
  targets = jnp.eye(3)
  grad = jax.grad(lambda o: heads.class_scores(o, targets).sum())(
      targets[:1])
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('kwargs, match', [
    (dict(kind='onehot', num_classes=10, dim=128), 'head.dim == num_classes'),
    (dict(kind='bits', num_classes=10, dim=10), 'onehot'),
    (dict(kind='codebook', num_classes=10, dim=8), 'key'),
])
def test_bad_targets_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    heads.make_targets(**kwargs)


def test_unknown_activation_lists_choices():
  with pytest.raises(ValueError, match='softmax'):
    heads.activate('relu', jnp.zeros(3))
