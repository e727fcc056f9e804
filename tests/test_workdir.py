"""The run store: secrets, atomic result files, partial restores."""

import json
import logging
import os

import numpy as np
import pytest

from mlrobust import attack_run
from mlrobust import checkpoints
from mlrobust import config_lib
from mlrobust import evaluate
from mlrobust import lipschitz_run
from mlrobust import train
from mlrobust import workdir as workdir_lib
from tests import conftest

KEY = 739184627718293  # A codebook key no file or log line may contain.


def _key_forms(key):
  return [str(key).encode(), hex(key).encode(), hex(key)[2:].encode(),
          key.to_bytes(8, 'little'), key.to_bytes(8, 'big')]


def test_codebook_key_is_in_no_file_and_no_log_line(mock_mnist, tmp_path,
                                                     caplog, capfd):
  caplog.set_level(logging.DEBUG)
  config = conftest.smoke_config('tanh_mse', mock_mnist,
                                 **{'train.num_epochs': 1})
  config.head.codebook_key = KEY
  workdir = str(tmp_path / 'run')
  logging.getLogger('absl').info('config: %s',
                                 config_lib.public_dict(config))
  train.train_and_evaluate(config, workdir)
  attack_run.run_attack(config, workdir)
  config.eval.grid = 'targeted:fgsm:eps=0.1'
  evaluate.run_evaluate(config, workdir)
  lipschitz_run.run_lipschitz(config, workdir)
  # The key did make the codebook.
  expected = np.load(os.path.join(workdir, 'targets.npy'))
  config.head.codebook_key = KEY + 1
  os.makedirs(tmp_path / 'x')
  assert not np.array_equal(
      expected, workdir_lib.load_or_make_targets(config, str(tmp_path / 'x'),
                                                 10))
  files = [os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs]
  assert len(files) > 10  # Checkpoints, results, config, metrics, targets.
  for path in files:
    with open(path, 'rb') as f:
      content = f.read()
    for form in _key_forms(KEY):
      assert form not in content, (path, form)
  captured = capfd.readouterr()
  logs = [r.getMessage() for r in caplog.records]
  assert len(logs) > 10
  for text in logs + [captured.out, captured.err]:
    assert str(KEY) not in text and hex(KEY)[2:] not in text


def test_saved_config_has_no_secrets_and_round_trips(mock_mnist, tmp_path):
  config = conftest.smoke_config('tanh_mse', mock_mnist,
                                 **{'train.num_epochs': 1})
  config.head.codebook_key = KEY
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  workdir_lib.check_or_write_config(config, workdir)
  saved = workdir_lib.saved_config(workdir)
  assert saved.head.codebook_key is None
  assert saved.model.to_dict() == config.model.to_dict()
  # Re-checking the saved config (no key) against the run is accepted.
  workdir_lib.check_or_write_config(saved, workdir)


def test_result_writers_leave_no_temporary_files(tmp_path):
  workdir_lib.write_json(str(tmp_path / 'a.json'), {'b': 1, 'a': [1.5]})
  workdir_lib.write_npz(str(tmp_path / 'a.npz'), x=np.arange(3))
  workdir_lib.write_text(str(tmp_path / 'a.md'), 'text\n')
  assert sorted(os.listdir(tmp_path)) == ['a.json', 'a.md', 'a.npz']
  assert workdir_lib.read_json(str(tmp_path / 'a.json')) == {'a': [1.5],
                                                             'b': 1}


def test_partial_restore_reads_only_the_asked_entries(tmp_path):
  state = {'step': np.int32(3), 'params': {'w': np.arange(4.0)},
           'batch_stats': {'m': np.ones(2)},
           'opt_state': {'mu': np.zeros(7)}}
  manager = checkpoints.make_manager(str(tmp_path))
  checkpoints.save(manager, 3, state)
  reader = checkpoints.make_manager(str(tmp_path), read_only=True)
  target = {'params': {'w': np.zeros(4)}, 'batch_stats': {'m': np.zeros(2)}}
  restored = checkpoints.restore(reader, target, partial=True)
  assert sorted(restored) == ['batch_stats', 'params']
  np.testing.assert_array_equal(restored['params']['w'], np.arange(4.0))


def test_values_that_differ_from_the_fingerprint_are_refused(tmp_path):
  state = {'step': np.array(3, np.int32), 'params': {'w': np.arange(4.0)},
           'batch_stats': {'m': np.ones(2)},
           'opt_state': {'mu': np.zeros(7)}}
  manager = checkpoints.make_manager(str(tmp_path))
  checkpoints.save(manager, 3, state)
  # What another state's fingerprint would be: as if the files had changed.
  other = dict(state, params={'w': np.arange(4.0) + 1e-6})
  path = os.path.join(str(manager.directory), '3',
                      checkpoints.FINGERPRINT_FILE)
  with open(path, 'w') as f:
    json.dump({'state': checkpoints.tree_digest(other),
               'variables': checkpoints.tree_digest(
                   checkpoints.variables_of(other))}, f)
  for partial, target in ((False, state), (True, checkpoints.variables_of(
      state))):
    reader = checkpoints.make_manager(str(tmp_path), read_only=True)
    with pytest.raises(checkpoints.CheckpointError,
                       match='does not match the fingerprint'):
      checkpoints.restore(reader, target, partial=partial)
