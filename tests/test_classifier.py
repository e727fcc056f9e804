"""The classifier view on a plain linear function and on a DenseNet."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import classifier
from mlrobust import heads
from mlrobust.models import densenet


def _linear(seed=0, k=3, d=4):
  w = jax.random.normal(jax.random.key(seed), (2 * 2 * 1, d))
  targets = heads.make_codebook(jax.random.key(seed + 1), k, d)
  fn = lambda params, x: x.reshape(len(x), -1) @ params
  return classifier.from_function(fn, targets, params=w, activation='tanh',
                                  loss='mse'), w, targets


def test_linear_function_view_matches_manual_computation():
  clf, w, targets = _linear()
  x = jax.random.uniform(jax.random.key(2), (5, 2, 2, 1))
  y = jnp.array([0, 1, 2, 0, 1])
  out = np.tanh(np.asarray(x).reshape(5, -1) @ np.asarray(w))
  dist = np.linalg.norm(out[:, None] - np.asarray(targets)[None], axis=-1)
  ev = clf.evaluate(x, y)
  np.testing.assert_allclose(ev.outputs, out, rtol=1e-5)
  np.testing.assert_allclose(ev.scores, -dist, rtol=1e-5)
  np.testing.assert_array_equal(ev.prediction, dist.argmin(-1))
  np.testing.assert_allclose(
      ev.loss, ((out - np.asarray(targets)[y]) ** 2).mean(-1), rtol=1e-5)
  np.testing.assert_allclose(clf.loss(x, y), ev.loss)
  np.testing.assert_array_equal(clf.predict(x), ev.prediction)


def test_softmax_ce_view_on_closed_function():
  w = jnp.array([[1.0, -1.0], [0.5, 2.0], [0.0, 0.0], [1.0, 1.0]])
  clf = classifier.from_function(lambda x: x.reshape(len(x), -1) @ w,
                                 jnp.eye(2), activation='softmax', loss='ce')
  x = jnp.ones((1, 2, 2, 1))
  logits = np.array([[2.5, 2.0]])
  np.testing.assert_allclose(clf.loss(x, jnp.array([1])),
                             np.log(np.exp(logits).sum()) - 2.0, rtol=1e-5)
  assert int(clf.predict(x)[0]) == 0


def test_classifiers_of_one_architecture_share_a_compilation():
  model = densenet.DenseNet(num_outputs=3, depth=7, growth_rate=2,
                            stem_features=2, stem_stride=2)
  x = jnp.zeros((2, 8, 8, 1))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def predict(clf, x):
    return clf.predict(x)

  for seed in range(3):
    variables = model.init(jax.random.key(seed), x)
    clf = classifier.from_model(model, variables, jnp.eye(3),
                                activation='softmax', loss='ce')
    predict(clf, x)
