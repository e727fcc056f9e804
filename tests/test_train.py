"""Training end to end on mock data: files, secrecy, resume, failures."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlrobust import checkpoints
from mlrobust import data
from mlrobust import train
from mlrobust import workdir as workdir_lib
from tests import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('preset', ['softmax_ce', 'softmax_mse', 'tanh_mse'])
def test_smoke_training_writes_a_loadable_run(preset, mock_mnist, tmp_path):
  config = conftest.smoke_config(preset, mock_mnist)
  config.head.codebook_key = 987654321
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  assert 0 <= result['test_accuracy'] <= 1 and result['num_test'] == 128
  assert result['step'] == 16
  assert sorted(os.listdir(workdir)) == [
      '.lock', 'checkpoints', 'config.json', 'manifest.json', 'metrics.jsonl',
      'targets.npy']
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      'metrics.jsonl'))]
  assert {'train_loss', 'train_accuracy', 'images_per_sec'} <= set(records[0])
  assert [r['test_accuracy'] for r in records if 'test_accuracy' in r]
  assert all(np.isfinite(r.get('train_loss', 0)) for r in records)
  for name in ('config.json', 'metrics.jsonl'):
    assert '987654321' not in open(os.path.join(workdir, name)).read()
  clf = workdir_lib.load_classifier(config, workdir)
  targets = np.load(os.path.join(workdir, 'targets.npy'))
  assert targets.shape == ((10, 128) if preset == 'tanh_mse' else (10, 10))
  x = jnp.zeros((2, 28, 28, 1))
  assert clf.predict(x).shape == (2,) and clf.scores(x).shape == (2, 10)


def test_codebook_without_key_is_secret_and_kept(mock_mnist, tmp_path):
  config = conftest.smoke_config('tanh_mse', mock_mnist,
                                 **{'train.num_epochs': 1})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  first = np.load(os.path.join(workdir, 'targets.npy'))
  assert first.min() >= -1 and first.max() <= 1
  train.train_and_evaluate(config, workdir)  # Finished run: reloads.
  np.testing.assert_array_equal(first, np.load(os.path.join(workdir,
                                                            'targets.npy')))
  other = str(tmp_path / 'other')
  train.train_and_evaluate(config, other)
  assert not np.array_equal(first, np.load(os.path.join(other,
                                                        'targets.npy')))


# Dropout and augmentation make the check cover every source of randomness.
RESUME_OVERRIDES = {'train.num_epochs': 3, 'train.checkpoint_every_steps': 2,
                    'model.dropout_rate': 0.1, 'train.augment': 'flip_crop'}
_CHILD = textwrap.dedent('''
    import sys, time
    import tensorflow_datasets as tfds
    from mlrobust import checkpoints, train
    from tests import conftest, test_train
    workdir, manual, slow = sys.argv[1], sys.argv[2], sys.argv[3] == 'slow'
    if slow:  # Widen the window in which the parent kills this process.
      save = checkpoints.save
      def slow_save(*args):
        save(*args)
        time.sleep(0.7)
      checkpoints.save = slow_save
    config = conftest.smoke_config(
        'tanh_mse', {'data_dir': workdir + '_tfds', 'manual_dir': manual},
        **test_train.RESUME_OVERRIDES)
    with tfds.testing.mock_data(num_examples=320):
      train.train_and_evaluate(config, workdir)
''')


def _child(workdir, manual, slow):
  env = dict(os.environ, MLROBUST_CODEBOOK_KEY='1234', PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, '-c', _CHILD, workdir, manual,
                           'slow' if slow else 'fast'], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)


def test_sigkilled_run_resumes_to_the_same_parameters(mock_mnist, tmp_path):
  manual = mock_mnist['manual_dir']
  full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')
  proc = _child(killed, manual, slow=True)
  ckpt_dir = checkpoints.checkpoint_dir(killed)
  deadline = time.time() + 600  # Generous: the child compiles first.
  while time.time() < deadline:
    steps = ([int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
             if os.path.isdir(ckpt_dir) else [])
    if steps and max(steps) >= 6:
      break
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  steps = checkpoints.make_manager(killed, read_only=True).all_steps()
  assert steps and max(steps) < 24  # Killed mid-run.

  for workdir in (killed, full):
    proc = _child(workdir, manual, slow=False)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]

  config = conftest.smoke_config('tanh_mse', **RESUME_OVERRIDES)
  os.environ['MLROBUST_CODEBOOK_KEY'] = '1234'
  try:
    a = workdir_lib.load_classifier(config, full)
    b = workdir_lib.load_classifier(config, killed)
  finally:
    del os.environ['MLROBUST_CODEBOOK_KEY']
  chex.assert_trees_all_close(a.variables, b.variables, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(a.targets, b.targets)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(
    mock_mnist, tmp_path, monkeypatch):
  config = conftest.smoke_config('softmax_mse', mock_mnist,
                                 **{'train.checkpoint_every_steps': 2})
  real_load = data.load

  def poisoned_load(data_config):
    # One NaN pixel in an example of the batch at step 5 (0-based).
    ds = real_load(data_config)
    images = ds.train.images.astype(np.float32)
    bad = data.train_batch_indices(config.seed, 5, config.train.batch_size,
                                   len(images))[0]
    images[bad, 3, 3, 0] = np.nan
    return data.Dataset(ds.name, data.Split(images, ds.train.labels),
                        ds.test, ds.num_classes)

  monkeypatch.setattr(data, 'load', poisoned_load)
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.NonFiniteLossError, match='at step 5'):
    train.train_and_evaluate(config, workdir)
  manager = checkpoints.make_manager(workdir, read_only=True)
  assert manager.latest_step() == 4
  chex.assert_tree_all_finite(
      workdir_lib.load_classifier(config, workdir).variables)


def _snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(root, f)
      out[path] = open(path, 'rb').read()
  return out


def test_different_config_in_same_workdir_fails_untouched(mock_mnist,
                                                          tmp_path):
  config = conftest.smoke_config('softmax_ce', mock_mnist,
                                 **{'train.num_epochs': 1})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  before = _snapshot(workdir)
  config.model.growth_rate = 6
  with pytest.raises(checkpoints.CheckpointError, match='model'):
    train.train_and_evaluate(config, workdir)
  assert _snapshot(workdir) == before


def test_corrupt_checkpoint_fails_untouched(mock_mnist, tmp_path):
  config = conftest.smoke_config('softmax_ce', mock_mnist,
                                 **{'train.num_epochs': 1})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  latest = os.path.join(checkpoints.checkpoint_dir(workdir), '8')
  for root, _, files in os.walk(latest):
    for f in files:
      if f != '_CHECKPOINT_METADATA':
        with open(os.path.join(root, f), 'wb') as fh:
          fh.write(b'garbage')
  before = _snapshot(workdir)
  config.train.num_epochs = 1
  with pytest.raises(checkpoints.CheckpointError, match='cannot be restored'):
    train.train_and_evaluate(config, workdir)
  with pytest.raises(checkpoints.CheckpointError, match='cannot be restored'):
    workdir_lib.load_classifier(config, workdir)
  assert _snapshot(workdir) == before


def test_load_classifier_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='train first'):
    workdir_lib.load_classifier(conftest.smoke_config(), str(tmp_path))


@pytest.mark.parametrize('kind', ['crop', 'flip_crop'])
def test_augmentation_is_a_padded_crop_and_flip_of_each_image(kind):
  # Distinct pixel values, so each output matches exactly one hand-made crop.
  x = np.arange(16 * 6 * 5 * 2, dtype=np.float32).reshape(16, 6, 5, 2) + 1
  out = np.asarray(train.augment(jax.random.key(3), jnp.asarray(x), kind))
  assert out.shape == x.shape
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  seen_offsets, seen_flips = set(), set()
  for i in range(len(x)):
    matches = []
    for dy in range(9):
      for dx in range(9):
        crop = padded[i, dy:dy + 6, dx:dx + 5]
        for flip in ((False, True) if kind == 'flip_crop' else (False,)):
          if np.array_equal(out[i], crop[:, ::-1] if flip else crop):
            matches.append((dy, dx, flip))
    assert len(matches) == 1, (i, matches)
    seen_offsets.add(matches[0][:2])
    seen_flips.add(matches[0][2])
  assert len(seen_offsets) > 8  # Offsets vary over the batch...
  assert seen_flips == ({False, True} if kind == 'flip_crop' else {False})
  np.testing.assert_array_equal(
      train.augment(jax.random.key(3), jnp.asarray(x), 'none'), x)


def _schedule(name, warmup_epochs, num_epochs=4, steps_per_epoch=10):
  from configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config('softmax_ce,paper')
  config.optimizer.schedule = name
  config.optimizer.learning_rate = 0.1
  config.optimizer.warmup_epochs = warmup_epochs
  config.train.num_epochs = num_epochs
  schedule = train.make_schedule(config, steps_per_epoch)
  return lambda step: float(schedule(step))


def test_piecewise_schedule_with_warmup_at_its_boundaries():
  lr = _schedule('piecewise', warmup_epochs=1)  # 40 steps, 10 of warmup.
  assert lr(0) == 0.0 and lr(5) == pytest.approx(0.05)
  assert lr(10) == pytest.approx(0.1) and lr(19) == pytest.approx(0.1)
  # x0.1 at 50% and 75% of all 40 steps, counted from step 0.
  assert lr(20) == pytest.approx(0.01) and lr(29) == pytest.approx(0.01)
  assert lr(30) == pytest.approx(0.001) and lr(39) == pytest.approx(0.001)
  no_warmup = _schedule('piecewise', warmup_epochs=0)
  assert no_warmup(0) == pytest.approx(0.1)
  assert no_warmup(19) == pytest.approx(0.1)
  assert no_warmup(20) == pytest.approx(0.01)
  assert no_warmup(30) == pytest.approx(0.001)


def test_cosine_schedule_with_warmup_at_its_boundaries():
  lr = _schedule('cosine', warmup_epochs=1)
  assert lr(0) == 0.0 and lr(10) == pytest.approx(0.1)
  assert lr(25) == pytest.approx(0.05)  # Half way through the decay.
  assert lr(40) == pytest.approx(0.0, abs=1e-9)
  assert lr(17) == pytest.approx(0.05 * (1 + np.cos(np.pi * 7 / 30)))
  assert _schedule('constant', warmup_epochs=0)(39) == pytest.approx(0.1)
