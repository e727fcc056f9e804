"""Data loading through TFDS (mocked), batching, missing data, cifar10_jpeg."""

import io
import os
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from mlrobust import cifar10_jpeg
from mlrobust import data
from tests import conftest


def test_load_mock_mnist(mock_mnist):
  config = conftest.smoke_config(data_dirs=mock_mnist)
  ds = data.load(config.data)
  assert ds.train.images.shape == (256, 28, 28, 1)
  assert ds.train.images.dtype == np.uint8
  assert ds.test.labels.dtype == np.int32 and len(ds.test) == 128
  x = data.images_to_float(ds.train.images[:4])
  assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_missing_data_fails_fast_and_says_what_to_do(tmp_path):
  config = conftest.smoke_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.download = False
  with pytest.raises(FileNotFoundError) as e:
    data.load(config.data)
  message = str(e.value)
  assert 'train-images-idx3-ubyte.gz' in message
  assert 'manual_dir' in message and 'downloads/manual' in message


def test_missing_manual_dir_is_named(tmp_path):
  config = conftest.smoke_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    data.load(config.data)


def test_unknown_dataset_lists_choices():
  with pytest.raises(ValueError, match='cifar10_jpeg'):
    data.info('imagenet')


def test_batches_are_a_seeded_permutation_of_each_epoch():
  n, bs = 100, 32
  steps = n // bs
  epoch0 = np.concatenate([data.train_batch_indices(0, s, bs, n)
                           for s in range(steps)])
  assert len(set(epoch0)) == steps * bs  # No repeats within an epoch.
  again = data.train_batch_indices(0, 1, bs, n)
  np.testing.assert_array_equal(again, epoch0[bs:2 * bs])
  epoch1 = data.train_batch_indices(0, steps, bs, n)
  assert not np.array_equal(epoch1, epoch0[:bs])
  other_seed = data.train_batch_indices(1, 0, bs, n)
  assert not np.array_equal(other_seed, epoch0[:bs])


def test_eval_batches_cover_the_split_once():
  split = data.Split(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10))
  labels = [y for _, y in data.eval_batches(split, 4)]
  np.testing.assert_array_equal(np.concatenate(labels), np.arange(10))
  assert sum(len(y) for _, y in data.eval_batches(split, 4, limit=6)) == 6


def _jpeg(value):
  buf = io.BytesIO()
  Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buf, 'JPEG')
  return buf.getvalue()


def _write_tarball(path, per_class):
  with tarfile.open(path, 'w:gz') as tar:
    for split in ('train', 'test'):
      for label, name in enumerate(cifar10_jpeg.CLASS_NAMES):
        for i in range(per_class):
          payload = _jpeg(20 * label + i)
          info = tarfile.TarInfo(f'{split}/{name}/{i:04d}.jpg')
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize('point_at', ['folder', 'tarball'])
def test_cifar10_jpeg_builder_prepares_offline(tmp_path, point_at):
  manual = tmp_path / 'manual'
  manual.mkdir()
  _write_tarball(manual / cifar10_jpeg.TARBALL, per_class=2)
  config = conftest.smoke_config()
  config.data.name = 'cifar10_jpeg'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(manual if point_at == 'folder' else
                               manual / cifar10_jpeg.TARBALL)
  config.data.num_train = config.data.num_test = 0
  ds = data.load(config.data)
  assert ds.name == 'cifar10_jpeg'
  assert ds.train.images.shape == (20, 32, 32, 3) and len(ds.test) == 20
  assert sorted(np.bincount(ds.train.labels)) == [2] * 10
  # The class folder decides the label: image brightness encodes it here.
  mean = ds.train.images.reshape(20, -1).mean(-1)
  np.testing.assert_allclose(mean // 20, ds.train.labels, atol=1)
  # Cached under its own name, never as cifar10.
  assert os.path.isdir(tmp_path / 'tfds' / 'cifar10_jpeg')
  assert not os.path.exists(tmp_path / 'tfds' / 'cifar10')


def test_cifar10_jpeg_without_files_names_the_tarball(tmp_path):
  config = conftest.smoke_config()
  config.data.name = 'cifar10_jpeg'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='cifar10_jpeg.tar.gz'):
    data.load(config.data)


def test_builder_is_registered_under_its_own_name():
  data._import_tfds()  # pylint: disable=protected-access
  assert 'cifar10_jpeg' in tfds.list_builders()
