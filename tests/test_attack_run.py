"""--mode=attack on a smoke-trained workdir (mock data)."""

import json
import os

import pytest

from mlrobust import attack_run
from mlrobust import checkpoints
from tests import conftest


@pytest.mark.parametrize('name, targeted, extra', [
    ('pgd', False, {'eps': 0.3, 'nb_iter': 3}),
    ('mim', True, {'eps': 0.2}),
    ('deepfool', False, {'max_iter': 3}),
    ('cw_l2_distance', True, {'max_iterations': 5, 'binary_search_steps': 1}),
    ('lbfgs', True, {'max_iterations': 3, 'binary_search_steps': 1}),
])
def test_attack_mode_writes_a_result(trained, name, targeted, extra):
  config, workdir = trained
  config.attack.name = name
  config.attack.targeted = targeted
  for key, value in extra.items():
    config.attack[key] = value
  summary = attack_run.run_attack(config, workdir)
  saved = json.load(open(summary['path']))
  assert saved['num_examples'] == 32 and saved['attack'] == name
  assert saved['targeted'] == targeted
  assert 0 <= saved['success_rate'] <= 1 and 0 <= saved['clean_accuracy'] <= 1
  for key, value in extra.items():
    assert saved['params'][key] == value
  assert os.path.dirname(summary['path']).endswith('attacks')


def test_parameter_the_attack_does_not_take_is_rejected(trained):
  config, workdir = trained
  config.attack.name = 'deepfool'
  config.attack.eps = 0.1
  with pytest.raises(ValueError,
                     match="config.attack: attack 'deepfool' does not take"):
    attack_run.run_attack(config, workdir)
  config.attack.eps = None
  config.attack.targeted = True
  with pytest.raises(ValueError, match='untargeted only'):
    attack_run.run_attack(config, workdir)


def test_attack_without_a_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='train first'):
    attack_run.run_attack(conftest.smoke_config(), str(tmp_path))
