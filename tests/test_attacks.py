"""Attacks: closed forms on affine models, properties, a trained model."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlrobust import attacks
from mlrobust import classifier
from mlrobust import heads
from tests import conftest

SHAPE = (4, 4, 1)
N_PIX = 16


def _affine(seed=0, k=3, activation='identity', loss='ce', targets=None):
  """z = W x + b with one-hot targets: decoding = argmax z (affine scores)."""
  kw, kb = jax.random.split(jax.random.key(seed))
  w = jax.random.normal(kw, (N_PIX, k))
  b = 0.3 * jax.random.normal(kb, (k,))
  fn = lambda p, x: x.reshape(len(x), -1) @ p[0] + p[1]
  targets = jnp.eye(k) if targets is None else targets
  return classifier.from_function(fn, targets, params=(w, b),
                                  activation=activation, loss=loss), w, b


def _mid_images(n, seed=1):
  """Images near 0.5, so that small perturbations never touch the box."""
  return np.asarray(0.5 + 0.05 * jax.random.uniform(
      jax.random.key(seed), (n, *SHAPE), minval=-1, maxval=1), np.float32)


def _nearest_boundary(w, b, x):
  """Analytic minimal L2 perturbations [n, N_PIX] to leave argmax z."""
  w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
  flat = x.reshape(len(x), -1).astype(np.float64)
  z = flat @ w + b
  out = []
  for zi, yi in zip(z, z.argmax(1)):
    best = None
    for k in range(w.shape[1]):
      if k == yi:
        continue
      a = w[:, k] - w[:, yi]
      delta = (zi[yi] - zi[k]) / (a @ a) * a
      if best is None or np.linalg.norm(delta) < np.linalg.norm(best):
        best = delta
    out.append(best)
  return np.stack(out)


def test_fgsm_is_eps_sign_of_the_analytic_gradient():
  clf, w, b = _affine(activation='softmax')
  x = _mid_images(6)
  y = np.array([0, 1, 2, 0, 1, 2], np.int32)
  z = x.reshape(6, -1) @ np.asarray(w) + np.asarray(b)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad = (p - np.eye(3)[y]) @ np.asarray(w).T  # d CE / d x
  result = attacks.fgsm(clf, x, y, eps=0.01)
  np.testing.assert_allclose(result.adv.reshape(6, -1) - x.reshape(6, -1),
                             0.01 * np.sign(grad), atol=1e-6)
  targeted = attacks.fgsm(clf, x, y, targeted=True, eps=0.01)
  np.testing.assert_allclose(targeted.adv.reshape(6, -1) - x.reshape(6, -1),
                             -0.01 * np.sign(grad), atol=1e-6)


@pytest.mark.parametrize('scores', ['distance', 'logits'])
def test_deepfool_finds_the_analytic_minimal_perturbation(scores):
  clf, w, b = _affine()
  x = _mid_images(8)
  expected = _nearest_boundary(w, b, x)
  y = np.asarray(clf.predict(jnp.asarray(x)))
  result = attacks.deepfool(clf, x, y, overshoot=0.02, scores=scores)
  delta = (result.adv - x).reshape(8, -1)
  assert result.success.all()
  np.testing.assert_allclose(np.linalg.norm(delta, axis=1),
                             1.02 * np.linalg.norm(expected, axis=1),
                             rtol=2e-3)
  cosine = np.sum(delta * expected, 1) / (
      np.linalg.norm(delta, axis=1) * np.linalg.norm(expected, axis=1))
  np.testing.assert_allclose(cosine, 1.0, atol=1e-4)


@pytest.mark.parametrize('attack', [attacks.cw_l2, attacks.cw_l2_distance])
def test_cw_is_within_a_few_percent_of_the_minimum(attack):
  clf, w, b = _affine()
  x = _mid_images(8)
  minimum = np.linalg.norm(_nearest_boundary(w, b, x), axis=1)
  y = np.asarray(clf.predict(jnp.asarray(x)))
  result = attack(clf, x, y, initial_const=1.0, learning_rate=1e-2,
                  max_iterations=500)
  assert result.success.all()
  assert np.all(result.l2 >= minimum * (1 - 1e-4))  # Nothing beats it.
  assert np.all(result.l2 <= minimum * 1.05)


@pytest.mark.parametrize('name', ['fgsm', 'bim', 'mim', 'pgd', 'cw_l2',
                                  'cw_l2_distance', 'lbfgs'])
def test_targeted_attacks_reach_the_target(name):
  clf, _, _ = _affine(activation='softmax')
  x = _mid_images(6)
  y = np.asarray(clf.predict(jnp.asarray(x)))
  t = attacks.random_targets(jax.random.key(0), y, 3)
  assert np.all(t != y)
  kwargs = {'eps': 0.5, 'eps_iter': 0.05} if name in (
      'bim', 'mim', 'pgd') else {'eps': 0.5} if name == 'fgsm' else {
          'initial_const': 10.0, 'max_iterations': 200}
  result = attacks.get(name)(clf, x, t, targeted=True, **kwargs)
  np.testing.assert_array_equal(result.success, result.prediction == t)
  np.testing.assert_array_equal(
      result.prediction, np.asarray(clf.predict(jnp.asarray(result.adv))))
  if name != 'fgsm':  # One step need not suffice.
    assert result.success.all()


def _densenet_classifier(head='tanh'):
  from mlrobust.models import densenet  # pylint: disable=g-import-not-at-top
  model = densenet.DenseNet(num_outputs=8 if head == 'tanh' else 3, depth=7,
                            growth_rate=2, stem_features=2, stem_stride=2)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  targets = (heads.make_codebook(jax.random.key(1), 3, 8) if head == 'tanh'
             else jnp.eye(3))
  return classifier.from_model(model, variables, targets, activation=head,
                               loss='mse')


@pytest.mark.parametrize('name', ['fgsm', 'bim', 'mim', 'pgd'])
@pytest.mark.parametrize('targeted', [False, True])
def test_linf_attacks_stay_in_ball_and_box(name, targeted):
  clf = _densenet_classifier()
  x = np.array(jax.random.uniform(jax.random.key(3), (5, 8, 8, 1)))
  x[0] = 0.0
  x[1] = 1.0  # Saturated images test the box.
  x_copy = x.copy()
  y = np.array([0, 1, 2, 0, 1], np.int32)
  result = attacks.get(name)(clf, x, y, targeted=targeted, eps=0.1,
                             rng=jax.random.key(4))
  np.testing.assert_array_equal(x, x_copy)  # Input untouched.
  assert np.all(np.abs(result.adv - x) <= 0.1 + 1e-6)
  assert result.adv.min() >= 0 and result.adv.max() <= 1
  np.testing.assert_allclose(result.linf, np.abs(result.adv - x).reshape(
      5, -1).max(1), rtol=1e-6)


def test_pgd_randomness_is_seeded():
  clf = _densenet_classifier()
  x = np.asarray(jax.random.uniform(jax.random.key(3), (4, 8, 8, 1)))
  y = np.zeros(4, np.int32)
  a = attacks.pgd(clf, x, y, eps=0.1, nb_iter=1, rng=jax.random.key(1))
  b = attacks.pgd(clf, x, y, eps=0.1, nb_iter=1, rng=jax.random.key(1))
  c = attacks.pgd(clf, x, y, eps=0.1, nb_iter=1, rng=jax.random.key(2))
  np.testing.assert_array_equal(a.adv, b.adv)
  assert not np.array_equal(a.adv, c.adv)


def test_batches_give_the_same_result_as_one_call():
  clf = _densenet_classifier()
  x = np.asarray(jax.random.uniform(jax.random.key(3), (5, 8, 8, 1)))
  y = np.zeros(5, np.int32)
  whole = attacks.bim(clf, x, y, eps=0.1, nb_iter=3)
  parts = attacks.bim(clf, x, y, eps=0.1, nb_iter=3, batch_size=2)
  np.testing.assert_allclose(whole.adv, parts.adv, atol=1e-5)


def test_eps_sweep_compiles_once():
  clf = _densenet_classifier()
  x = np.asarray(jax.random.uniform(jax.random.key(3), (4, 8, 8, 1)))
  y = np.zeros(4, np.int32)
  attacks.pgd(clf, x, y, eps=0.01, nb_iter=2)  # Compiles.
  with conftest.count_compiles() as compiles:
    for eps in (0.05, 0.1, 0.2):
      attacks.pgd(clf, x, y, eps=eps, nb_iter=2)
  assert not compiles
  # The counter sees compilations: a static parameter does compile anew.
  with conftest.count_compiles() as compiles:
    attacks.pgd(clf, x, y, eps=0.05, nb_iter=3)
  assert compiles


def test_c_sweep_compiles_once():
  clf = _densenet_classifier()
  x = np.asarray(jax.random.uniform(jax.random.key(3), (4, 8, 8, 1)))
  y = np.zeros(4, np.int32)
  for name in ('cw_l2', 'cw_l2_distance', 'lbfgs'):
    fn = functools.partial(attacks.get(name), clf, x, (y + 1) % 3,
                           targeted=True, max_iterations=3,
                           binary_search_steps=2)
    fn(initial_const=0.01)  # Compiles.
    with conftest.count_compiles() as compiles:
      for c in (0.1, 1.0, 10.0):
        fn(initial_const=c)
    assert not compiles, name


def test_cw_distance_success_agrees_with_decoding_on_codewords():
  codebook = heads.make_codebook(jax.random.key(7), 3, 8)
  w = 2.0 * jax.random.normal(jax.random.key(8), (N_PIX, 8))
  clf = classifier.from_function(lambda x: x.reshape(len(x), -1) @ w - 4.0,
                                 codebook, activation='tanh', loss='mse')
  x = np.asarray(jax.random.uniform(jax.random.key(5), (6, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  t = attacks.random_targets(jax.random.key(6), y, 3)
  result = attacks.cw_l2_distance(clf, x, t, targeted=True,
                                  initial_const=10.0, max_iterations=200)
  pred = np.asarray(clf.predict(jnp.asarray(result.adv)))
  np.testing.assert_array_equal(result.success, pred == t)
  dist = np.array(heads.distances(clf.outputs(jnp.asarray(result.adv)),
                                    clf.targets))
  own = dist[np.arange(6), t]
  dist[np.arange(6), t] = np.inf
  np.testing.assert_array_equal(result.success, own <= dist.min(1))
  assert result.success.any()
  np.testing.assert_array_equal(result.adv[~result.success],
                                x[~result.success])


def test_cw_distance_in_logit_space_by_hand_and_on_a_saturated_softmax():
  # The paper's wording: D between the logits z and the targets. On one-hot
  # targets f = max(D(z, e_t) - min_{i != t} D(z, e_i), 0) is zero exactly
  # when argmax z = t, like the logit margin.
  rng = np.random.default_rng(0)
  z = rng.normal(size=(64, 5)).astype(np.float32)
  t = rng.integers(0, 5, 64)
  clf, _, _ = _affine(k=5, activation='softmax')
  f = np.asarray(attacks.cw._f(clf, jnp.asarray(z), jnp.asarray(t),
                               margin='logit_distance', targeted=True,
                               confidence=0.0))
  d = np.linalg.norm(z[:, None, :] - np.eye(5)[None], axis=2)
  own = d[np.arange(64), t]
  d[np.arange(64), t] = np.inf
  np.testing.assert_allclose(f, np.maximum(own - d.min(1), 0), atol=1e-6)
  np.testing.assert_array_equal(f == 0, z.argmax(1) == t)
  # A softmax saturated to 1.0 in float32 has no gradient in probability
  # space: the default (outputs) reading cannot move; the logit reading can.
  w = jax.random.normal(jax.random.key(3), (N_PIX, 3))
  fn = lambda x: 400.0 * (x.reshape(len(x), -1) - 0.5) @ w
  clf = classifier.from_function(fn, jnp.eye(3), activation='softmax',
                                 loss='ce')
  x = np.asarray(jax.random.uniform(jax.random.key(4), (6, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  assert np.all(np.asarray(clf.outputs(jnp.asarray(x))).max(1) == 1.0)
  t = attacks.random_targets(jax.random.key(6), y, 3)
  kw = dict(targeted=True, initial_const=10.0, learning_rate=0.05,
            max_iterations=100, binary_search_steps=2)
  outputs = attacks.cw_l2_distance(clf, x, t, **kw)
  logits = attacks.cw_l2_distance(clf, x, t, space='logits', **kw)
  assert not outputs.success.any()
  assert logits.success.all()
  pred = np.asarray(clf.predict(jnp.asarray(logits.adv)))
  np.testing.assert_array_equal(pred, t)


def _codeword_linear(d=32, k=4, seed=7, scale=2.0, bias=-4.0):
  codebook = heads.make_codebook(jax.random.key(seed), k, d)
  w = scale * jax.random.normal(jax.random.key(seed + 1), (N_PIX, d))
  return classifier.from_function(lambda x: x.reshape(len(x), -1) @ w + bias,
                                  codebook, activation='tanh', loss='mse')


def test_cw_l2_on_codewords_keeps_the_iterates_that_decode_as_the_target():
  # With codeword labels the logit margin f never reaches 0; an iterate is
  # kept when the decoding reaches the target (it used to need f <= 0 too,
  # so cw_l2 could never succeed on a codeword head).
  clf = _codeword_linear(scale=1.0, bias=0.0)
  x = np.asarray(jax.random.uniform(jax.random.key(5), (6, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  t = attacks.random_targets(jax.random.key(6), y, 4)
  result = attacks.cw_l2(clf, x, t, targeted=True, initial_const=1.0,
                         max_iterations=200, binary_search_steps=3)
  pred = np.asarray(clf.predict(jnp.asarray(result.adv)))
  np.testing.assert_array_equal(result.success, pred == t)
  assert result.success.sum() >= 2, result.success  # Was 0 of 6.
  np.testing.assert_array_equal(result.adv[~result.success],
                                x[~result.success])
  assert np.all(result.l2[result.success] > 0)


@pytest.mark.parametrize('name, kwargs', [
    ('fgsm', dict(eps=0.1)),
    ('bim', dict(eps=0.1, nb_iter=3)),
    ('mim', dict(eps=0.1, nb_iter=3)),
    ('pgd', dict(eps=0.1, nb_iter=3)),
    ('deepfool', dict(max_iter=5, nb_candidate=4)),
    ('cw_l2', dict(initial_const=1.0, max_iterations=30,
                   binary_search_steps=2)),
    ('cw_l2_distance', dict(initial_const=1.0, max_iterations=30,
                            binary_search_steps=2)),
    ('lbfgs', dict(initial_const=1.0, max_iterations=5,
                   binary_search_steps=2)),
    ('square', dict(eps=0.1, n_queries=50)),
    ('apgd', dict(eps=0.1, n_iter=20)),
    ('apgd', dict(eps=0.3, n_iter=20, norm='l2')),
    ('hop_skip_jump', dict(eps=0.05, n_queries=400)),
])
def test_an_examples_result_does_not_depend_on_its_batch(name, kwargs):
  clf = _codeword_linear()
  x = np.asarray(jax.random.uniform(jax.random.key(5), (5, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  targeted = name != 'deepfool' and name in ('lbfgs', 'cw_l2_distance')
  goal = attacks.random_targets(jax.random.key(6), y, 4) if targeted else y
  fn = functools.partial(attacks.get(name), clf, targeted=targeted,
                         rng=jax.random.key(3), **kwargs)
  together = fn(x, goal)
  for i in range(len(x)):
    alone = fn(x[i:i + 1], goal[i:i + 1])
    np.testing.assert_allclose(together.adv[i], alone.adv[0], atol=1e-5)
    assert together.success[i] == alone.success[0]
  # And in another order.
  order = np.array([3, 0, 4, 2, 1])
  shuffled = fn(x[order], goal[order])
  np.testing.assert_allclose(shuffled.adv, together.adv[order], atol=1e-5)


def _trained_mlp():
  """A small MLP trained to ~100% on 3 synthetic classes of 8x8 images."""
  rng = np.random.default_rng(0)
  n = 600
  y = rng.integers(0, 3, n)
  x = rng.uniform(0, 0.3, (n, 8, 8, 1)).astype(np.float32)
  for i, k in enumerate(y):
    x[i, 2 * k:2 * k + 3, 1:7, 0] += 0.6
  x = np.clip(x, 0, 1)

  def fn(p, x):
    h = jnp.tanh(x.reshape(len(x), -1) @ p['w1'] + p['b1'])
    return h @ p['w2'] + p['b2']

  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'w1': 0.1 * jax.random.normal(k1, (64, 32)), 'b1': jnp.zeros(32),
            'w2': 0.1 * jax.random.normal(k2, (32, 3)), 'b2': jnp.zeros(3)}
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        fn(p, x), y))
    g = jax.grad(loss)(params)
    updates, opt_state = tx.update(g, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(300):
    params, opt_state = step(params, opt_state)
  clf = classifier.from_function(fn, jnp.eye(3), params=params,
                                 activation='softmax', loss='ce')
  return clf, x[:200], y[:200].astype(np.int32)


def test_trained_model_pgd_beats_fgsm_and_targeted_success_rises():
  clf, x, y = _trained_mlp()
  assert np.mean(np.asarray(clf.predict(jnp.asarray(x))) == y) > 0.97
  acc = lambda r: np.mean(r.prediction == y)
  pgd_acc = acc(attacks.pgd(clf, x, y, eps=0.4, eps_iter=0.02))
  fgsm_acc = acc(attacks.fgsm(clf, x, y, eps=0.4))
  assert pgd_acc < 0.05
  assert pgd_acc <= fgsm_acc
  t = attacks.random_targets(jax.random.key(0), y, 3)
  rates = [attacks.pgd(clf, x, t, targeted=True, eps=eps, eps_iter=0.02,
                       rng=jax.random.key(1)).success.mean()
           for eps in (0.02, 0.1, 0.2, 0.4)]
  assert rates == sorted(rates) and rates[-1] > rates[0] + 0.5


@pytest.mark.parametrize('kwargs, match', [
    (dict(name='pgd', eps=-0.1), 'eps must be >= 0'),
    (dict(name='bim', nb_iter=0), 'nb_iter must be >= 1'),
    (dict(name='mim', loss='hinge'), 'unknown attack loss'),
    (dict(name='cw_l2', initial_const=0.0), 'initial_const must be > 0'),
    (dict(name='deepfool', targeted=True), 'untargeted only'),
    (dict(name='lbfgs', targeted=False), 'targeted only'),
    (dict(name='square', targeted=True), 'square is untargeted only'),
    (dict(name='square', n_queries=0), 'n_queries must be >= 1'),
    (dict(name='square', n_queries=10.0), 'n_queries must be an integer'),
    (dict(name='square', p_init=0.0), 'p_init must be > 0'),
    (dict(name='square', p_init=1.5), 'p_init must be <= 1'),
    (dict(name='square', eps=-0.1), 'eps must be >= 0'),
    (dict(name='apgd', norm='l1'), 'unknown norm'),
    (dict(name='hop_skip_jump', targeted=True), 'untargeted only'),
    (dict(name='hop_skip_jump', norm='l1'), 'unknown norm'),
    (dict(name='hop_skip_jump', n_queries=0), 'n_queries must be >= 1'),
    (dict(name='apgd', norm='l2', eps=-1.0), 'eps must be >= 0'),
    (dict(name='cw_l2_distance', space='probabilities'), 'unknown space'),
])
def test_invalid_parameters_raise(kwargs, match):
  clf, _, _ = _affine()
  name = kwargs.pop('name')
  with pytest.raises(ValueError, match=match):
    attacks.get(name)(clf, _mid_images(2), np.zeros(2, np.int32), **kwargs)


@pytest.mark.parametrize('x, y, match', [
    (np.full((2, *SHAPE), np.nan, np.float32), np.zeros(2, int), 'NaN'),
    (np.full((2, *SHAPE), 1.5, np.float32), np.zeros(2, int), r'\[0, 1\]'),
    (np.zeros((2, 16), np.float32), np.zeros(2, int), 'H, W, C'),
    (np.zeros((2, *SHAPE), np.float32), np.zeros(3, int), 'shape'),
    (np.zeros((2, *SHAPE), np.float32), np.array([0, 7]), r'\[0, 3\)'),
])
def test_bad_inputs_raise(x, y, match):
  clf, _, _ = _affine()
  with pytest.raises(ValueError, match=match):
    attacks.fgsm(clf, x, y)


def test_unknown_attack_lists_names():
  with pytest.raises(ValueError, match='cw_l2_distance'):
    attacks.get('jsma')


@pytest.mark.parametrize('c', [0.1, 1.0, 10.0])
def test_lbfgs_reaches_scipys_box_constrained_optimum(c):
  # The compiled attack (optax L-BFGS, projected on the box) against scipy's
  # L-BFGS-B with bounds on the same objective, one round at a fixed c.
  import scipy.optimize  # pylint: disable=g-import-not-at-top
  clf, _, _ = _affine(seed=3, activation='softmax', loss='ce')
  x = _mid_images(4, seed=4)
  y = np.asarray(clf.predict(jnp.asarray(x)))
  t = np.asarray(attacks.random_targets(jax.random.key(2), y, 3))
  ours = attacks.lbfgs(clf, x, t, initial_const=c, binary_search_steps=1,
                       max_iterations=200)
  for i in range(len(x)):
    def objective(flat, i=i):
      xi = jnp.asarray(flat, jnp.float32).reshape(1, *SHAPE)
      loss = clf.loss(xi, jnp.asarray(t[i:i + 1]))[0]
      return c * loss + jnp.sum(jnp.square(xi - x[i:i + 1]))
    value_and_grad = jax.jit(jax.value_and_grad(objective))
    f = lambda v: tuple(np.asarray(a, np.float64) for a in value_and_grad(v))
    ref = scipy.optimize.minimize(f, x[i].ravel().astype(np.float64),
                                  jac=True, method='L-BFGS-B',
                                  bounds=[(0.0, 1.0)] * N_PIX)
    ref_success = int(clf.predict(jnp.asarray(
        ref.x.reshape(1, *SHAPE), jnp.float32))[0]) == t[i]
    assert bool(ours.success[i]) == ref_success, i
    if ours.success[i]:  # The returned image is the round's solution.
      assert float(objective(ours.adv[i].ravel())) <= ref.fun + 1e-3, i


def test_mim_two_steps_by_hand():
  clf, w, b = _affine(seed=4, activation='softmax', loss='ce')
  w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
  x = _mid_images(3, seed=6)
  y = np.asarray(clf.predict(jnp.asarray(x)))
  eps, eps_iter, decay = 0.2, 0.03, 0.7
  result = attacks.mim(clf, x, y, eps=eps, eps_iter=eps_iter, nb_iter=2,
                       decay=decay)
  flat = x.reshape(3, -1).astype(np.float64)
  adv, velocity = flat.copy(), np.zeros_like(flat)
  for _ in range(2):
    z = adv @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[y]) @ w.T  # d CE / dx, ascended (untargeted).
    velocity = decay * velocity + grad / np.abs(grad).sum(1, keepdims=True)
    adv = np.clip(flat + np.clip(adv + eps_iter * np.sign(velocity) - flat,
                                 -eps, eps), 0, 1)
  np.testing.assert_allclose(result.adv.reshape(3, -1), adv, atol=1e-6)


def test_ce_and_margin_attack_losses_by_hand():
  clf = _codeword_linear(scale=1.0, bias=0.0)
  x = np.asarray(jax.random.uniform(jax.random.key(5), (6, *SHAPE)))
  y = np.array([0, 1, 2, 3, 0, 1], np.int32)
  scores = np.asarray(clf.scores(jnp.asarray(x)), np.float64)
  log_p = scores - scores.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  ce = -log_p[np.arange(6), y]
  others = scores.copy()
  others[np.arange(6), y] = -np.inf
  margin = others.max(1) - scores[np.arange(6), y]
  from mlrobust.attacks import core  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(
      core.attack_loss(clf, jnp.asarray(x), jnp.asarray(y), 'ce'), ce,
      rtol=1e-5)
  np.testing.assert_allclose(
      core.attack_loss(clf, jnp.asarray(x), jnp.asarray(y), 'margin'),
      margin, rtol=1e-5, atol=1e-6)


def test_the_loop_and_the_unrolled_gradient_attacks_agree(monkeypatch):
  # nb_iter above the CPU unroll limit runs XLA's loop; raising the limit
  # unrolls the same attack.
  from mlrobust.attacks import gradient  # pylint: disable=g-import-not-at-top
  clf = _codeword_linear()
  x = np.asarray(jax.random.uniform(jax.random.key(5), (4, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  nb_iter = gradient._CPU_UNROLL_LIMIT + 6
  looped = attacks.pgd(clf, x, y, eps=0.2, eps_iter=0.01, nb_iter=nb_iter)
  monkeypatch.setattr(gradient, '_CPU_UNROLL_LIMIT', nb_iter)
  unrolled = attacks.pgd(clf, x, y, eps=0.2, eps_iter=0.01, nb_iter=nb_iter)
  np.testing.assert_allclose(looped.adv, unrolled.adv, atol=1e-5)


def _cleverhans_deepfool(w, b, x, nb_candidate, overshoot, max_iter):
  """cleverhans v2.1's deepfool_attack loop in numpy, for z = x W + b."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  logits = lambda v: v @ w + b
  r_tot = np.zeros_like(flat)
  adv = flat.copy()
  original = current = logits(adv).argmax(1)
  iteration = 0
  while np.any(current == original) and iteration < max_iter:
    z = logits(adv)
    top = np.argsort(-z, axis=1)[:, :nb_candidate]
    for i in range(len(x)):
      if current[i] != original[i]:
        continue
      pert, best = np.inf, None
      for k in range(1, nb_candidate):
        w_k = w[:, top[i, k]] - w[:, top[i, 0]]
        f_k = z[i, top[i, k]] - z[i, top[i, 0]]
        pert_k = (abs(f_k) + 1e-5) / np.linalg.norm(w_k)
        if pert_k < pert:
          pert, best = pert_k, w_k
      r_tot[i] += pert * best / np.linalg.norm(best)
    adv = np.clip(r_tot + flat, 0, 1)
    current = logits(adv).argmax(1)
    iteration += 1
  return np.clip((1 + overshoot) * r_tot + flat, 0, 1).reshape(x.shape)


def test_cleverhans_deepfool_matches_a_numpy_cleverhans_loop():
  d, k = 8, 3  # A codeword head: d units, K classes.
  codebook = heads.make_codebook(jax.random.key(1), k, d)
  w = np.asarray(jax.random.normal(jax.random.key(2), (N_PIX, d)))
  b = np.asarray(0.3 * jax.random.normal(jax.random.key(3), (d,)))
  clf = classifier.from_function(
      lambda x: x.reshape(len(x), -1) @ jnp.asarray(w, jnp.float32) +
      jnp.asarray(b, jnp.float32), codebook, activation='tanh', loss='mse')
  x = _mid_images(6, seed=9)
  y = np.asarray(clf.predict(jnp.asarray(x)))
  ours = attacks.deepfool(clf, x, y, nb_candidate=4, overshoot=0.02,
                          max_iter=20, semantics='cleverhans')
  ref = _cleverhans_deepfool(w, b, x, 4, 0.02, 20)
  np.testing.assert_allclose(ours.adv, ref, atol=1e-4)
  # The decoding semantics is a different attack on a codeword head.
  decoding = attacks.deepfool(clf, x, y, nb_candidate=4, max_iter=20)
  assert not np.allclose(decoding.adv, ours.adv, atol=1e-3)
  # Success is judged by the decoding in both.
  np.testing.assert_array_equal(
      ours.success, np.asarray(clf.predict(jnp.asarray(ours.adv))) != y)


@pytest.mark.parametrize('name', ['cw_l2', 'cw_l2_distance', 'lbfgs'])
def test_semantics_agree_on_one_hot_heads_and_differ_on_codewords(name):
  kwargs = dict(targeted=True, initial_const=1.0, binary_search_steps=2,
                max_iterations=40)
  clf, _, _ = _affine(seed=5, activation='softmax', loss='ce')
  x = _mid_images(4, seed=2)
  t = np.asarray(attacks.random_targets(
      jax.random.key(1), np.asarray(clf.predict(jnp.asarray(x))), 3))
  fn = attacks.get(name)
  a = fn(clf, x, t, semantics='decoding', **kwargs)
  b = fn(clf, x, t, semantics='cleverhans', **kwargs)
  np.testing.assert_allclose(a.adv, b.adv, atol=1e-6)
  # On a codeword head cleverhans keeps iterates by argmax z == argmax t_y,
  # which is not the decoding: the returned success is the decoding's.
  clf = _codeword_linear(scale=1.0, bias=0.0)
  x = np.asarray(jax.random.uniform(jax.random.key(5), (6, *SHAPE)))
  t = np.asarray(attacks.random_targets(
      jax.random.key(6), np.asarray(clf.predict(jnp.asarray(x))), 4))
  c = fn(clf, x, t, semantics='cleverhans', **kwargs)
  np.testing.assert_array_equal(
      c.success, np.asarray(clf.predict(jnp.asarray(c.adv))) == t)
  with pytest.raises(ValueError, match='unknown semantics'):
    fn(clf, x, t, semantics='foolbox', **kwargs)


def test_apgd_checkpoints_are_the_papers():
  from mlrobust.attacks import auto_pgd  # pylint: disable=g-import-not-at-top
  # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein).
  assert auto_pgd.checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_loss_by_hand():
  from mlrobust.attacks import core  # pylint: disable=g-import-not-at-top
  s = jnp.array([[3.0, 1.0, 2.0, -1.0], [0.5, 4.0, 1.0, 2.0]])
  y = jnp.array([0, 2])
  # Untargeted: -(s_y - max other) / (s_pi1 - s_pi3).
  np.testing.assert_allclose(core.dlr_loss(s, y),
                             [-(3 - 2) / (3 - 1), -(1 - 4) / (4 - 1)],
                             rtol=1e-6)
  # Targeted: -(s_y - s_t) / (s_pi1 - (s_pi3 + s_pi4) / 2).
  t = jnp.array([2, 1])
  np.testing.assert_allclose(
      core.dlr_loss(s, y, t), [-(3 - 2) / (3 - 0), -(1 - 4) / (4 - 0.75)],
      rtol=1e-6)
  # Invariant to a shift and a positive scale of the scores.
  np.testing.assert_allclose(core.dlr_loss(5 * s + 2, y), core.dlr_loss(s, y),
                             rtol=1e-5)


@pytest.mark.parametrize('loss', ['ce', 'dlr'])
def test_apgd_is_at_least_as_strong_as_pgd_and_stays_in_the_ball(loss):
  clf, x, y = _trained_mlp()
  x, y = x[:100], y[:100]
  eps = 0.08
  pgd = attacks.pgd(clf, x, y, eps=eps, eps_iter=eps / 10, nb_iter=20)
  result = attacks.apgd(clf, x, y, eps=eps, n_iter=50, loss=loss)
  assert np.all(np.abs(result.adv - x) <= eps + 1e-6)
  assert result.adv.min() >= 0 and result.adv.max() <= 1
  assert np.mean(result.prediction == y) <= np.mean(pgd.prediction == y)
  np.testing.assert_array_equal(
      result.success, np.asarray(clf.predict(jnp.asarray(result.adv))) != y)
  # Batch independence.
  alone = attacks.apgd(clf, x[:3], y[:3], eps=eps, n_iter=50, loss=loss)
  np.testing.assert_allclose(alone.adv, result.adv[:3], atol=1e-5)


def test_targeted_apgd_reaches_targets():
  clf, x, y = _trained_mlp()
  x, y = x[:50], y[:50]
  clf4 = clf  # 3 classes: the targeted DLR needs 4; use CE.
  t = np.asarray(attacks.random_targets(jax.random.key(0), y, 3))
  result = attacks.apgd(clf4, x, t, targeted=True, labels=y, eps=0.3,
                        n_iter=30, loss='ce')
  assert result.success.mean() > 0.5
  with pytest.raises(ValueError, match='at least 4 classes'):
    attacks.apgd(clf4, x, t, targeted=True, labels=y, loss='dlr')
  with pytest.raises(ValueError, match='needs the true labels'):
    attacks.apgd(clf4, x, t, targeted=True)


@pytest.mark.parametrize('loss, targeted, norm, eps', [
    ('ce', False, 'linf', 0.1), ('dlr', True, 'linf', 0.1),
    ('ce', False, 'l2', 0.3)])
def test_apgd_in_host_driven_chunks_equals_the_loop(loss, targeted, norm, eps,
                                                    monkeypatch):
  auto_pgd = sys.modules['mlrobust.attacks.auto_pgd']
  monkeypatch.setattr(auto_pgd, 'CHUNK', 10)  # 23: the last chunk overruns.
  clf = _codeword_linear()  # 4 classes: the targeted DLR needs them.
  x = np.asarray(jax.random.uniform(jax.random.key(9), (12, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  goal = attacks.random_targets(jax.random.key(10), y, 4) if targeted else y
  fn = functools.partial(attacks.apgd, clf, x, goal, targeted=targeted,
                         labels=y if targeted else None, eps=eps, loss=loss,
                         norm=norm)
  results = []
  for chunked in (False, True):
    monkeypatch.setattr(auto_pgd, 'CHUNKED', chunked)
    results.append(fn(n_iter=23))
  one, chunks = results
  np.testing.assert_allclose(chunks.adv, one.adv, atol=1e-6)
  np.testing.assert_array_equal(chunks.success, one.success)
  # Some succeed (the first success is kept), some not (the best point).
  assert 0 < one.success.sum() < len(x), one.success
  # The overrun of the last chunk would change the result: it is masked.
  assert not np.array_equal(fn(n_iter=30).adv, chunks.adv)


def test_apgd_chunks_compile_once(monkeypatch):
  auto_pgd = sys.modules['mlrobust.attacks.auto_pgd']
  monkeypatch.setattr(auto_pgd, 'CHUNKED', True)
  clf = _codeword_linear()
  x = np.asarray(jax.random.uniform(jax.random.key(3), (4, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  attacks.apgd(clf, x, y, eps=0.01, n_iter=12)  # Compiles.
  with conftest.count_compiles() as compiles:
    for eps, n_iter in ((0.05, 12), (0.1, 31), (0.2, 5)):
      attacks.apgd(clf, x, y, eps=eps, n_iter=n_iter)
  assert not compiles


def _saturated_batch():
  """A tiny DenseNet and 5 images, two of them all 0 and all 1 (the box)."""
  clf = _densenet_classifier()
  x = np.array(jax.random.uniform(jax.random.key(3), (5, 8, 8, 1)))
  x[0] = 0.0
  x[1] = 1.0
  return clf, x, np.asarray(clf.predict(jnp.asarray(x)))


def test_apgd_l2_stays_in_the_l2_ball_and_the_box():
  clf, x, y = _saturated_batch()
  x_copy = x.copy()
  eps = 0.5
  result = attacks.apgd(clf, x, y, eps=eps, n_iter=20, norm='l2')
  np.testing.assert_array_equal(x, x_copy)  # Input untouched.
  l2 = np.linalg.norm((result.adv - x).reshape(5, -1), axis=1)
  assert np.all(l2 <= eps * (1 + 1e-5)), l2
  assert result.adv.min() >= 0 and result.adv.max() <= 1
  np.testing.assert_allclose(result.l2, l2, rtol=1e-5)
  # It reaches the sphere, and not by spreading eps evenly over the 64
  # pixels (eps / 8 each); the black image's gradient is 0 here.
  assert l2.max() > eps * (1 - 1e-5), l2
  assert np.all(result.linf[1:] > eps / 8), result.linf
  np.testing.assert_array_equal(
      result.success, np.asarray(clf.predict(jnp.asarray(result.adv))) != y)


def test_apgd_l2_breaks_a_binary_affine_model_exactly_past_its_distance():
  # Two classes, z = x W + b: the smallest L2 perturbation that changes the
  # class is d = |z_0 - z_1| / ||w_0 - w_1|| along the boundary's normal, and
  # the CE loss is largest in the L2 ball of radius eps < d at
  # x + eps * normal.
  w = np.asarray(jax.random.normal(jax.random.key(11), (N_PIX, 2)),
                 np.float64)
  x = _mid_images(16, seed=12)
  flat = x.reshape(16, -1).astype(np.float64)
  gap = flat @ (w[:, 0] - w[:, 1])
  b = np.array([-np.median(gap), 0.0])  # Half the images in each class.
  clf = classifier.from_function(
      lambda p, v: v.reshape(len(v), -1) @ p[0] + p[1], jnp.eye(2),
      params=(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)),
      activation='identity', loss='ce')
  z = flat @ w + b
  y = z.argmax(1).astype(np.int32)
  np.testing.assert_array_equal(np.asarray(clf.predict(jnp.asarray(x))), y)
  assert 0 < y.sum() < 16
  normal = (w[:, 1 - y] - w[:, y]).T  # [16, N_PIX], towards the other class.
  d = np.abs(z[:, 0] - z[:, 1]) / np.linalg.norm(normal, axis=1)
  normal /= np.linalg.norm(normal, axis=1, keepdims=True)
  # The examples whose closest boundary point (and a bit beyond) is in the
  # box, where the box does not change the closed form.
  far = flat + 1.05 * d[:, None] * normal
  keep = np.flatnonzero(np.all((far >= 0) & (far <= 1), axis=1))
  assert len(keep) >= 12, keep
  for i in keep:
    for factor in (1.05, 0.95):
      eps = factor * d[i]
      result = attacks.apgd(clf, x[i:i + 1], y[i:i + 1], eps=eps, n_iter=20,
                            norm='l2')
      assert bool(result.success[0]) == (factor > 1), (i, factor)
      assert result.l2[0] <= eps * (1 + 1e-5)
      if factor < 1:  # The best point by the loss, in closed form.
        np.testing.assert_allclose(result.adv[0].ravel(),
                                   flat[i] + eps * normal[i], atol=1e-4)


def test_apgd_takes_its_norm_from_the_config():
  from configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config('tanh_mse,smoke')
  config.attack.name = 'apgd'
  config.attack.eps = 1.5
  config.attack.norm = 'l2'
  assert attacks.params_from_config(config.attack) == {'eps': 1.5,
                                                       'norm': 'l2'}
  assert attacks.effective_params('apgd', {})['norm'] == 'linf'
  config.attack.norm = 'l1'
  with pytest.raises(ValueError, match="unknown norm 'l1'"):
    attacks.params_from_config(config.attack)
  config.attack.name = 'pgd'
  config.attack.norm = 'l2'
  with pytest.raises(ValueError, match="does not take 'norm'"):
    attacks.params_from_config(config.attack)


@pytest.mark.parametrize('margin, targeted, cleverhans', [
    ('logits', False, False), ('distance', True, False),
    ('logits', True, True), ('distance', False, False)])
def test_cw_in_host_driven_chunks_equals_the_single_program(
    margin, targeted, cleverhans):
  # The CPU path (chunks of unrolled iterations; finished examples dropped
  # into smaller batches between chunks) computes what the one-program while
  # loop computes, example by example.
  from mlrobust.attacks import cw  # pylint: disable=g-import-not-at-top
  # (The logit margin rarely succeeds on a codeword head: one-hot there.)
  clf = _affine(k=4)[0] if margin == 'logits' else _codeword_linear()
  x = jnp.asarray(jax.random.uniform(jax.random.key(7), (12, *SHAPE)))
  y = np.asarray(clf.predict(x))
  goal = attacks.random_targets(jax.random.key(8), y, 4) if targeted else y
  kwargs = dict(margin=margin, targeted=targeted, binary_search_steps=3,
                max_iterations=40, abort_early=True, cleverhans=cleverhans)
  args = (clf, x, jnp.asarray(goal), None, 0.5, 0.0, 5e-2)
  one_adv, one_pred = cw._cw(*args, **kwargs)
  # min_bucket=1: compaction down to single examples.
  chunk_adv, chunk_pred = cw._cw_chunked(*args, **kwargs, min_bucket=1)
  np.testing.assert_allclose(chunk_adv, one_adv, atol=1e-5)
  np.testing.assert_array_equal(chunk_pred, one_pred)
  assert np.abs(np.asarray(one_adv) - np.asarray(x)).max() > 0.01  # Moved.


def test_cw_chunks_divide_the_abort_early_period():
  from mlrobust.attacks import cw  # pylint: disable=g-import-not-at-top
  assert cw.chunk_size(1000) == 25  # Period 100.
  assert cw.chunk_size(100) == 10
  assert cw.chunk_size(30) == 3
  assert cw.chunk_size(5) == 1


@pytest.mark.parametrize('semantics', ['decoding', 'cleverhans'])
def test_deepfool_in_host_driven_chunks_equals_the_single_program(
    semantics, monkeypatch):
  deepfool = sys.modules['mlrobust.attacks.deepfool']
  monkeypatch.setattr(deepfool, 'MIN_BUCKET', 1)  # Compact to one example.
  monkeypatch.setattr(deepfool, 'CHUNK', 2)
  clf = _codeword_linear()
  x = np.asarray(jax.random.uniform(jax.random.key(9), (12, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  results = []
  for chunked in (False, True):
    monkeypatch.setattr(deepfool, 'CHUNKED', chunked)
    results.append(attacks.deepfool(clf, x, y, max_iter=7, nb_candidate=3,
                                    semantics=semantics))
  one, chunks = results
  np.testing.assert_allclose(chunks.adv, one.adv, atol=1e-5)
  np.testing.assert_array_equal(chunks.success, one.success)
  assert np.abs(one.adv - x).max() > 0.01  # It moved.


def test_square_stays_in_ball_and_box_on_plus_minus_eps():
  clf, x, y = _saturated_batch()
  x_copy = x.copy()
  eps = 0.1
  result = attacks.square(clf, x, y, eps=eps, n_queries=25)
  np.testing.assert_array_equal(x, x_copy)  # Input untouched.
  assert np.all(np.abs(result.adv - x) <= eps + 1e-6)
  assert result.adv.min() >= 0 and result.adv.max() <= 1
  # Start and windows set every pixel to x +- eps (then clipped to the box).
  up, down = np.clip(x + eps, 0, 1), np.clip(x - eps, 0, 1)
  assert np.all(np.isclose(result.adv, up, atol=1e-6) |
                np.isclose(result.adv, down, atol=1e-6))
  np.testing.assert_array_equal(
      result.prediction, np.asarray(clf.predict(jnp.asarray(result.adv))))
  np.testing.assert_array_equal(result.success, result.prediction != y)
  np.testing.assert_allclose(result.linf, np.abs(result.adv - x).reshape(
      5, -1).max(1), rtol=1e-6)


def _gradient_trap(clf):
  """`clf` whose forward pass fails under any differentiation."""

  @jax.custom_vjp
  def trap(z):
    return z

  def backward(residual, g):
    del residual, g
    raise AssertionError('a gradient of the scores was taken')

  trap.defvjp(lambda z: (z, None), backward)
  return classifier.from_function(
      lambda p, x_: trap(clf.apply_fn(p, x_)), clf.targets,
      params=clf.variables, activation=clf.activation, loss=clf.loss_name)


def test_square_breaks_a_trained_model_without_gradients():
  clf, x, y = _trained_mlp()
  x, y = x[:100], y[:100]
  trapped = _gradient_trap(clf)
  with pytest.raises(AssertionError, match='gradient'):  # The trap works.
    attacks.pgd(trapped, x, y, eps=0.4, eps_iter=0.02)
  pgd = attacks.pgd(clf, x, y, eps=0.4, eps_iter=0.02)
  result = attacks.square(trapped, x, y, eps=0.4)
  assert np.mean(pgd.prediction == y) < 0.05
  assert np.mean(result.prediction == y) < 0.05
  np.testing.assert_array_equal(result.success, result.prediction != y)
  # eps = 0: nothing moves, nothing breaks.
  clean = np.asarray(clf.predict(jnp.asarray(x)))
  still = attacks.square(trapped, x, y, eps=0.0, n_queries=50)
  np.testing.assert_array_equal(still.adv, x)
  np.testing.assert_array_equal(still.prediction, clean)


def _nested_squares(rows, cols):
  """The paper's pseudo-Gaussian rectangle by hand: concentric rectangles of
  half-width k = 0, 1, ... around (rows // 2, cols // 2), the k-th adding
  1 / (k + 1)^2; unit norm."""
  out = np.zeros((rows, cols))
  for k in range(max(rows // 2, cols // 2) + 1):
    r0, c0 = max(rows // 2 - k, 0), max(cols // 2 - k, 0)
    out[r0:rows // 2 + k + 1, c0:cols // 2 + k + 1] += 1.0 / (k + 1)**2
  return out / np.linalg.norm(out)


@pytest.mark.parametrize('side', [3, 4, 5, 8])
def test_square_l2_meta_pattern_is_two_opposite_nested_squares(side):
  square = sys.modules['mlrobust.attacks.square']
  grid = jnp.arange(side + 2) - 1  # One row and column outside on each side.
  got = np.asarray(square._pyramid(grid[:, None], grid[None, :], side, 12))
  expected = np.zeros((side + 2, side + 2))
  top = side // 2
  expected[1:1 + top, 1:-1] = _nested_squares(top, side)
  expected[1 + top:-1, 1:-1] = -_nested_squares(side - top, side)
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_square_l2_stays_in_ball_and_box_and_breaks_without_gradients():
  clf, x, y = _trained_mlp()
  x, y = x[:100], y[:100]
  x_copy = x.copy()
  trapped = _gradient_trap(clf)
  eps = 2.0
  result = attacks.square(trapped, x, y, eps=eps, norm='l2', n_queries=1000)
  np.testing.assert_array_equal(x, x_copy)
  assert np.all(result.l2 <= eps * (1 + 1e-5))
  np.testing.assert_allclose(result.l2, np.linalg.norm(
      (result.adv - x).reshape(len(x), -1), axis=1), rtol=1e-5)
  assert result.adv.min() >= 0 and result.adv.max() <= 1
  assert np.mean(result.prediction == y) < 0.15  # Clean: 1.0.
  np.testing.assert_array_equal(
      result.prediction, np.asarray(clf.predict(jnp.asarray(result.adv))))
  # The L2 ball of radius 2 holds far smaller Linf changes than 2.
  assert np.median(result.linf) < 1.0
  still = attacks.square(trapped, x, y, eps=0.0, norm='l2', n_queries=20)
  np.testing.assert_array_equal(still.adv, x)
  with pytest.raises(ValueError, match='unknown norm'):
    attacks.square(clf, x, y, norm='l1')
  # Result files record the p_init that ran (the paper's, per norm).
  assert attacks.effective_params('square', {'norm': 'l2'})['p_init'] == 0.1
  assert attacks.effective_params('square', {})['p_init'] == 0.8


def test_square_window_schedule_is_the_papers():
  square = sys.modules['mlrobust.attacks.square']  # The module.

  def paper_p(i, n, p_init):  # The paper's piecewise p, by hand.
    it = int(i / n * 10000)
    for k, bound in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000,
                               8000)):
      if it <= bound:
        return p_init / 2**k
    return p_init / 2**9

  side_fn = jax.jit(square.window_side, static_argnums=(3, 4))
  for n, p_init, (h, w) in ((10000, 0.8, (28, 28)), (1000, 0.05, (32, 32)),
                            (77, 1.0, (8, 6))):
    at = jnp.asarray(square.thresholds(n))
    sides = [int(side_fn(i, at, p_init, h, w)) for i in range(n - 1)]
    expected = [min(max(int(round(np.sqrt(paper_p(i, n, p_init) * h * w))),
                        1), min(h, w)) for i in range(n - 1)]
    assert sides == expected, (n, p_init)
  assert square.thresholds(10000)[0] == 11  # p halves after iteration 10.


@pytest.mark.parametrize('n_queries,norm', [(1, 'linf'), (23, 'linf'),
                                            (23, 'l2')])
def test_square_in_host_driven_chunks_equals_the_while_loop(n_queries, norm,
                                                            monkeypatch):
  square = sys.modules['mlrobust.attacks.square']
  monkeypatch.setattr(square, 'CHUNK', 10)  # 23: the last chunk overruns.
  clf = _codeword_linear()
  x = np.asarray(jax.random.uniform(jax.random.key(9), (12, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  eps = {'linf': 0.05, 'l2': 0.3}[norm]
  results = []
  for chunked in (False, True):
    monkeypatch.setattr(square, 'CHUNKED', chunked)
    results.append(attacks.square(clf, x, y, eps=eps, n_queries=n_queries,
                                  norm=norm, rng=jax.random.key(1)))
  one, chunks = results
  np.testing.assert_allclose(chunks.adv, one.adv, atol=1e-6)
  np.testing.assert_array_equal(chunks.success, one.success)
  # One more query can change the result, so the count is exact.
  more = attacks.square(clf, x, y, eps=eps, n_queries=n_queries + 1,
                        norm=norm, rng=jax.random.key(1))
  assert not np.array_equal(more.adv, one.adv)


def test_square_sweeps_compile_once():
  clf = _codeword_linear()
  x = np.asarray(jax.random.uniform(jax.random.key(3), (4, *SHAPE)))
  y = np.asarray(clf.predict(jnp.asarray(x)))
  attacks.square(clf, x, y, eps=0.01, n_queries=12)  # Compiles.
  with conftest.count_compiles() as compiles:
    for eps, n_queries, p_init in ((0.05, 12, 0.8), (0.1, 31, 0.3),
                                   (0.2, 5, 1.0)):
      attacks.square(clf, x, y, eps=eps, n_queries=n_queries, p_init=p_init)
  assert not compiles


def test_square_is_configured_like_every_attack():
  from configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config('tanh_mse,smoke')
  assert set(attacks.PARAM_FIELDS) <= set(config.attack)
  config.attack.name = 'square'
  config.attack.eps = 0.1
  config.attack.n_queries = 50
  config.attack.p_init = 0.5
  assert attacks.params_from_config(config.attack) == {
      'eps': 0.1, 'n_queries': 50, 'p_init': 0.5}
  config.attack.p_init = 1.5
  with pytest.raises(ValueError, match='p_init must be <= 1'):
    attacks.params_from_config(config.attack)
  config.attack.p_init = None
  config.attack.targeted = True
  with pytest.raises(ValueError, match='untargeted only'):
    attacks.params_from_config(config.attack)


def _binary_linear(seed=0):
  """Two classes on 8x8 images: scores (0, w.x); x near 0.5, inside the box."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=64).astype(np.float32)

  def fn(x):
    s = x.reshape(len(x), -1) @ w
    return jnp.stack([jnp.zeros_like(s), s], axis=1)

  clf = classifier.from_function(fn, targets=jnp.eye(2),
                                 activation='identity', loss='ce')
  x = (0.5 + 0.05 * rng.normal(size=(4, 8, 8, 1))).astype(np.float32)
  y = np.asarray(clf.predict(jnp.asarray(x))).astype(np.int32)
  return clf, w, x, y


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_hop_skip_jump_approaches_the_closed_form_distance(norm):
  # The closest point of the other class: |w.x| / ||w||_2 away in L2 and
  # |w.x| / ||w||_1 in Linf (every pixel moved by that much, inside the box).
  clf, w, x, y = _binary_linear()
  hsja = sys.modules['mlrobust.attacks.hop_skip_jump']
  keys = attacks.core.example_keys(jax.random.key(0), x)
  out = hsja.attack(clf, jnp.asarray(x), jnp.asarray(y), keys, eps=0.0,
                    norm=norm, n_queries=3000)
  margin = np.abs(x.reshape(len(x), -1) @ w)
  optimum = margin / (np.linalg.norm(w) if norm == 'l2' else np.abs(w).sum())
  ratio = np.asarray(out['distance']) / optimum
  assert np.all(ratio >= 1 - 1e-3) and np.all(ratio < 1.15), ratio
  best = np.asarray(out['best'])
  assert np.all(np.asarray(clf.predict(jnp.asarray(best))) != y)
  assert np.all(np.asarray(out['queries']) <= 3000)
  # eps = 0: the answer is x itself, not a success.
  np.testing.assert_array_equal(np.asarray(out['adv']), x)


def test_hop_skip_jump_counts_every_decision():
  clf, _, x, y = _binary_linear(seed=1)
  rows = []

  def counted(v):
    jax.debug.callback(lambda n: rows.append(int(n)), v.shape[0])
    return clf.logits(v)

  spy = classifier.from_function(counted, clf.targets,
                                 activation=clf.activation,
                                 loss=clf.loss_name)
  hsja = sys.modules['mlrobust.attacks.hop_skip_jump']
  for budget in (7, 150, 900):  # Start only; start + search; iterations.
    rows.clear()
    out = hsja.attack(spy, jnp.asarray(x[:1]), jnp.asarray(y[:1]),
                      attacks.core.example_keys(jax.random.key(0), x[:1]),
                      eps=0.0, norm='linf', n_queries=budget)
    jax.effects_barrier()
    queries = int(out['queries'][0])
    assert queries <= budget
    assert sum(rows) == queries + 1  # + the answer's classification.
  assert queries > 600  # It spent the budget.


def test_hop_skip_jump_breaks_a_trained_model_from_labels_only():
  clf, x, y = _trained_mlp()
  x, y = x[:60], y[:60]
  trapped = _gradient_trap(clf)
  eps = 0.4
  result = attacks.hop_skip_jump(trapped, x, y, eps=eps, n_queries=2000)
  assert np.mean(result.prediction == y) < 0.1
  assert np.all(np.abs(result.adv - x) <= eps + 1e-6)
  assert result.adv.min() >= 0 and result.adv.max() <= 1
  np.testing.assert_array_equal(
      result.prediction, np.asarray(clf.predict(jnp.asarray(result.adv))))
  np.testing.assert_array_equal(result.success, result.prediction != y)
  l2 = attacks.hop_skip_jump(trapped, x, y, eps=3.0, norm='l2',
                             n_queries=2000)
  assert np.all(l2.l2 <= 3.0 + 1e-4)
  assert np.mean(l2.prediction == y) < 0.1


def test_hop_skip_jump_starts_where_uniform_noise_is_one_class():
  # Class 1 iff the mean pixel exceeds 0.4: uniform noise (mean ~0.5) is
  # always class 1, so a bright image of class 1 can only start from a
  # sparse random image.
  def fn(x):
    m = x.reshape(len(x), -1).mean(axis=1) - 0.4
    return jnp.stack([-m, m], axis=1)

  clf = classifier.from_function(fn, targets=jnp.eye(2),
                                 activation='identity', loss='ce')
  x = np.full((3, 8, 8, 1), 0.6, np.float32)
  y = np.ones(3, np.int32)
  result = attacks.hop_skip_jump(clf, x, y, eps=0.25, n_queries=500)
  assert result.success.all()  # Linf 0.2 + a little suffices.
  assert np.all(result.linf <= 0.25 + 1e-6)


def _optax_lbfgs_alone(clf, x, t, c, iterations):
  """Reference: optax's own `lbfgs` (Armijo backtracking from the unit step,
  halving), projected on the box, run on one example at a time, one round
  at c: the implementation the batched attack replaced."""
  from mlrobust.attacks import core  # pylint: disable=g-import-not-at-top
  lb = sys.modules['mlrobust.attacks.lbfgs']
  out = []
  for xi, ti in zip(x, t):
    xi, ti = jnp.asarray(xi[None]), jnp.asarray(ti[None])
    objective = lambda v, xi=xi, ti=ti: jnp.sum(
        c * core.attack_loss(clf, v, ti, 'train') + jnp.sum((v - xi) ** 2))
    on_box = lambda v, f=objective: f(jnp.clip(v, 0.0, 1.0))
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=20, decrease_factor=0.5, increase_factor=1e6))

    @jax.jit
    def step(v, value, grad, state, f=objective, g=on_box, opt=opt):
      p = lb._projected(grad, v)  # pylint: disable=protected-access
      updates, state = opt.update(p, state, v, value=value, grad=p,
                                  value_fn=g)
      new = jnp.clip(optax.apply_updates(v, updates), 0.0, 1.0)
      new_value, new_grad = jax.value_and_grad(f)(new)
      keep = new_value <= value
      return (jnp.where(keep, new, v), jnp.where(keep, new_value, value),
              jnp.where(keep, new_grad, grad), state)

    v, state = xi, opt.init(xi)
    value, grad = jax.value_and_grad(objective)(v)
    for _ in range(iterations):
      v, value, grad, state = step(v, value, grad, state)
    out.append(np.asarray(v[0]))
  return np.stack(out)


@pytest.mark.parametrize('model, c', [('affine', 0.1), ('affine', 1.0),
                                      ('codeword', 1.0)])
def test_lbfgs_equals_optax_lbfgs_alone_and_its_chunks_the_while_loop(
    model, c, monkeypatch):
  # The batched attack (per-example state; the line search's unit step
  # evaluated with its gradient) computes what optax.lbfgs computes on each
  # example alone; its CPU path (chunks of unrolled iterations driven from
  # the host) what its one-program while loop computes. Few iterations, on
  # well-conditioned problems: L-BFGS amplifies last-bit differences.
  lb = sys.modules['mlrobust.attacks.lbfgs']
  monkeypatch.setattr(lb, 'PGTOL', -1.0)  # Every iteration runs.
  clf = (_affine(seed=3, activation='softmax', loss='ce')[0]
         if model == 'affine' else _codeword_linear())
  x = np.asarray(jax.random.uniform(jax.random.key(5), (6, *SHAPE)))
  t = attacks.random_targets(jax.random.key(6), np.asarray(clf.predict(
      jnp.asarray(x))), clf.num_classes)
  b = len(x)
  goal, const = jnp.asarray(t), jnp.full((b,), c)

  def batched(iterations):
    state = lb._round_state_jit(clf, jnp.asarray(x), goal, const,  # pylint: disable=protected-access
                                jnp.full((b,), jnp.inf), jnp.asarray(x),
                                loss='train')
    step = jax.jit(functools.partial(  # One compiled step, as in the attack.
        lb._step, loss='train', max_iterations=iterations))  # pylint: disable=protected-access
    for _ in range(iterations):
      state = step(clf, jnp.asarray(x), goal, const, state)
    return np.asarray(state['x'])

  def objective(v):
    return np.asarray(c * clf.loss(jnp.asarray(v), goal) + np.sum(
        (v - x) ** 2, axis=(1, 2, 3)))

  # While unit steps are accepted the two agree to float precision.
  ref = _optax_lbfgs_alone(clf, x, t, c, 3)
  np.testing.assert_allclose(batched(3), ref, atol=1e-5)
  assert np.abs(ref - x).max() > 0.01  # It moved.
  # Near the optimum, accept-or-halve decisions on values equal to the last
  # bit go either way (compiled or not, 2e-4 apart at most, measured); the
  # objective they reach is the same.
  ref = _optax_lbfgs_alone(clf, x, t, c, 20)
  whole = batched(20)
  np.testing.assert_allclose(objective(whole), objective(ref), rtol=1e-3)
  # Backtracking on the few examples that need it, gathered into a batch of
  # 2 (and on the whole batch when more need it), computes the same.
  monkeypatch.setattr(lb, '_bucket', lambda b: 2)
  np.testing.assert_allclose(batched(20), whole, atol=1e-6)
  monkeypatch.undo()
  monkeypatch.setattr(lb, 'PGTOL', -1.0)
  # The whole attack (3 rounds of the search over c): chunks vs one program.
  monkeypatch.setattr(lb, 'CHUNK', 4)  # 10 iterations: the last overruns.
  results = []
  for chunked in (False, True):
    monkeypatch.setattr(lb, 'CHUNKED', chunked)
    results.append(attacks.lbfgs(clf, x, t, initial_const=c,
                                 binary_search_steps=3, max_iterations=10))
  np.testing.assert_allclose(results[1].adv, results[0].adv, atol=1e-5)
  np.testing.assert_array_equal(results[1].success, results[0].success)


def test_lbfgs_chunks_divide_the_iterations():
  lb = sys.modules['mlrobust.attacks.lbfgs']
  assert lb.chunk_size(1000) == 10
  assert lb.chunk_size(100) == 10
  assert lb.chunk_size(21) == 7
  assert lb.chunk_size(5) == 5
