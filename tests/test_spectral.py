"""Spectral norms against dense matrices; network bound against measurements."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlrobust import models
from mlrobust import spectral
from mlrobust.models import densenet


@pytest.mark.parametrize('n, c_in, c_out', [(5, 2, 2), (6, 1, 3), (4, 3, 2)])
def test_fft_singular_values_equal_the_circular_dense_matrix(n, c_in, c_out):
  kernel = jax.random.normal(jax.random.key(n), (3, 3, c_in, c_out))
  dense = spectral.conv_dense_matrix(kernel, n, circular=True)
  expected = np.sort(np.linalg.svd(dense, compute_uv=False))
  got = np.sort(np.asarray(
      spectral.conv_singular_values_circular(kernel, n)).ravel())
  # The dense matrix has max(c_in, c_out) * n^2 rows or columns; its extra
  # singular values (if any) are zeros.
  np.testing.assert_allclose(got, expected[-got.size:], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(spectral.conv_norm_circular(kernel, n),
                             expected.max(), rtol=1e-4)


@pytest.mark.parametrize('seed', range(4))
def test_power_iteration_matches_the_zero_padded_matrix(seed):
  kernel = jax.random.normal(jax.random.key(seed), (3, 3, 2, 3))
  n = 5
  dense = spectral.conv_dense_matrix(kernel, n)
  exact = np.linalg.svd(dense, compute_uv=False)[0]
  power = float(spectral.conv_norm_zero_padded(kernel, n, num_iters=500))
  np.testing.assert_allclose(power, exact, rtol=1e-3)
  upper = float(spectral.conv_norm_upper_bound(kernel, n))
  assert upper >= exact * (1 - 1e-5)


def test_dense_batchnorm_and_pooling_factors():
  w = jax.random.normal(jax.random.key(0), (7, 4))
  np.testing.assert_allclose(spectral.dense_norm(w),
                             np.linalg.svd(np.asarray(w))[1][0], rtol=1e-5)
  scale, var = jnp.array([0.5, -3.0, 1.0]), jnp.array([1.0, 4.0, 0.25])
  np.testing.assert_allclose(spectral.batchnorm_factor(scale, var, 0.0), 2.0,
                             rtol=1e-6)
  pool = lambda x: x.reshape(2, 2, 2, 2).mean(axis=(1, 3)).ravel()
  matrix = jax.jacobian(pool)(jnp.zeros(16))
  np.testing.assert_allclose(np.linalg.svd(np.asarray(matrix))[1][0],
                             spectral.avg_pool_factor(2), rtol=1e-6)


def test_densenet_bound_exceeds_measured_ratios():
  model = densenet.DenseNet(num_outputs=5, depth=7, growth_rate=3,
                            stem_features=4)
  x = jax.random.uniform(jax.random.key(0), (64, 8, 8, 1))
  variables = model.init(jax.random.key(1), x)
  # Non-trivial BatchNorm statistics and scales.
  _, upd = model.apply(variables, x, train=True, mutable=['batch_stats'])
  variables = {'params': jax.tree.map(lambda p: p * 1.5, variables['params']),
               'batch_stats': upd['batch_stats']}
  config = ml_collections.ConfigDict({'name': 'densenet', 'stem_stride': 1})
  bounds = spectral.network_bounds(
      models.lipschitz_structure(config, variables, 8))
  f = lambda x: model.apply(variables, x, train=False)
  d = 1e-2 * jax.random.normal(jax.random.key(2), x.shape)
  ratios = (jnp.linalg.norm(f(x + d) - f(x), axis=1) /
            jnp.linalg.norm(d.reshape(64, -1), axis=1))
  # Gradient ascent on the ratio finds larger ones than random pairs.
  def ratio(d):
    return jnp.linalg.norm(f(x[:1] + d) - f(x[:1])) / jnp.linalg.norm(d)
  d1 = d[:1]
  for _ in range(50):
    d1 = d1 + 1e-3 * jax.grad(ratio)(d1)
    d1 = 1e-2 * d1 / jnp.linalg.norm(d1)
  assert bounds['structured'] >= float(jnp.max(ratios))
  assert bounds['structured'] >= float(ratio(d1))
  kinds = {k for _, k, _ in bounds['layers']}
  assert kinds == {'conv', 'batchnorm', 'pool', 'dense'}


def test_certified_radius_closed_form():
  targets = jnp.array([[0.0, 0.0], [2.0, 0.0]])
  outputs = jnp.array([[0.5, 0.0], [1.5, 0.0]])
  # Boundary at o_1 = 1; with L = 2 the input radius is half the output one.
  radius = spectral.certified_radius(outputs, targets, jnp.array([0, 0]), 2.0)
  np.testing.assert_allclose(radius, [0.25, -0.25], rtol=1e-6)


def test_no_attack_finds_an_adversarial_example_inside_the_radius():
  from mlrobust import attacks  # pylint: disable=g-import-not-at-top
  from tests import test_attacks  # pylint: disable=g-import-not-at-top
  clf, x, y = test_attacks._trained_mlp()  # pylint: disable=protected-access
  x, y = x[:64], y[:64]
  p = clf.variables
  # tanh is 1-Lipschitz and softmax is too, so the product bounds the map
  # from images to head outputs.
  lip = float(spectral.dense_norm(p['w1']) * spectral.dense_norm(p['w2']))
  radius = np.asarray(spectral.certified_radius(
      clf.outputs(jnp.asarray(x)), clf.targets, jnp.asarray(y), lip))
  assert np.mean(radius > 0) > 0.9  # Most examples are certified.
  for result in (attacks.deepfool(clf, x, y),
                 attacks.cw_l2(clf, x, y, initial_const=10.0,
                               max_iterations=300),
                 attacks.cw_l2_distance(clf, x, y, initial_const=10.0,
                                        max_iterations=300)):
    fooled = result.success & (radius > 0)
    assert fooled.any()
    assert np.all(result.l2[fooled] >= radius[fooled])
  # Linf balls inside the certified L2 balls: PGD must fail everywhere there.
  eps = float(np.min(radius[radius > 0])) / np.sqrt(x[0].size)
  pgd = attacks.pgd(clf, x, y, eps=eps, eps_iter=eps / 4)
  assert not np.any(pgd.success & (radius > 0))


@pytest.mark.parametrize('method', spectral.CONV_METHODS)
def test_batched_norms_equal_one_layer_at_a_time(method):
  # Kernels of one group with different input channels (padded with zeros in
  # the batch), one of another size, and a 1x1 kernel.
  keys = jax.random.split(jax.random.key(4), 4)
  kernels = [jax.random.normal(keys[0], (3, 3, 2, 3)),
             jax.random.normal(keys[1], (3, 3, 5, 3)),
             jax.random.normal(keys[2], (3, 3, 4, 3)),
             jax.random.normal(keys[3], (1, 1, 4, 4))]
  sizes = [6, 6, 4, 6]
  single = {
      'circular': lambda k, n: spectral.conv_norm_circular(k, n),
      'upper': spectral.conv_norm_upper_bound,
      'exact': lambda k, n: spectral.conv_norm_zero_padded(k, n),
  }[method]
  batched = spectral.conv_norms(kernels, sizes, method)
  for k, n, value in zip(kernels, sizes, batched):
    # Against the dense matrix for the exact norm, else the one-layer FFT.
    if method == 'exact':
      # Power iteration converges from below.
      expected = np.linalg.norm(spectral.conv_dense_matrix(k, n), 2)
      np.testing.assert_allclose(value, expected, rtol=2e-3)
      assert value <= expected * (1 + 1e-5)
    else:
      np.testing.assert_allclose(value, float(single(k, n)), rtol=1e-4)


def test_unknown_conv_method_is_rejected():
  with pytest.raises(ValueError, match='circular'):
    spectral.conv_norms([jnp.ones((3, 3, 1, 1))], [4], 'svd')
