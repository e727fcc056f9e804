"""Several devices (4 simulated CPU devices, in a subprocess) equal one."""

import os
import subprocess
import sys
import textwrap

import pytest

from mlrobust import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent('''
    import functools, os, sys, tempfile
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update('jax_disable_most_optimizations', True)
    assert jax.device_count() == 4, jax.devices()
    from configs import mnist
    from mlrobust import attacks, classifier, heads, models, sharding, train

    config = mnist.get_config('tanh_mse,smoke')
    model = models.make(config.model, config.head.dim)
    tx = train.make_optimizer(config, steps_per_epoch=10)
    targets = heads.make_targets('codebook', 10, config.head.dim,
                                 jax.random.key(1))
    step = jax.jit(functools.partial(
        train.train_step, model=model, tx=tx, activation='tanh',
        loss_name='mse', augment_kind=config.train.augment))
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8),
                rng.integers(0, 10, 32).astype(np.int32)) for _ in range(3)]

    def run_training(n):
      mesh = sharding.make_mesh((n,))
      state = sharding.replicate(
          train.init_state(config, model, tx, (28, 28, 1)), mesh)
      key = sharding.replicate(jax.random.key(0), mesh)
      t = sharding.replicate(targets, mesh)
      for images, labels in batches:
        images, labels = sharding.shard((images, labels), mesh)
        state, metrics = step(state, images, labels, key, t)
      assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == n
      return jax.device_get((state.params, state.batch_stats, metrics))

    one, four = run_training(1), run_training(4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5), one, four)
    print('training equal')

    state = train.init_state(config, model, tx, (28, 28, 1))
    clf = classifier.from_model(
        model, {'params': state.params, 'batch_stats': state.batch_stats},
        targets, activation='tanh', loss='mse')
    x = rng.uniform(0, 1, (10, 28, 28, 1)).astype(np.float32)
    y = np.asarray(clf.predict(jnp.asarray(x)))
    goal = attacks.random_targets(jax.random.key(2), y, 10)
    cases = [
        ('fgsm', False, dict(eps=0.1)),
        ('pgd', False, dict(eps=0.1, nb_iter=4)),
        ('deepfool', False, dict(max_iter=3, nb_candidate=3)),
        ('cw_l2_distance', True, dict(binary_search_steps=1,
                                      max_iterations=10, initial_const=1.0)),
        ('lbfgs', True, dict(binary_search_steps=1, max_iterations=4)),
        ('apgd', False, dict(eps=0.1, n_iter=8)),
    ]
    for name, targeted, kwargs in cases:
      out = []
      for n in (1, 4):
        with sharding.use(sharding.make_mesh((n,))):
          # batch_size 6: the second batch (4 images) and the first (6)
          # are padded to multiples of 4 on four devices.
          out.append(attacks.get(name)(
              clf, x, goal if targeted else y, targeted=targeted,
              rng=jax.random.key(3), batch_size=6, **kwargs))
      np.testing.assert_allclose(out[0].adv, out[1].adv, atol=1e-4,
                                 err_msg=name)
      np.testing.assert_array_equal(out[0].prediction, out[1].prediction)
      print(name, 'equal')
    with sharding.use(sharding.make_mesh((4,))):
      predicted = classifier.predict_batched(clf, x, 7)
    np.testing.assert_array_equal(predicted, y)

    bad = config.copy_and_resolve_references()
    bad.train.batch_size = 30
    workdir = os.path.join(tempfile.mkdtemp(), 'run')
    try:
      train.train_and_evaluate(bad, workdir)
      sys.exit('no error for a batch of 30 on 4 devices')
    except ValueError as e:
      assert 'not divisible by the 4 devices' in str(e), e
    assert not os.path.exists(workdir)  # Refused before any work.
    print('ALL EQUAL')
''')


def test_four_devices_equal_one_device():
  env = {**os.environ, 'PYTHONPATH': ROOT, 'TF_CPP_MIN_LOG_LEVEL': '2',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900,
                          check=False)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  assert 'ALL EQUAL' in result.stdout


@pytest.mark.parametrize('shape, message', [
    ((2, 2), 'one entry per axis'),
    ((5,), 'between 1 and'),
    ((0,), 'between 1 and'),
])
def test_bad_mesh_shapes_say_what_is_allowed(shape, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(shape, devices=[object()] * 4)


def test_padding_repeats_the_last_example():
  import numpy as np  # pylint: disable=g-import-not-at-top
  x = np.arange(5)
  assert list(sharding.pad(x, 4)) == [0, 1, 2, 3, 4, 4, 4, 4]
  assert sharding.pad(x, 5) is x
