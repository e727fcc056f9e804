"""Fault injection: each way a run on disk was silently wrong, reproduced.

Every test corrupts, reuses or mislabels a smoke run the way a careless or
hostile user could, and asserts a clear error or the correct behaviour.
"""

import functools
import json
import os
import shutil

import chex
import numpy as np
import pytest

from mlrobust import attack_run
from mlrobust import attacks
from mlrobust import checkpoints
from mlrobust import evaluate
from mlrobust import report
from mlrobust import train
from mlrobust import workdir as workdir_lib
from tests import conftest


def _chunk_files(folder):
  """The data files of an orbax (OCDBT) checkpoint step."""
  return sorted(
      os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
      if os.path.basename(d) == 'd' and
      os.path.basename(os.path.dirname(d)).startswith('ocdbt.process'))


def _flip(path, position):
  with open(path, 'r+b') as f:
    f.seek(position)
    byte = f.read(1)
    f.seek(position)
    f.write(bytes([byte[0] ^ 0x40]))


def test_a_flipped_byte_in_a_checkpoint_is_refused(trained):
  # One flipped byte at a time, in every data file of the checkpoint: the
  # model either refuses it (a clear CheckpointError) or, if the byte is not
  # part of what is read (e.g. optimizer state), loads exactly the saved
  # values. Never other values.
  config, workdir = trained
  manager = checkpoints.make_manager(workdir, read_only=True)
  step_dir = os.path.join(checkpoints.checkpoint_dir(workdir),
                          str(manager.latest_step()))
  good = workdir_lib.load_trained(config, workdir)
  refused = []
  for path in _chunk_files(step_dir):
    size = os.path.getsize(path)
    for position in (size // 4, size // 2, 3 * size // 4):
      _flip(path, position)
      try:
        clf, provenance = workdir_lib.load_trained(config, workdir)
        assert provenance == good.provenance
        chex.assert_trees_all_equal(clf.variables, good.classifier.variables)
      except checkpoints.CheckpointError as e:
        refused.append((path, position, str(e)))
      _flip(path, position)  # Undo.
  # Refused by the fingerprint, the finiteness check or orbax itself,
  # depending on where the byte lands (test_workdir checks the fingerprint
  # alone).
  assert refused
  # Resuming reads the whole training state: any flip is found.
  for path in _chunk_files(step_dir):
    _flip(path, os.path.getsize(path) // 2)
  with pytest.raises(checkpoints.CheckpointError):
    train.train_and_evaluate(config, workdir)
  for path in _chunk_files(step_dir):
    _flip(path, os.path.getsize(path) // 2)  # Undo.
  # A refused checkpoint writes no result.
  path, position, _ = refused[0]
  _flip(path, position)
  with pytest.raises(checkpoints.CheckpointError):
    attack_run.run_attack(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'attacks'))


def test_result_files_are_strict_json(tmp_path):
  path = str(tmp_path / 'r.json')
  workdir_lib.write_json(path, {'a': float('nan'), 'b': [float('-inf'), 1.0]})
  text = open(path).read()
  assert 'NaN' not in text and 'Infinity' not in text
  assert json.loads(text) == {'a': None, 'b': [None, 1.0]}


def test_cells_are_rerun_after_retraining(mock_mnist, tmp_path, monkeypatch):
  # No codebook key: a retrained run is a different model.
  config = conftest.smoke_config('tanh_mse', mock_mnist,
                                 **{'train.num_epochs': 1})
  config.eval.grid = 'fgsm:eps=0.1'
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  first = evaluate.run_evaluate(config, workdir)['cells'][0]
  for name in ('checkpoints', 'targets.npy', 'metrics.jsonl',
               'manifest.json'):
    path = os.path.join(workdir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  train.train_and_evaluate(config, workdir)
  calls = []
  real = attacks.ATTACKS['fgsm']

  @functools.wraps(real)
  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setitem(attacks.ATTACKS, 'fgsm', counting)
  second = evaluate.run_evaluate(config, workdir)['cells'][0]
  assert calls == [1]  # Run again, not "already done".
  assert second['model_fingerprint'] != first['model_fingerprint']
  assert os.path.exists(os.path.join(
      workdir, 'eval', 'fgsm_untargeted_eps=0.1_n=16.json.stale'))
  # Unchanged model and images: reused.
  calls.clear()
  evaluate.run_evaluate(config, workdir)
  assert not calls


def test_attack_files_name_their_image_count_and_refuse_negative_counts(
    trained):
  config, workdir = trained
  config.attack.name = 'fgsm'
  config.eval.num_examples = 8
  eight = attack_run.run_attack(config, workdir)
  config.eval.num_examples = 16
  sixteen = attack_run.run_attack(config, workdir)
  assert eight['path'].endswith('n=8.json')
  assert sixteen['path'].endswith('n=16.json')
  assert os.path.exists(eight['path'])
  config.eval.num_examples = -5
  with pytest.raises(ValueError, match='eval.num_examples must be >= 0'):
    attack_run.run_attack(config, workdir)


def test_one_writer_per_workdir(trained, tmp_path):
  config, workdir = trained
  with workdir_lib.lock(workdir):
    with pytest.raises(workdir_lib.WorkdirError,
                       match=f'in use by another process \\(pid {os.getpid()}'):
      train.train_and_evaluate(config, workdir)
    with pytest.raises(workdir_lib.WorkdirError, match='in use'):
      attack_run.run_attack(config, workdir)
  # A lock file left by a dead process does not block.
  stale = tmp_path / 'stale'
  stale.mkdir()
  (stale / '.lock').write_text('pid 999999 on elsewhere')
  with workdir_lib.lock(str(stale)):
    assert 'pid' in (stale / '.lock').read_text()


def _edit_config(workdir, edit):
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  edit(saved)
  with open(path, 'w') as f:
    json.dump(saved, f)


def test_report_derives_labels_and_refuses_mismatches(trained, tmp_path):
  config, workdir = trained
  config.eval.grid = 'fgsm:eps=0.1'
  evaluate.run_evaluate(config, workdir)
  out = str(tmp_path / 'report')
  report.render([workdir], out)  # The honest run renders.
  # A hand-edited preset.
  _edit_config(workdir, lambda c: c.update(preset='softmax_ce'))
  with pytest.raises(ValueError, match="says preset 'softmax_ce'"):
    report.render([workdir], out)
  # The tanh_mse preset with a softmax head.
  def softmax_head(c):
    c.update(preset='tanh_mse')
    c['head'].update(activation='softmax', targets='onehot', dim=10)
  _edit_config(workdir, softmax_head)
  with pytest.raises(ValueError, match="those of 'softmax_mse'"):
    report.render([workdir], out)
  _edit_config(workdir, lambda c: c['head'].update(
      activation='tanh', targets='codebook', dim=128))
  # A Fashion-MNIST cell in an MNIST workdir.
  cell = os.path.join(workdir, 'eval', 'fgsm_untargeted_eps=0.1_n=16.json')
  record = json.load(open(cell))
  record['dataset'] = 'fashion_mnist'
  foreign = cell.replace('eps=0.1', 'eps=0.2')
  with open(foreign, 'w') as f:
    json.dump(record, f)
  with pytest.raises(ValueError, match='eps=0.2_n=16.json is a result of'):
    report.render([workdir], out)
  with open(foreign, 'w') as f:
    f.write('garbage')
  with pytest.raises(ValueError, match='eps=0.2_n=16.json is not valid JSON'):
    report.render([workdir], out)


def test_results_record_the_step_and_say_when_it_is_not_the_last(
    mock_mnist, tmp_path):
  config = conftest.smoke_config('tanh_mse', mock_mnist)  # 2 epochs.
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  manager = checkpoints.make_manager(workdir, read_only=True)
  steps = sorted(manager.all_steps())
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir),
                             str(steps[-1])))
  config.attack.name = 'fgsm'
  summary = attack_run.run_attack(config, workdir)
  assert summary['step'] == steps[-2] and summary['final_step'] == steps[-1]
  assert summary['verified']
  assert f'checkpoint step {steps[-2]}, not the final step' in (
      attack_run.describe(summary))


def test_changed_targets_are_refused(trained):
  config, workdir = trained
  path = os.path.join(workdir, 'targets.npy')
  good = np.load(path)
  swapped = good.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  for bad in (swapped, np.where(np.arange(good.size).reshape(good.shape) == 3,
                                np.nan, good)):
    np.save(path, bad)
    with pytest.raises(checkpoints.CheckpointError, match='targets.npy'):
      workdir_lib.load_classifier(config, workdir)
  np.save(path, good)
  workdir_lib.load_classifier(config, workdir)


def test_readers_never_rewrite_the_run_identity(trained):
  config, workdir = trained
  os.remove(os.path.join(workdir, 'config.json'))
  config.seed = 5
  config.data.num_train = 64
  with pytest.raises(checkpoints.CheckpointError, match='config.json is '
                     'missing'):
    attack_run.run_attack(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'config.json'))


def test_a_hand_edited_preset_is_refused_on_resume(trained):
  config, workdir = trained
  _edit_config(workdir, lambda c: c.update(preset='softmax_mse'))
  with pytest.raises(checkpoints.CheckpointError, match="'preset'"):
    train.train_and_evaluate(config, workdir)


def test_the_secret_codebook_is_owner_only(trained):
  _, workdir = trained
  assert os.stat(os.path.join(workdir, 'targets.npy')).st_mode & 0o777 == 0o600
  assert os.stat(workdir).st_mode & 0o777 == 0o700


def test_a_result_that_cannot_be_written_goes_to_a_named_fallback(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('a file where a folder should be')
  with pytest.raises(workdir_lib.WorkdirError, match='saved to') as e:
    workdir_lib.write_json(str(blocker / 'r.json'), {'accuracy': 0.5})
  fallback = str(e.value).rsplit('saved to ', 1)[1].split(' instead')[0]
  assert json.load(open(fallback)) == {'accuracy': 0.5}
  with pytest.raises(workdir_lib.WorkdirError, match='cannot write in'):
    workdir_lib.check_writable(str(blocker / 'run'))


def test_a_workdir_that_is_a_file_is_a_clear_error(mock_mnist, tmp_path):
  config = conftest.smoke_config('tanh_mse', mock_mnist)
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(workdir_lib.WorkdirError, match='cannot write in'):
    train.train_and_evaluate(config, str(blocker))
  with pytest.raises(workdir_lib.WorkdirError, match='cannot write in'):
    train.train_and_evaluate(config, str(blocker / 'run'))


def test_bad_attack_values_fail_before_the_model_loads(tmp_path):
  # The workdir does not even exist: the parameter is reported first.
  config = conftest.smoke_config()
  config.attack.eps = -0.1
  with pytest.raises(ValueError, match='eps must be >= 0'):
    attack_run.run_attack(config, str(tmp_path / 'none'))
  config.attack.eps = None
  config.attack.loss = 'hinge'
  with pytest.raises(ValueError, match='unknown attack loss'):
    attack_run.run_attack(config, str(tmp_path / 'none'))
  config = conftest.smoke_config()
  config.eval.grid = 'deepfool:max_iter=0'
  with pytest.raises(ValueError, match='max_iter must be >= 1'):
    evaluate.run_evaluate(config, str(tmp_path / 'none'))
  assert not os.path.exists(tmp_path / 'none')
