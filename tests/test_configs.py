"""Configs: every preset loads and validates; bad values fail with choices."""

import json
import os
import subprocess
import sys

import pytest

from configs import cifar10
from configs import fashion_mnist
from configs import mnist
from mlrobust import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('module', [mnist, fashion_mnist, cifar10])
@pytest.mark.parametrize('preset', ['softmax_ce', 'softmax_mse', 'tanh_mse'])
@pytest.mark.parametrize('size', ['paper', 'cpu', 'smoke'])
def test_all_presets_validate(module, preset, size):
  config = module.get_config(f'{preset},{size}')
  config_lib.validate(config)
  assert config.preset == preset and config.size == size


def test_cifar_adaptive_grid_has_the_papers_eps_and_k_over_255():
  eps = cifar10.get_config('softmax_ce,cpu').adaptive.eps
  assert list(eps) == sorted(eps)
  assert {0.01, 0.05, 0.1, 0.2} <= set(eps)
  assert [round(e * 255, 9) for e in eps if e not in (0.01, 0.05, 0.1, 0.2)
          ] == [2, 4, 8, 16]
  assert mnist.get_config('softmax_ce,cpu').adaptive.eps == (
      0.01, 0.05, 0.1, 0.2)


def test_defaults_are_paper_tanh_mse():
  config = mnist.get_config()
  assert (config.head.activation, config.head.targets, config.loss,
          config.head.dim) == ('tanh', 'codebook', 'mse', 128)
  assert (config.model.depth, config.model.growth_rate) == (40, 12)


@pytest.mark.parametrize('arg', ['tanh', 'tanh_mse,gpu', 'cpu,smoke',
                                 'softmax_ce,tanh_mse'])
def test_unknown_or_repeated_words_fail(arg):
  with pytest.raises(ValueError, match='softmax_ce'):
    mnist.get_config(arg)


@pytest.mark.parametrize('field, value, match', [
    ('model.depth', 41, 'depth must be'),
    ('optimizer.learning_rate', 0.0, 'learning_rate must be > 0'),
    ('optimizer.learning_rate', -1.0, 'learning_rate must be > 0'),
    ('train.batch_size', 0, 'batch_size must be >= 1'),
    ('head.dim', 0, 'head.dim must be in \\[1, 65536\\]'),
    ('head.dim', 10**9, 'head.dim must be in'),
    ('attack.batch_size', 0, 'attack.batch_size must be >= 1'),
    ('eval.num_examples', -5, 'eval.num_examples must be >= 0'),
    ('head.activation', 'relu', 'allowed: softmax, tanh'),
    ('loss', 'hinge', r"allowed: \['ce', 'mse'\]"),
    ('optimizer.name', 'lamb', 'allowed'),
    ('data.name', 'svhn', 'choose one of'),
])
def test_bad_values_fail(field, value, match):
  config = mnist.get_config('tanh_mse,smoke')
  section, _, leaf = field.rpartition('.')
  (config[section] if section else config)[leaf] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_inconsistent_heads_fail():
  config = mnist.get_config('softmax_ce,smoke')
  config.head.targets = 'codebook'
  config.head.dim = 128
  with pytest.raises(ValueError, match='tanh'):
    config_lib.validate(config)
  config = mnist.get_config('tanh_mse,smoke')
  config.loss = 'ce'
  with pytest.raises(ValueError, match="loss 'ce' needs"):
    config_lib.validate(config)


def test_codebook_key_is_redacted(monkeypatch):
  config = mnist.get_config('tanh_mse,smoke')
  config.head.codebook_key = 123456789
  text = json.dumps(config_lib.public_dict(config))
  assert '123456789' not in text and '<redacted>' in text
  assert config_lib.codebook_key(config) == 123456789
  config.head.codebook_key = None
  monkeypatch.setenv(config_lib.CODEBOOK_KEY_ENV, '42')
  assert config_lib.codebook_key(config) == 42
  monkeypatch.setenv(config_lib.CODEBOOK_KEY_ENV, 'secret')
  with pytest.raises(ValueError, match='integer'):
    config_lib.codebook_key(config)


def _launch(*args, tmp_path):
  return subprocess.run(
      [sys.executable, 'launch.py', f'--workdir={tmp_path}', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize('args, message', [
    (['--config=configs/mnist.py:tanh_mse,smoke', '--config.model.depht=10'],
     'depht'),
    (['--config=configs/mnist.py:tanh_mse,tiny'], 'tiny'),
    (['--config=configs/mnist.py:tanh_mse,smoke', '--config.model.depth=12'],
     'depth must be'),
    (['--config=configs/mnist.py:tanh_mse,smoke',
      '--config.train.batch_size=-4'], 'batch_size must be >= 1'),
])
def test_launch_fails_before_any_work(args, message, tmp_path):
  workdir = tmp_path / 'run'
  result = _launch(*args, tmp_path=workdir)
  assert result.returncode != 0
  assert message in result.stderr + result.stdout
  assert not workdir.exists()  # Nothing was started.


def test_a_run_saved_before_meshes_existed_still_validates():
  from ml_collections import config_dict  # pylint: disable=g-import-not-at-top

  from mlrobust import config_lib  # pylint: disable=g-import-not-at-top
  old = mnist.get_config('tanh_mse,smoke').to_dict()
  del old['mesh']
  config_lib.validate(config_dict.ConfigDict(old))
  bad = mnist.get_config('tanh_mse,smoke')
  bad.mesh.shape = (0,)
  with pytest.raises(ValueError, match='mesh.shape'):
    config_lib.validate(bad)
