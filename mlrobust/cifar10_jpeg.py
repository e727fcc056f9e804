"""TFDS builder for `cifar10_jpeg`, a JPEG copy of CIFAR-10 prepared offline.

The copy holds all 60,000 CIFAR-10 images as JPEG files laid out as
`train/<class>/*.jpg` and `test/<class>/*.jpg`. It is not pixel-exact (JPEG
quality 75 with chroma subsampling), so it is a dataset of its own: it is cached
under `<data_dir>/cifar10_jpeg/` and results on it must be reported as
`cifar10_jpeg`, never as `cifar10`.

The manual directory (`config.data.manual_dir`, or TFDS's
`<data_dir>/downloads/manual/`) may hold the tarball `cifar10_jpeg.tar.gz`, or
the extracted `train/` and `test/` folders; `manual_dir` may also name a tarball
of that layout itself (passed to the builder as `source`). The JPEG bytes are
stored unchanged.
"""

import io
import os
import tarfile

import tensorflow_datasets as tfds

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
               'horse', 'ship', 'truck')  # CIFAR-10's label order.
TARBALL = 'cifar10_jpeg.tar.gz'
SPLITS = {'train': 50_000, 'test': 10_000}


def find_source(manual_dir: str) -> str:
  """The tarball or extracted folder inside (or named by) `manual_dir`.

  Raises:
    FileNotFoundError: naming the files needed and where they may go.
  """
  manual_dir = os.fspath(manual_dir)
  candidates = [manual_dir, os.path.join(manual_dir, TARBALL)]
  for path in candidates:
    if os.path.isfile(path) and tarfile.is_tarfile(path):
      return path
  if all(os.path.isdir(os.path.join(manual_dir, s)) for s in SPLITS):
    return manual_dir
  raise FileNotFoundError(
      f'cifar10_jpeg needs {TARBALL} (or its extracted train/ and test/ '
      f'folders of <class>/*.jpg) in the manual directory {manual_dir!r}; set '
      f'config.data.manual_dir to the folder holding it, or to the tarball '
      f'itself.')


class Cifar10Jpeg(tfds.core.GeneratorBasedBuilder):
  """CIFAR-10 as JPEG files (quality 75); not pixel-exact CIFAR-10."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place {TARBALL} (train/<class>/*.jpg and test/<class>/*.jpg) in the '
      f'manual directory, or pass its folder as manual_dir.')

  def __init__(self, *, source: str | None = None, **kwargs):
    """`source`: a tarball or folder to read instead of the manual dir."""
    super().__init__(**kwargs)
    self._source = source

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'image': tfds.features.Image(shape=(32, 32, 3),
                                         encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        description='CIFAR-10 re-encoded as JPEG (quality 75); labels and '
        'content are genuine, pixels are not.')

  def _split_generators(self, dl_manager):
    source = find_source(self._source or dl_manager.manual_dir)
    return {split: self._generate_examples(source, split) for split in SPLITS}

  def _generate_examples(self, source, split):
    if os.path.isdir(source):
      for label in CLASS_NAMES:
        folder = os.path.join(source, split, label)
        for name in sorted(os.listdir(folder)):
          path = os.path.join(folder, name)
          key = f'{split}/{label}/{name}'
          with open(path, 'rb') as f:
            yield key, self._example(key, f.read(), label)
      return
    with tarfile.open(source, 'r:*') as tar:
      for member in tar:
        parts = member.name.strip('./').split('/')
        if not member.isfile() or len(parts) != 3 or parts[0] != split:
          continue
        if parts[1] not in CLASS_NAMES:
          raise ValueError(f'unexpected class folder {parts[1]!r} in '
                           f'{source}; expected one of {CLASS_NAMES}')
        data = tar.extractfile(member).read()
        yield member.name, self._example(member.name, data, parts[1])

  def _example(self, key, data, label):
    return {'id': key, 'image': io.BytesIO(data), 'label': label}
