"""Datasets through tensorflow-datasets, held in memory as numpy arrays.

`load(config.data)` prepares (if needed) and reads a whole dataset with TFDS and
returns uint8 images [N, H, W, C] and int32 labels [N]; `images_to_float`
converts batches to float32 in [0, 1]. Batches come from a permutation seeded
by (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one
would.

Offline use: point `config.data.manual_dir` at a folder with the upstream files
(TFDS verifies their checksums), or copy them to
`<data_dir>/downloads/manual/`. `cifar10_jpeg` is a dataset of its own (see
`mlrobust.cifar10_jpeg`), never reported as `cifar10`.
"""

import dataclasses
import functools
import os
import socket
from typing import Iterator, Optional

from absl import logging
import numpy as np

DATASETS = {
    # name: (image shape, number of classes, upstream files for manual_dir,
    #        download host or None when it cannot be downloaded)
    'mnist': ((28, 28, 1), 10, (
        'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
        't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
              'storage.googleapis.com'),
    'fashion_mnist': ((28, 28, 1), 10, (
        'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
        't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
                      'fashion-mnist.s3-website.eu-central-1.amazonaws.com'),
    'cifar10': ((32, 32, 3), 10, ('cifar-10-binary.tar.gz',),
                'www.cs.toronto.edu'),
    'cifar10_jpeg': ((32, 32, 3), 10, ('cifar10_jpeg.tar.gz',), None),
}


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # [N, H, W, C] uint8
  labels: np.ndarray  # [N] int32

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  test: Split
  num_classes: int


def info(name: str):
  """(image shape, number of classes) of a known dataset."""
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; choose one of '
                     f'{sorted(DATASETS)}')
  shape, num_classes, _, _ = DATASETS[name]
  return shape, num_classes


def _import_tfds():
  """Imports TFDS, keeping TensorFlow off any GPU so JAX keeps its memory."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # Imported for its side effect: it registers the cifar10_jpeg builder.
  from mlrobust import cifar10_jpeg  # noqa: F401,I001  # pylint: disable=g-import-not-at-top,unused-import
  return tfds


def _missing_data_error(name, builder, manual_dir, cause):
  files = DATASETS[name][2]
  default_manual = os.path.join(builder.data_dir_root, 'downloads', 'manual',
                                name)
  where = (f'the folder given as config.data.manual_dir ({manual_dir!r})'
           if manual_dir else
           f'config.data.manual_dir, or the manual directory '
           f'{default_manual!r} (or its parent)')
  hint = ''
  if name == 'cifar10':
    hint = (' Without internet access, the JPEG copy of CIFAR-10 is available '
            'as the separate dataset cifar10_jpeg (config.data.name='
            '\'cifar10_jpeg\'); report its results as cifar10_jpeg.')
  folder = manual_dir or default_manual
  missing = [f for f in files
             if not os.path.exists(os.path.join(folder, f))]
  absent = (f' Missing there: {missing}.' if missing and missing != list(files)
            else '')
  return FileNotFoundError(
      f'dataset {name!r} is not prepared in {builder.data_dir_root!r} and '
      f'could not be prepared: it needs the files {list(files)} in {where}.'
      f'{absent}{hint} (cause: {type(cause).__name__}: {cause})')


def _prepare(tfds, name, data_dir, manual_dir, download):
  kwargs = {}
  if name == 'cifar10_jpeg' and manual_dir and os.path.isfile(manual_dir):
    kwargs['source'] = manual_dir  # A tarball named directly.
    manual_dir = os.path.dirname(manual_dir)
  builder = tfds.builder(name, data_dir=data_dir, **kwargs)
  if builder.is_prepared():
    return builder
  if manual_dir and not os.path.exists(manual_dir):
    raise FileNotFoundError(
        f'config.data.manual_dir {manual_dir!r} does not exist; it must hold '
        f'{list(DATASETS[name][2])} for dataset {name!r}')
  files, host = DATASETS[name][2:]
  manual = manual_dir or default_manual_dir(builder.data_dir_root, name)
  logging.info('Preparing %s in %s (manual_dir=%s)', name,
               builder.data_dir_root, manual)
  config = tfds.download.DownloadConfig(
      manual_dir=manual, try_download_gcs=False,
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  if host is not None and not all(
      os.path.exists(os.path.join(manual, f)) for f in files):
    # TFDS retries a failed download for minutes; fail at once when the
    # download cannot work.
    reason = _download_blocker(host, download)
    if reason:
      raise _missing_data_error(name, builder, manual_dir,
                                ConnectionError(reason))
  try:
    # A download folder per dataset: TFDS names extracted files after the
    # archive, and MNIST and Fashion-MNIST share file names, so a shared
    # folder would silently serve one dataset's images as the other's.
    builder.download_and_prepare(
        download_dir=os.path.join(builder.data_dir_root, 'downloads', name),
        download_config=config)
  except Exception as e:  # pylint: disable=broad-except
    raise _missing_data_error(name, builder, manual_dir, e) from e
  return builder


def default_manual_dir(data_dir, name: str) -> str:
  """`<data_dir>/downloads/manual/<name>` if it exists, else `.../manual`."""
  manual = os.path.join(os.fspath(data_dir), 'downloads', 'manual')
  per_dataset = os.path.join(manual, name)
  return per_dataset if os.path.isdir(per_dataset) else manual


def _download_blocker(host, download):
  """Why downloading from `host` cannot work, or '' if it might."""
  if not download:
    return 'config.data.download is False'
  try:
    socket.getaddrinfo(host, 443)
  except OSError as e:
    return f'cannot resolve the download host {host} ({e})'
  return ''


def _read_split(tfds, builder, split, limit):
  split_name = split if not limit else f'{split}[:{limit}]'
  ds = builder.as_dataset(split=split_name, as_supervised=True,
                          shuffle_files=False).batch(4096)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds):
    images.append(x)
    labels.append(y)
  if not images:
    raise ValueError(f'{builder.name} {split} split is empty')
  images, labels = np.concatenate(images), np.concatenate(labels)
  if limit:  # Also trims readers that ignore split slicing.
    images, labels = images[:limit], labels[:limit]
  return Split(images.astype(np.uint8), labels.astype(np.int32))


def load(data_config) -> Dataset:
  """Loads train and test splits of `data_config.name` into memory.

  Args:
    data_config: `config.data` with fields name, data_dir, manual_dir,
      download, num_train (0 = all), num_test (0 = all).

  Returns:
    A Dataset of uint8 images and int32 labels.

  Raises:
    ValueError: unknown dataset name, or data of the wrong shape.
    FileNotFoundError: the data is not prepared and cannot be prepared; the
      message lists the files needed and where to put them.
  """
  name = data_config.name
  shape, num_classes = info(name)
  tfds = _import_tfds()
  builder = _prepare(tfds, name, data_config.data_dir, data_config.manual_dir,
                     data_config.download)
  try:
    train = _read_split(tfds, builder, 'train', data_config.num_train)
    test = _read_split(tfds, builder, 'test', data_config.num_test)
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__name__ != 'DataLossError':
      raise
    raise ValueError(
        f'the prepared {name} files in {builder.data_dir} are damaged '
        f'({str(e).splitlines()[0][:200]}); delete that folder and run again '
        'to prepare them anew') from None
  for split_name, split in (('train', train), ('test', test)):
    if split.images.shape[1:] != shape:
      raise ValueError(f'{name} {split_name} images have shape '
                       f'{split.images.shape[1:]}, expected {shape}')
    if len(split) == 0:
      raise ValueError(f'{name} {split_name} split is empty')
    if split.labels.min() < 0 or split.labels.max() >= num_classes:
      raise ValueError(f'{name} {split_name} labels outside [0, '
                       f'{num_classes})')
  logging.info('Loaded %s: %d train, %d test images of shape %s', name,
               len(train), len(test), shape)
  return Dataset(name, train, test, num_classes)


def load_test(data_config, n: int):
  """(dataset name, the first n test images as float32 in [0, 1], labels).

  n = 0: the whole test split. Reads only one training example.
  """
  data_config = data_config.copy_and_resolve_references()
  with data_config.unlocked():
    data_config.num_train = 1  # Only the test split is needed.
    data_config.num_test = n
  dataset = load(data_config)
  return (dataset.name, images_to_float(dataset.test.images),
          dataset.test.labels)


def images_to_float(images) -> np.ndarray:
  """uint8 images to float32 in [0, 1] (works on numpy and jax arrays)."""
  return images.astype(np.float32) / 255.0


@functools.lru_cache(maxsize=2)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n training examples in `epoch` (deterministic)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batch_indices(seed: int, step: int, batch_size: int,
                        n: int) -> np.ndarray:
  """Indices of the training batch at global `step` (drops the remainder)."""
  steps_per_epoch = n // batch_size
  epoch, offset = divmod(step, steps_per_epoch)
  perm = epoch_permutation(seed, epoch, n)
  return perm[offset * batch_size:(offset + 1) * batch_size]


def eval_batches(split: Split, batch_size: int,
                 limit: Optional[int] = None) -> Iterator[tuple]:
  """(images uint8, labels) batches in order; the last one may be smaller."""
  n = len(split) if not limit else min(limit, len(split))
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    yield split.images[start:stop], split.labels[start:stop]
