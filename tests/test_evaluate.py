"""--mode=evaluate, transfer, sweeps and the report (mock data, smoke runs)."""

import functools
import inspect
import json
import os

import jax
import numpy as np
import pytest

from mlrobust import attacks
from mlrobust import evaluate
from mlrobust import grids
from mlrobust import paper_tables
from mlrobust import report
from mlrobust import stats
from mlrobust import train
from mlrobust import workdir as workdir_lib
from tests import conftest
from tests.conftest import smoke_config


def test_attack_defaults_are_the_papers_table2():
  for attack, constants in paper_tables.CONSTANTS.items():
    signature = inspect.signature(attacks.get(attack))
    for name, value in constants.items():
      assert signature.parameters[name].default == value, (attack, name)


def test_paper_plan_has_the_papers_grids():
  config = smoke_config('tanh_mse')
  cells, ladders = grids.plan(config.eval, 10_000, proxy_name='ce')
  # A codeword head also runs DeepFool, CW, CW-distance and L-BFGS under the
  # cleverhans semantics, in cells of their own.
  cleverhans = [c for c in cells if ('semantics', 'cleverhans') in c.fixed]
  assert {c.attack for c in cleverhans} == set(grids.CLEVERHANS_ATTACKS)
  assert len(cleverhans) == 4 + 4 + 4 + 4 + 2  # Tables 3, 5 and 7's own.
  assert all('semantics=cleverhans' in c.id for c in cleverhans)
  cells = [c for c in cells if c not in cleverhans]
  untargeted = [c for c in cells if not c.targeted and not c.transfer_from]
  targeted = [c for c in cells if c.targeted]
  assert len(untargeted) == 6 * 4  # Table 3.
  assert {c.attack for c in untargeted} == set(paper_tables.TABLE3)
  # Table 5 (24) plus Table 7's distance attack (its cw_l2 cells are shared).
  assert len(targeted) == 6 * 4 + 2
  assert len([c for c in cells if c.transfer_from]) == 3
  pgd = sorted(c.value for c in untargeted if c.attack == 'pgd')
  assert pgd == [0.02, 0.04, 0.08, 0.1]
  # softmax_mse is in neither Table 7 nor (without a proxy) Table 6.
  mse, _ = grids.plan(smoke_config('softmax_mse').eval, 10_000)
  assert len(mse) == 48
  # The Figure 1 ladder: targeted PGD over the smoke preset's eps values.
  assert [(c.attack, c.targeted, c.value) for c in ladders[0]] == [
      ('pgd', True, 0.1), ('pgd', True, 0.3), ('pgd', True, 1.0)]
  # Per-family image counts and the smoke preset's reduced CW iterations.
  by_attack = {c.attack: c for c in cells}
  assert by_attack['fgsm'].num_examples == 16
  assert by_attack['cw_l2'].num_examples == 4
  assert by_attack['cw_l2'].params['max_iterations'] == 10
  assert 'max_iterations=10' in by_attack['cw_l2'].id


@pytest.mark.parametrize('spec, message', [
    ('pgd:eps', 'expected'), ('nope:eps=0.1', 'unknown attack'),
    ('pgd:epsilon=0.1', 'no parameter'), ('pgd:eps=a', 'numbers'),
    ('lbfgs:initial_const=1', 'targeted only'),
    ('targeted:deepfool:max_iter=3', 'untargeted only'), (';', 'empty grid')])
def test_bad_grids_are_rejected(spec, message):
  with pytest.raises(ValueError, match=message):
    grids.parse_shorthand(spec)


def test_bad_eval_config_is_rejected():
  config = smoke_config('tanh_mse')
  config.eval.tables = ('table3', 'table9')
  with pytest.raises(ValueError, match='table9'):
    grids.check(config.eval)
  config = smoke_config('tanh_mse')
  config.eval.images.cw = -1
  with pytest.raises(ValueError, match='images.cw'):
    grids.check(config.eval)
  config = smoke_config('tanh_mse')
  config.eval.grids.table3_pgd.param = 'initial_const'
  with pytest.raises(ValueError, match='table3_pgd: pgd has no parameter'):
    grids.check(config.eval)
  config = smoke_config('tanh_mse')
  config.eval.grids.table5_lbfgs.targeted = False
  with pytest.raises(ValueError, match='table5_lbfgs: lbfgs is targeted'):
    grids.check(config.eval)


def test_structured_entries_are_overridable_from_the_command_line():
  from configs import mnist  # pylint: disable=g-import-not-at-top
  config = mnist.get_config('tanh_mse,smoke')
  # What --config.eval.grids.table3_pgd.images=3 and
  # --config.eval.tables='("table3",)' do.
  config.eval.grids.table3_pgd.images = 3
  config.eval.tables = ('table3',)
  grids.check(config.eval)
  cells, ladders = grids.plan(config.eval, 10_000)
  assert not ladders and {c.targeted for c in cells} == {False}
  assert {c.num_examples for c in cells if c.attack == 'pgd'} == {3}
  assert {c.num_examples for c in cells if c.attack == 'fgsm'} == {16}
  # The one-line shorthand is a thin layer: the same entries.
  config.eval.grid = 'targeted:cw_l2_distance:initial_const=0.1,1'
  (name, entry), = grids.selected(config.eval)
  assert entry.to_dict() == grids.entry(
      'grid', 'cw_l2_distance', targeted=True, param='initial_const',
      param_values=(0.1, 1.0)).to_dict()


def _grid_config(config, grid):
  config = config.copy_and_resolve_references()
  config.eval.grid = grid
  return config


def test_killed_evaluation_resumes_without_redoing_cells(trained,
                                                         monkeypatch):
  config, workdir = trained
  config = _grid_config(config, 'fgsm:eps=0.05,0.1;bim:eps=0.1')
  calls = []
  real = dict(attacks.ATTACKS)

  def counting(name, fail=False):
    @functools.wraps(real[name])
    def fn(*args, **kwargs):
      calls.append((name, kwargs.get('eps')))
      if fail:
        raise KeyboardInterrupt  # Killed in the middle of the third cell.
      return real[name](*args, **kwargs)
    return fn

  monkeypatch.setitem(attacks.ATTACKS, 'fgsm', counting('fgsm'))
  monkeypatch.setitem(attacks.ATTACKS, 'bim', counting('bim', fail=True))
  with pytest.raises(KeyboardInterrupt):
    evaluate.run_evaluate(config, workdir)
  out = os.path.join(workdir, 'eval')
  finished = sorted(f for f in os.listdir(out) if f.endswith('.json'))
  assert finished == ['fgsm_untargeted_eps=0.05_n=16.json',
                      'fgsm_untargeted_eps=0.1_n=16.json']
  stamps = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in finished}
  # A half-written temporary file of the killed cell is never read.
  with open(os.path.join(out, 'bim_untargeted_eps=0.1_n=16.json.tmp'),
            'w') as f:
    f.write('{"metric": "acc')

  calls.clear()
  monkeypatch.setitem(attacks.ATTACKS, 'bim', counting('bim'))
  result = evaluate.run_evaluate(config, workdir)
  assert calls == [('bim', 0.1)]
  assert len(result['cells']) == 3
  for f, stamp in stamps.items():
    assert os.stat(os.path.join(out, f)).st_mtime_ns == stamp
  bim = json.load(open(os.path.join(out, 'bim_untargeted_eps=0.1_n=16.json')))
  assert bim['num_examples'] == 16 and bim['metric'] == 'accuracy'
  assert 0 <= bim['accuracy'] <= bim['clean_accuracy'] <= 1
  assert bim['params']['eps_iter'] == 0.05  # The paper's Table 2 constant.
  examples = np.load(os.path.join(out, 'bim_untargeted_eps=0.1_n=16.npz'))
  assert examples['adv'].shape[0] == config.eval.save_examples
  assert np.abs(examples['adv'] - examples['clean']).max() <= 0.1 + 1e-6

  # A corrupt cell file is moved aside and its cell run again.
  with open(os.path.join(out, finished[0]), 'w') as f:
    f.write('{"metric": ')
  calls.clear()
  evaluate.run_evaluate(config, workdir)
  assert calls == [('fgsm', 0.05)]
  assert os.path.exists(os.path.join(out, finished[0] + '.corrupt'))


def test_targeted_cells_use_one_set_of_targets(trained):
  config, workdir = trained
  config = _grid_config(config, 'targeted:fgsm:eps=0.1,0.3')
  config.eval.save_examples = 16  # All of the cell's images.
  evaluate.run_evaluate(config, workdir)
  out = os.path.join(workdir, 'eval')
  a = np.load(os.path.join(out, 'fgsm_targeted_eps=0.1_n=16.npz'))
  b = np.load(os.path.join(out, 'fgsm_targeted_eps=0.3_n=16.npz'))
  np.testing.assert_array_equal(a['goal'], b['goal'])
  assert np.all(a['goal'] != a['label'])
  cell = json.load(open(os.path.join(out, 'fgsm_targeted_eps=0.3_n=16.json')))
  assert cell['metric'] == 'success_rate'
  assert cell['success_rate'] == pytest.approx(
      np.mean(b['prediction'] == b['goal']))
  clf = workdir_lib.load_classifier(config, workdir)
  np.testing.assert_array_equal(clf.predict(b['adv']), b['prediction'])


@pytest.fixture
def proxy_run(mock_mnist, tmp_path):
  config = smoke_config('softmax_ce', mock_mnist, **{'train.num_epochs': 1})
  workdir = str(tmp_path / 'proxy')
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_transfer_classifies_the_proxys_examples(trained, proxy_run):
  config, workdir = trained
  _, proxy_dir = proxy_run
  config = config.copy_and_resolve_references()
  config.eval.tables = ('table6',)
  config.eval.proxy_workdir = proxy_dir
  result = evaluate.run_evaluate(config, workdir)
  cells = {c['attack']: c for c in result['cells']}
  assert sorted(cells) == ['cw_l2', 'deepfool', 'mim']
  mim = cells['mim']
  assert mim['transfer_from'] and mim['proxy_workdir'] == os.path.abspath(
      proxy_dir)
  # Independently: craft MIM on the proxy, classify with the target.
  _, proxy_clf = workdir_lib.load_run(proxy_dir)
  clf = workdir_lib.load_classifier(config, workdir)
  n = mim['num_examples']
  crafted = np.load(os.path.join(
      proxy_dir, 'eval', 'crafted', f'mim_untargeted_eps=0.01_n={n}.npz'))
  labels = crafted['label']
  own = attacks.mim(proxy_clf, _test_images(config, n), labels, eps=0.01)
  np.testing.assert_allclose(own.adv, crafted['adv'], atol=1e-6)
  expected = np.mean(np.asarray(clf.predict(crafted['adv'])) == labels)
  assert mim['accuracy'] == pytest.approx(expected)
  assert np.abs(crafted['adv'] - _test_images(config, n)).max() <= 0.01 + 1e-6


def _test_images(config, n):
  from mlrobust import data  # pylint: disable=g-import-not-at-top
  data_config = config.data.copy_and_resolve_references()
  data_config.num_train = 1
  data_config.num_test = n
  return data.images_to_float(data.load(data_config).test.images)


def test_transfer_refuses_another_dataset(trained, proxy_run, tmp_path):
  config, workdir = trained
  _, proxy_dir = proxy_run
  with open(os.path.join(proxy_dir, 'config.json')) as f:
    proxy_config = json.load(f)
  proxy_config['data']['name'] = 'fashion_mnist'
  with open(os.path.join(proxy_dir, 'config.json'), 'w') as f:
    json.dump(proxy_config, f)
  config = config.copy_and_resolve_references()
  config.eval.tables = ('table6',)
  config.eval.proxy_workdir = proxy_dir
  with pytest.raises(ValueError, match='same dataset'):
    evaluate.run_evaluate(config, workdir)


def test_sweep_over_eps_and_models_compiles_once(trained):
  config, workdir = trained
  clf = workdir_lib.load_classifier(config, workdir)
  # A second model of the same architecture (other parameters).
  other = clf.replace(variables=jax.tree.map(lambda v: v * 1.01,
                                             clf.variables))
  x = _test_images(config, 8)
  y = np.asarray(clf.predict(x))
  evaluate.sweep(clf, x, y, 'pgd', 'eps', (0.3,))  # Compiles.
  with conftest.count_compiles() as compiles:
    for model in (clf, other):
      out = evaluate.sweep(model, x, y, 'pgd', 'eps', (0.01, 0.05, 0.1))
      assert [r['value'] for r in out] == [0.01, 0.05, 0.1]
      accuracy = [r['accuracy'] for r in out]
      assert accuracy[0] >= accuracy[-1]
  assert not compiles


def test_report_renders_tables_and_plots(trained, tmp_path):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.tables = ('table3', 'figure1')
  config.eval.grid = ''
  config.eval.images.cw = 2
  config.eval.max_iterations.cw = 2
  config.eval.images.deepfool = 4
  result = evaluate.run_evaluate(config, workdir)
  out = str(tmp_path / 'report')
  path = report.render([workdir], out)
  text = open(path).read()
  fgsm = next(c for c in result['cells'] if c['attack'] == 'fgsm' and
              c['value'] == 0.1)
  # Ours next to the paper's Table 3 value for the tanh_mse model on MNIST.
  low, high = stats.rate_interval(fgsm['accuracy'], 16)
  assert f"{fgsm['accuracy']:.3f} [{low:.2f}, {high:.2f}] (0.918)" in text
  assert 'FGSM: 16 images' in text
  assert 'CWL2: 2 images, max_iterations=2' in text
  assert os.path.exists(os.path.join(out, 'mnist_table3.png'))
  assert os.path.exists(os.path.join(out, 'mnist_figure1.png'))
  ladder = [c for c in result['cells'] if c['attack'] == 'pgd' and
            c['targeted']]
  assert ladder and ladder[0]['value'] == (
      config.eval.grids.figure1_pgd.param_values[0])
  # The ladder stops at the first eps reaching 100% success.
  rates = [c['success_rate'] for c in ladder]
  assert all(r < 1 for r in rates[:-1])


def test_report_splices_tables_between_markers(trained, tmp_path):
  _, workdir = trained
  doc = tmp_path / 'DOC.md'
  doc.write_text(
      'intro\n<!-- report:begin -->\nold\n<!-- report:end -->\nend\n')
  report.write_report([workdir], str(tmp_path / 'r'), splice_into=str(doc))
  text = doc.read_text()
  assert text.startswith('intro\n<!-- report:begin -->\n### Table 3')
  assert 'old' not in text and text.endswith('<!-- report:end -->\nend\n')
  (tmp_path / 'bad.md').write_text('no markers')
  with pytest.raises(ValueError, match='markers'):
    report.write_report([workdir], str(tmp_path / 'r'),
                        splice_into=str(tmp_path / 'bad.md'))


def test_cells_under_the_cleverhans_semantics_are_cells_of_their_own(trained):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  for sem in ('decoding', 'cleverhans'):
    config.eval.grids[f'mine_{sem}'] = grids.entry(
        'mine', 'deepfool', targeted=False, param='max_iter',
        param_values=(3,), images=4, semantics=sem)
  config.eval.tables = ('mine',)
  result = evaluate.run_evaluate(config, workdir)
  params = sorted(c['params']['semantics'] for c in result['cells'])
  assert params == ['cleverhans', 'decoding']
  files = sorted(f for f in os.listdir(os.path.join(workdir, 'eval'))
                 if f.endswith('.json'))
  assert files == ['deepfool_untargeted_max_iter=3_n=4.json',
                   'deepfool_untargeted_max_iter=3_semantics=cleverhans_n=4'
                   '.json']
