"""--mode=sweep: parsing, cells shared with evaluations, outputs, processes."""

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from mlrobust import attacks
from mlrobust import evaluate
from mlrobust import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('text, values', [
    ('0,0.1,0.3', (0, 0.1, 0.3)),
    ('0,0.02,...,0.1', (0, 0.02, 0.04, 0.06, 0.08, 0.1)),
    ('0.3,0.2,...,0', (0.3, 0.2, 0.1, 0.0)),
    ('10,20,...,50', (10, 20, 30, 40, 50)),
    ('0.01, 1e-1, 1', (0.01, 0.1, 1)),
])
def test_values_and_progressions(text, values):
  assert sweep.parse_values(text) == values


@pytest.mark.parametrize('text, message', [
    ('', 'is empty'),
    ('0,x', "'x' is not a number"),
    ('0,nan', 'not a finite number'),
    ('0,0.1,0.1', 'repeats a value'),
    ('0,...,0.3', 'first,second,...,last'),
    ('0,0.1,...,-1', 'does not progress'),
    ('0,0.03,...,0.1', 'is not reached'),
])
def test_bad_values_say_what_is_allowed(text, message):
  with pytest.raises(ValueError, match=message):
    sweep.parse_values(text)


@pytest.mark.parametrize('spec, message', [
    (dict(attack='pgdd', param='eps', values=(0.1,)), 'unknown attack'),
    (dict(attack='pgd', param='initial_const', values=(0.1,)),
     "'initial_const' cannot be swept for pgd; its numeric parameters"),
    (dict(attack='pgd', param='loss', values=(1,)), 'cannot be swept'),
    (dict(attack='deepfool', param='max_iter', values=(5,), targeted=True),
     'untargeted only'),
    (dict(attack='pgd', param='eps', values=(0.1,), fixed=(('eps', 0.2),)),
     'the swept parameter'),
    (dict(attack='pgd', param='eps', values=(0.1,),
          fixed=(('initial_const', 1.0),)), 'does not take'),
    (dict(attack='pgd', param='eps', values=(-0.1,)), 'eps'),
    (dict(attack='pgd', param='eps', values=(0.1,), images=-1), '--images'),
])
def test_bad_sweeps_are_refused_before_any_work(spec, message):
  with pytest.raises(ValueError, match=message):
    sweep.check(sweep.Spec(**spec))


def test_cells_cast_values_to_the_parameters_type(trained):
  config, _ = trained
  pgd = sweep.cells(sweep.Spec('pgd', 'eps', (0, 0.1)), config.eval, 100)
  assert [type(c.value) for c in pgd] == [float, float]  # One compile.
  deepfool = sweep.Spec('deepfool', 'max_iter', (5, 10.0))
  assert [type(c.value) for c in sweep.cells(deepfool, config.eval, 100)] == [
      int, int]
  with pytest.raises(ValueError, match='max_iter takes whole numbers'):
    sweep.check(sweep.Spec('deepfool', 'max_iter', (5, 7.5)))


def test_fixed_parameters_parse_to_typed_values():
  assert sweep.parse_fixed(['nb_iter=100', 'semantics=cleverhans',
                            'eps_iter=0.01']) == (
                                ('eps_iter', 0.01), ('nb_iter', 100),
                                ('semantics', 'cleverhans'))
  assert sweep.parse_fixed(['norm=l2', 'n_iter=20']) == (('n_iter', 20),
                                                         ('norm', 'l2'))
  with pytest.raises(ValueError, match='write name=value'):
    sweep.parse_fixed(['nb_iter'])


def _cells(workdir):
  out = os.path.join(workdir, 'eval')
  return sorted(f for f in os.listdir(out) if f.endswith('.json'))


def test_sweep_writes_table_and_figure_and_shares_cells(trained, tmp_path,
                                                        monkeypatch):
  config, workdir = trained
  other = str(tmp_path / 'copy')
  shutil.copytree(workdir, other)
  spec = sweep.Spec(attack='pgd', param='eps', values=(0.0, 0.1, 0.3),
                    images=8)
  out = str(tmp_path / 'sweep')
  result = sweep.run_sweep([workdir, other], spec, out)
  assert result['ran'] == 6
  rows = result['rows']
  assert [(r['run'], r['value']) for r in rows] == [
      ('tanh_mse (run)', 0.0), ('tanh_mse (run)', 0.1),
      ('tanh_mse (run)', 0.3), ('tanh_mse (copy)', 0.0),
      ('tanh_mse (copy)', 0.1), ('tanh_mse (copy)', 0.3)]
  for r in rows:
    assert r['num_examples'] == 8 and r['metric'] == 'accuracy'
    assert r['ci_low'] <= r['rate'] <= r['ci_high']
    cell = json.load(open(r['cell']))
    assert cell['accuracy'] == r['rate'] and cell['params']['nb_iter'] == 40
  # eps = 0 changes no image: the clean accuracy.
  assert rows[0]['rate'] == rows[0]['clean_accuracy']
  # The same model in two folders: the same numbers.
  assert [r['rate'] for r in rows[:3]] == [r['rate'] for r in rows[3:]]
  assert _cells(workdir) == sorted(f'pgd_untargeted_eps={e}_n=8.json'
                                   for e in ('0', '0.1', '0.3'))
  table = json.load(open(os.path.join(out, 'sweep.json')))
  assert table['spec'] == spec.to_dict() and len(table['rows']) == 6
  csv_lines = open(os.path.join(out, 'sweep.csv')).read().splitlines()
  assert len(csv_lines) == 7 and csv_lines[0].startswith('run,workdir')
  md = open(os.path.join(out, 'sweep.md')).read()
  assert '| eps | tanh_mse (run) | tanh_mse (copy) |' in md
  assert os.path.getsize(os.path.join(out, 'sweep.png')) > 5000
  assert sweep.load(out) == (spec, rows)
  with pytest.raises(FileNotFoundError, match='no sweep was written'):
    sweep.load(str(tmp_path))

  # Resumed: nothing runs again.
  calls = []
  real = attacks.ATTACKS['pgd']

  @functools.wraps(real)
  def counting(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **kwargs)
  monkeypatch.setitem(attacks.ATTACKS, 'pgd', counting)
  again = sweep.run_sweep([workdir, other], spec, out)
  assert again['ran'] == 0 and not calls
  assert again['rows'] == rows

  # An evaluation of the same cell reuses the sweep's file.
  config = config.copy_and_resolve_references()
  config.eval.grid = 'pgd:eps=0.1'
  config.eval.images.linf = 8
  evaluate.run_evaluate(config, workdir)
  assert not calls

  # A new value runs only that point.
  more = sweep.Spec(attack='pgd', param='eps', values=(0.1, 0.2), images=8)
  with pytest.raises(ValueError, match='holds another sweep'):
    sweep.run_sweep([workdir], more, out)
  sweep.run_sweep([workdir], more, str(tmp_path / 'more'))
  assert [k['eps'] for k in calls] == [0.2]


def test_targeted_minimum_norm_sweep_reports_l2(trained, tmp_path):
  _, workdir = trained
  spec = sweep.Spec(attack='cw_l2_distance', param='initial_const',
                    values=(0.1, 10.0), targeted=True, images=4,
                    fixed=(('binary_search_steps', 1),
                           ('max_iterations', 20)))
  out = str(tmp_path / 'cw')
  rows = sweep.run_sweep([workdir], spec, out)['rows']
  assert [r['metric'] for r in rows] == ['success_rate'] * 2
  for r in rows:
    if r['rate'] > 0:
      assert r['median_l2_successful'] > 0
  assert 'median L2' in open(os.path.join(out, 'sweep.md')).read()


_WORKER = textwrap.dedent('''
    import sys
    import jax
    import tensorflow_datasets as tfds
    jax.config.update('jax_disable_most_optimizations', True)
    from mlrobust import sweep
    spec = sweep.Spec(attack='pgd', param='eps',
                      values=tuple(float(v) for v in sys.argv[2].split(',')),
                      images=8, fixed=(('nb_iter', 20),))
    with tfds.testing.mock_data(num_examples=320):
      result = sweep.run_sweep([sys.argv[1]], spec, sys.argv[3])
    print('RAN', result['ran'])
''')


def test_two_processes_share_a_sweep_and_run_every_point_once(trained,
                                                              tmp_path):
  _, workdir = trained
  values = '0.01,0.02,0.03,0.04,0.05,0.06,0.07,0.08'
  out = str(tmp_path / 'shared')
  env = {**os.environ, 'PYTHONPATH': ROOT, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  procs = [subprocess.Popen([sys.executable, '-c', _WORKER, workdir, values,
                             out], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (stdout, stderr) in zip(procs, outputs):
    assert p.returncode == 0, stderr[-3000:]
  ran = [int(stdout.split('RAN')[1]) for stdout, _ in outputs]
  assert sum(ran) == 8  # Every point once: none twice, none missing.
  cells = _cells(workdir)
  assert len(cells) == 8
  by = {json.load(open(os.path.join(workdir, 'eval', c)))['computed_by']
        for c in cells}
  assert by <= {f'{os.uname().nodename}:{p.pid}' for p in procs}
  rows = json.load(open(os.path.join(out, 'sweep.json')))['rows']
  assert [r['value'] for r in rows] == [float(v) for v in values.split(',')]
