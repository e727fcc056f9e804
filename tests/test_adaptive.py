"""The adaptive ensemble and the masking checklist on small trained models."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlrobust import adaptive
from mlrobust import adaptive_run
from mlrobust import classifier
from mlrobust import heads
from mlrobust import train
from mlrobust import workdir as workdir_lib
from tests import conftest
from tests import test_attacks


def _checks(items):
  return {i['check'].split(':')[0].split(' (')[0]: i for i in items}


def test_ensemble_is_at_least_as_strong_as_each_member():
  clf, x, y = test_attacks._trained_mlp()
  x, y = x[:60], y[:60]
  eps = 0.1
  result = adaptive.ensemble(clf, x, y, eps)
  assert result['num_examples'] == 60
  for member in adaptive.DEFAULT_MEMBERS:
    alone = adaptive.ensemble(clf, x, y, eps, members=(member,))
    assert result['robust_accuracy'] <= alone['robust_accuracy']
  broken = [b for b in result['broken_by'] if b not in (None, 'clean')]
  assert sum(result['per_member'].values()) == len(broken)
  adv_pred = np.asarray(clf.predict(jnp.asarray(result['adv'])))
  survivors = np.array([b is None for b in result['broken_by']])
  np.testing.assert_array_equal(adv_pred[survivors], y[survivors])
  assert np.all(adv_pred[~survivors] != y[~survivors])
  assert np.abs(result['adv'] - x).max() <= eps + 1e-6


def test_checklist_passes_a_plain_model_and_fails_a_masked_one():
  clf, x, y = test_attacks._trained_mlp()
  x, y = x[:40], y[:40]
  grid = (0.05, 0.1)
  acc = [adaptive.ensemble(clf, x, y, e)['robust_accuracy'] for e in grid]
  plain = _checks(adaptive.checklist(clf, x, y, eps_grid=grid,
                                     ensemble_accuracy=acc, proxy=clf))
  assert plain['unbounded budget']['pass']
  assert plain['unbounded L2']['pass']
  assert plain['unbounded L2']['numbers']['success_rate'] == 1.0
  assert 0 < plain['unbounded L2']['numbers']['median_l2'] < 8  # sqrt(64).
  assert plain['white-box >= transfer']['pass']
  assert plain['gradient health']['pass']
  assert plain['monotone in budget']['pass']
  assert plain['white-box >= black-box']['pass']
  # The same model with its logits rounded: zero gradient almost everywhere,
  # so gradient attacks see nothing, yet it is no more robust.
  masked = classifier.from_function(
      lambda p, x_: jnp.round(clf.apply_fn(p, x_)), clf.targets,
      params=clf.variables, activation='softmax', loss='ce')
  grid = (0.1, 0.4)  # Square, which needs no gradient, breaks it at 0.4.
  acc = [adaptive.ensemble(masked, x, y, e)['robust_accuracy'] for e in grid]
  checks = _checks(adaptive.checklist(masked, x, y, eps_grid=grid,
                                      ensemble_accuracy=acc, proxy=clf))
  assert not checks['unbounded budget']['pass']
  assert not checks['unbounded L2']['pass']
  # The unmasked twin's gradients transfer: white-box is weaker than that.
  transfer = checks['white-box >= transfer']
  assert not transfer['pass']
  assert transfer['numbers']['eps=0.4']['transfer from the proxy'] < 0.1
  assert not checks['gradient health']['pass']
  assert checks['gradient health']['numbers'][
      'zero_or_nonfinite_gradient_ce'] > 0.9
  versus = checks['white-box >= black-box']
  assert not versus['pass']
  numbers = versus['numbers']['eps=0.4']
  assert numbers['square'] < 0.1 < 0.9 < numbers[
      'white-box (apgd-ce, apgd-t, pgd-margin)']
  assert acc[1] <= numbers['square']  # The ensemble includes Square.


def test_bpda_activation_is_the_activation_forward_and_identity_backward():
  z = jnp.array([[-30.0, -0.5, 0.0, 2.0, 40.0]])
  for name in ('tanh', 'softmax'):
    np.testing.assert_allclose(heads.activate('bpda:' + name, z),
                               heads.activate(name, z), atol=1e-6)
    weights = jnp.arange(5.0)
    grad = jax.grad(lambda v, n=name: jnp.sum(
        weights * heads.activate('bpda:' + n, v)))(z)
    np.testing.assert_allclose(grad, weights[None])
  with pytest.raises(ValueError, match='unknown head activation'):
    heads.activate('bpda:relu', z)


def test_bpda_member_breaks_a_saturated_tanh_head():
  """A tanh head so saturated that its input gradient is zero: plain margin
  PGD stalls, margin PGD through the BPDA surrogate breaks it as it breaks
  the unsaturated model, and every verdict is the real model's."""
  clf, x, y = test_attacks._trained_mlp()
  x, y = x[:60], y[:60]

  def saturated(p, x_):
    z = clf.apply_fn(p, x_)
    others = jnp.stack([jnp.max(jnp.delete(z, k, axis=1), axis=1)
                        for k in range(3)], axis=1)
    return 1000.0 * (z - others)  # > 0 only for the argmax class.

  masked = classifier.from_function(saturated, 2 * jnp.eye(3) - 1,
                                    params=clf.variables, activation='tanh')
  np.testing.assert_array_equal(masked.predict(jnp.asarray(x)),
                                clf.predict(jnp.asarray(x)))
  eps = 0.3  # Margin PGD breaks every example of the unsaturated model.
  unmasked = adaptive.ensemble(clf, x, y, eps, members=('pgd-margin',))
  plain = adaptive.ensemble(masked, x, y, eps, members=('pgd-margin',))
  bpda = adaptive.ensemble(masked, x, y, eps, members=('pgd-margin-bpda',))
  clean = float(np.mean(np.asarray(masked.predict(jnp.asarray(x))) == y))
  assert unmasked['robust_accuracy'] < 0.5 * clean
  assert plain['robust_accuracy'] > 0.9 * clean
  assert bpda['robust_accuracy'] <= unmasked['robust_accuracy'] + 0.05
  adv_pred = np.asarray(masked.predict(jnp.asarray(bpda['adv'])))
  survivors = np.array([b is None for b in bpda['broken_by']])
  np.testing.assert_array_equal(adv_pred[survivors], y[survivors])
  assert np.all(adv_pred[~survivors] != y[~survivors])
  assert np.abs(bpda['adv'] - x).max() <= eps + 1e-6


def test_adaptive_mode_writes_resumable_cells_and_the_checklist(trained):
  config, workdir = trained
  result = adaptive_run.run_adaptive(config, workdir)
  out = os.path.join(workdir, 'adaptive')
  assert sorted(os.listdir(out)) == [
      'checklist_n=8.json', 'ensemble_eps=0.1_n=8.json',
      'ensemble_eps=0.3_n=8.json']
  cell = json.load(open(os.path.join(out, 'ensemble_eps=0.1_n=8.json')))
  assert cell['members'] == ['apgd-ce', 'pgd-margin']
  assert cell['model_fingerprint'] and cell['num_examples'] == 8
  assert 0 <= cell['robust_accuracy'] <= cell['clean_accuracy']
  stamp = os.stat(os.path.join(out, 'ensemble_eps=0.1_n=8.json')).st_mtime_ns
  again = adaptive_run.run_adaptive(config, workdir)  # Reuses the cells.
  assert os.stat(os.path.join(out, 'ensemble_eps=0.1_n=8.json')
                 ).st_mtime_ns == stamp
  assert [c['robust_accuracy'] for c in again['cells']] == [
      c['robust_accuracy'] for c in result['cells']]
  assert 'robust accuracy' in adaptive_run.describe(result)
  # Another member list never overwrites these: refused, then its own folder.
  other = config.copy_and_resolve_references()
  other.adaptive.members = ('apgd-ce',)
  with pytest.raises(ValueError, match='adaptive.folder'):
    adaptive_run.run_adaptive(other, workdir)
  assert os.stat(os.path.join(out, 'ensemble_eps=0.1_n=8.json')
                 ).st_mtime_ns == stamp
  other.adaptive.folder = 'adaptive_apgd'
  other.adaptive.eps = (0.1,)
  alone = adaptive_run.run_adaptive(other, workdir)
  assert os.path.exists(os.path.join(workdir, 'adaptive_apgd',
                                     'ensemble_eps=0.1_n=8.json'))
  assert alone['cells'][0]['members'] == ['apgd-ce']


def test_adaptive_mode_holds_white_box_against_a_proxy(trained, mock_mnist,
                                                       tmp_path):
  config, workdir = trained
  proxy_config = conftest.smoke_config('softmax_ce', mock_mnist,
                                       **{'train.num_epochs': 1})
  proxy_dir = str(tmp_path / 'proxy')
  train.train_and_evaluate(proxy_config, proxy_dir)
  config = config.copy_and_resolve_references()
  config.eval.proxy_workdir = proxy_dir
  config.adaptive.eps = (0.1,)
  result = adaptive_run.run_adaptive(config, workdir)
  checks = _checks(result['checklist'])
  transfer = checks['white-box >= transfer']['numbers']['eps=0.1']
  assert 0 <= transfer['transfer from the proxy'] <= 1
  saved = json.load(open(os.path.join(workdir, 'adaptive',
                                      'checklist_n=8.json')))
  assert saved['proxy_workdir'] == proxy_dir
  assert saved['proxy_fingerprint'] == workdir_lib.load_trained(
      proxy_config, proxy_dir)[1]['model_fingerprint']
  assert 'unbounded L2' in checks


def test_bad_adaptive_config_fails_before_work(tmp_path):
  config = conftest.smoke_config()
  config.adaptive.members = ('apgd-ce', 'fab-t')
  with pytest.raises(ValueError, match="unknown \\['fab-t'\\]"):
    adaptive_run.run_adaptive(config, str(tmp_path / 'none'))
  config.adaptive.members = ('apgd-ce',)
  config.adaptive.folder = '../elsewhere'
  with pytest.raises(ValueError, match='plain folder name'):
    adaptive_run.run_adaptive(config, str(tmp_path / 'none'))
  assert not os.path.exists(tmp_path / 'none')


@pytest.mark.parametrize('noise, attack, ok', [
    # A trained MNIST tanh_mse model: noise barely hurts at eps 0.05 while
    # the attack halves accuracy; at eps 0.2 noise hurts, the attack more.
    ((0.997, 0.997, 0.887, 0.213), (0.987, 0.543, 0.0, 0.0), True),
    # An attack that does what noise does.
    ((0.99, 0.9, 0.6), (0.99, 0.88, 0.58), False),
    # Nothing lowers accuracy: no evidence either way.
    ((0.99, 0.99), (0.99, 0.98), True),
])
def test_noise_is_weaker_than_the_attack(noise, attack, ok):
  assert adaptive.noise_is_weaker(0.997, noise, attack) is ok
