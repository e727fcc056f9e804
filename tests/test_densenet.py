"""DenseNet structure: depth arithmetic, shapes, parameter count."""

import jax
import jax.numpy as jnp
import pytest

from mlrobust.models import densenet


@pytest.mark.parametrize('depth, blocks, bottleneck, expected', [
    (40, 3, False, 12), (10, 3, False, 2), (100, 3, True, 16),
    (7, 3, False, 1)])
def test_layers_per_block(depth, blocks, bottleneck, expected):
  assert densenet.layers_per_block(depth, blocks, bottleneck) == expected


@pytest.mark.parametrize('depth', [3, 4, 41, 12])
def test_bad_depth_lists_valid_ones(depth):
  with pytest.raises(ValueError, match='depth must be'):
    densenet.layers_per_block(depth, 3, False)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_densenet40_has_the_published_size():
  # Huang et al. (2017), Table 2: DenseNet (L=40, k=12) has 1.0M parameters.
  model = densenet.DenseNet(num_outputs=10)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert 0.95e6 < _count(shapes['params']) < 1.1e6


def test_output_shape_and_batchnorm_modes():
  model = densenet.DenseNet(num_outputs=5, depth=7, growth_rate=4,
                            stem_stride=2, dropout_rate=0.5)
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  variables = model.init(jax.random.key(1), x)
  out = model.apply(variables, x, train=False)
  assert out.shape == (3, 5)
  out_train, updates = model.apply(variables, x, train=True,
                                   mutable=['batch_stats'],
                                   rngs={'dropout': jax.random.key(2)})
  assert out_train.shape == (3, 5)
  assert 'batch_stats' in updates
  # Inference is deterministic (no dropout, running statistics).
  assert jnp.array_equal(out, model.apply(variables, x, train=False))
