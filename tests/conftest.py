"""Shared test fixtures: tiny configs and mock TFDS data (no real datasets)."""

import contextlib
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')


@pytest.fixture
def mock_mnist(tmp_path):
  """Mock MNIST through tfds.testing.mock_data; yields the config data dirs.

  The manual directory holds empty stand-ins for the upstream files, so the
  loader's offline check passes and the mocked builder serves random images.
  """
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in MNIST_FILES:
    (manual / name).touch()
  with tfds.testing.mock_data(num_examples=320):
    yield {'data_dir': str(tmp_path / 'tfds'), 'manual_dir': str(manual)}


def smoke_config(preset='tanh_mse', data_dirs=None, **overrides):
  """The MNIST smoke config of `preset`, with the mock data dirs."""
  from configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config(f'{preset},smoke')
  if data_dirs:
    config.data.data_dir = data_dirs['data_dir']
    config.data.manual_dir = data_dirs['manual_dir']
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(autouse=True, scope='session')
def _fast_compile():
  jax.config.update('jax_disable_most_optimizations', True)


@pytest.fixture
def trained(mock_mnist, tmp_path):
  """A smoke tanh_mse run trained for one epoch on mock MNIST."""
  from mlrobust import train  # pylint: disable=g-import-not-at-top
  config = smoke_config('tanh_mse', mock_mnist, **{'train.num_epochs': 1})
  config.head.codebook_key = 11
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  return config, workdir


class _Compiles(list):
  """Names of the XLA compilations seen inside a `count_compiles` block."""


@contextlib.contextmanager
def count_compiles():
  """Records every XLA compilation (jax's backend-compile event) in a block.

  Unlike wrapping a private function, this sees what a user's call costs:
  `with count_compiles() as c: attacks.pgd(...)`, then `assert not c`.
  """
  compiles = _Compiles()

  def listener(event, duration, **kwargs):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(kwargs.get('fun_name', '?'))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
