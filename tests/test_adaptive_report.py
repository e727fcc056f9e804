"""The report's adaptive section, on the committed adaptive run of results/."""

import glob
import json
import os
import re
import shutil

import numpy as np
import pytest

from mlrobust import adaptive_report
from mlrobust import report
from mlrobust import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, 'results', 'cpu', 'mnist_tanh_mse_adaptive')


def _section(text):
  start = text.index('## Adaptive evaluation')
  assert text.index('## Table 7') < start < text.index('## Plots')
  return text[start:text.index('## Plots')]


def _copy(tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(RUN, workdir)
  return workdir


def test_eps_of_the_form_k_over_255_are_labelled_so():
  assert adaptive_report.eps_label(8 / 255) == '0.0313725 (8/255)'
  assert adaptive_report.eps_label(0.1) == '0.1'
  assert adaptive_report.eps_label(0.2) == '0.2'  # 51/255, but a round eps.


def test_eps_of_the_form_k_over_255_are_read_back_from_their_file_names(
    tmp_path):
  # The committed cifar10_jpeg run: ensemble_eps=0.00784314_n=300.json holds
  # eps 2/255 to full precision.
  run = os.path.join(ROOT, 'results', 'cpu', 'cifar10_jpeg_tanh_mse')
  text = open(report.render([run], str(tmp_path / 'report'))).read()
  rows = [line for line in _section(text).splitlines()
          if line.startswith('| 0.')]
  # One full row per eps: the checklist's numbers and the ensemble's.
  assert len(rows) == 8 and not any('| – |' in row for row in rows)
  for k in (2, 4, 8, 16):
    label = f'| {k / 255:g} ({k}/255) |'
    assert sum(row.startswith(label) for row in rows) == 1


def test_the_section_shows_the_numbers_of_the_adaptive_files(tmp_path):
  out = str(tmp_path / 'report')
  path = report.render([RUN], out)
  text = open(path).read()
  section = _section(text)
  rows = {line.split(' | ')[0][2:]: line for line in section.splitlines()
          if line.startswith('| 0.')}
  checklist = json.load(open(os.path.join(RUN, 'adaptive',
                                          'checklist_n=300.json')))
  numbers = {k: v for i in checklist['items'] for k, v in i['numbers'].items()}
  files = sorted(glob.glob(os.path.join(RUN, 'adaptive', 'ensemble_*.json')))
  assert sorted(rows) == sorted(f"{json.load(open(f))['eps']:g}"
                                for f in files)
  for i, f in enumerate(sorted(files, key=lambda f: json.load(open(f))['eps'])):
    cell = json.load(open(f))
    row = rows[f"{cell['eps']:g}"]
    low, high = cell['interval']
    assert f"{cell['robust_accuracy']:.3f} [{low:.3f}, {high:.3f}]" in row
    for member, broken in cell['per_member'].items():
      assert f'{member} {broken}' in row
    pgd = numbers['paper-style pgd'][i]
    low, high = stats.rate_interval(pgd, 300)
    assert row.split(' | ')[1] == f'{pgd:.3f} [{low:.3f}, {high:.3f}]'
    fgsm = numbers['fgsm'][i]
    assert row.split(' | ')[2].startswith(f'{fgsm:.3f} [')
  # What the brief of the requirement quotes, by hand.
  assert rows['0.1'].split(' | ')[5] == '0.000 [0.000, 0.013]'
  assert rows['0.1'].split(' | ')[1] == '0.150 [0.114, 0.195]'
  passed = sum(i['pass'] is True for i in checklist['items'])
  assert passed == 6
  assert f'Checklist ({passed} PASS, 0 FAIL, 1 INFO)' in section
  assert section.count('| PASS |') == passed
  assert '| eps=0.1: {effort 1: 0.000, effort 2: 0.000} |' in section
  assert 'adaptive evaluation on 300 images' in text
  assert '![mnist adaptive](mnist_adaptive.png)' in text
  assert os.path.getsize(os.path.join(out, 'mnist_adaptive.png')) > 1000
  # The section is spliced with the tables.
  doc = tmp_path / 'DOC.md'
  doc.write_text('<!-- report:begin -->\n<!-- report:end -->\n')
  report.splice(path, str(doc))
  assert '### Adaptive evaluation' in doc.read_text()


def test_a_failed_item_says_what_it_suggests_and_no_files_no_section(
    tmp_path):
  workdir = _copy(tmp_path)
  path = os.path.join(workdir, 'adaptive', 'checklist_n=300.json')
  checklist = json.load(open(path))
  checklist['items'][0]['pass'] = False
  with open(path, 'w') as f:
    json.dump(checklist, f)
  text = open(report.render([workdir], str(tmp_path / 'r'))).read()
  hint = checklist['items'][0]['if it fails']
  assert f'| FAIL | eps=0.5: 0.000; eps=1: 0.000 | {hint} |' in text
  assert 'Checklist (5 PASS, 1 FAIL, 1 INFO)' in text
  shutil.rmtree(os.path.join(workdir, 'adaptive'))
  text = open(report.render([workdir], str(tmp_path / 'r2'))).read()
  assert 'daptive' not in text
  assert not os.path.exists(tmp_path / 'r2' / 'mnist_adaptive.png')


@pytest.mark.parametrize('content, message', [
    ('{"robust_accuracy": 0.5, "interv', 'is not valid JSON'),
    ('[1, 2]', 'is not an adaptive ensemble result (not a JSON object)'),
    (None, "is not an adaptive ensemble result (no 'per_member')"),
    ({'robust_accuracy': 0.5}, 'robust_accuracy 0.5 is outside its interval'),
    ({'robust_accuracy': 1.5}, 'robust_accuracy 1.5 is not a rate'),
    ({'eps': 0.2}, 'eps 0.2, but the file name says 0.1'),
    ({'dataset': 'fashion_mnist'}, "is a result of ('fashion_mnist'"),
])
def test_garbage_or_partial_adaptive_files_are_refused_by_name(
    tmp_path, content, message):
  workdir = _copy(tmp_path)
  path = os.path.join(workdir, 'adaptive', 'ensemble_eps=0.1_n=300.json')
  if isinstance(content, str):
    text = content
  else:
    record = json.load(open(path))
    if content is None:
      del record['per_member']
    else:
      record.update(content)
    text = json.dumps(record)
  with open(path, 'w') as f:
    f.write(text)
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    report.render([workdir], str(tmp_path / 'r'))
  assert path in str(e.value)


def test_a_partial_checklist_is_refused_by_name(tmp_path):
  workdir = _copy(tmp_path)
  path = os.path.join(workdir, 'adaptive', 'checklist_n=300.json')
  checklist = json.load(open(path))
  checklist['items'][2]['numbers']['fgsm'].pop()
  with open(path, 'w') as f:
    json.dump(checklist, f)
  with pytest.raises(ValueError, match="'fgsm' has 3 values for the 4 eps"
                     ) as e:
    report.render([workdir], str(tmp_path / 'r'))
  assert path in str(e.value)


def test_results_of_another_training_are_refused(tmp_path):
  workdir = _copy(tmp_path)
  path = os.path.join(workdir, 'adaptive', 'ensemble_eps=0.05_n=300.json')
  record = json.load(open(path))
  record['model_fingerprint'] = '0123456789abcdef'
  with open(path, 'w') as f:
    json.dump(record, f)
  with pytest.raises(ValueError, match=(
      'holds results of 2 different trainings \\(0123456789abcdef: '
      'ensemble_eps=0.05_n=300.json; 91ffd62f4b202f96: checklist')):
    report.render([workdir], str(tmp_path / 'r'))
  # One training throughout, but not the one of the run's eval cells.
  for name in os.listdir(os.path.join(workdir, 'adaptive')):
    p = os.path.join(workdir, 'adaptive', name)
    record = json.load(open(p))
    record['model_fingerprint'] = '0123456789abcdef'
    with open(p, 'w') as f:
      json.dump(record, f)
  report.render([workdir], str(tmp_path / 'r'))  # No eval cells: renders.
  os.makedirs(os.path.join(workdir, 'eval'))
  cell = {'dataset': 'mnist', 'preset': 'tanh_mse', 'model': 'densenet-13-k8',
          'attack': 'fgsm', 'targeted': False, 'value': 0.1,
          'metric': 'accuracy', 'accuracy': 0.5, 'num_examples': 10,
          'model_fingerprint': '91ffd62f4b202f96'}
  with open(os.path.join(workdir, 'eval', 'fgsm_untargeted_eps=0.1_n=10.json'),
            'w') as f:
    json.dump(cell, f)
  with pytest.raises(ValueError, match=(
      "training \\['0123456789abcdef'\\], but the eval cells of .* are of "
      "\\['91ffd62f4b202f96'\\]")):
    report.render([workdir], str(tmp_path / 'r'))


def test_trainings_of_one_preset_are_compared_across_trainings(tmp_path):
  # Two MNIST tanh_mse trainings (different codebooks) of results/: the
  # paper tables take the first, the adaptive section compares both.
  second = os.path.join(ROOT, 'results', 'cpu_v3', 'mnist_tanh_mse')
  path = report.render([RUN, second], str(tmp_path / 'report'))
  text = open(path).read()
  section = text[text.index('### Across trainings'):text.index('## Plots')]
  rows = {line.split(' | ')[0][2:]: line.split(' | ')
          for line in section.splitlines() if line.startswith('| 0.')}
  for eps in ('0.01', '0.05', '0.1', '0.2'):
    values = []
    for i, run in enumerate((RUN, second)):
      cell = json.load(open(os.path.join(
          run, 'adaptive', f'ensemble_eps={eps}_n=300.json')))
      low, high = cell['interval']
      value = cell['robust_accuracy']
      assert rows[eps][i + 1] == f'{value:.3f} [{low:.3f}, {high:.3f}]'
      values.append(value)
    assert rows[eps][3] == (f'{np.mean(values):.3f} ({min(values):.3f}-'
                            f'{max(values):.3f}), 2 trainings')
  # By hand, from the two files at eps 0.05: 0.257 and 0.543.
  assert rows['0.05'][3] == '0.400 (0.257-0.543), 2 trainings'
  assert 'members apgd-ce, apgd-t, pgd-margin)' in section
  assert 'a repeat training (seed 0)' in text
  # The same training twice is refused.
  copy = str(tmp_path / 'copy')
  shutil.copytree(second, copy)
  with pytest.raises(ValueError, match='of the same training'):
    report.render([second, copy], str(tmp_path / 'again'))
