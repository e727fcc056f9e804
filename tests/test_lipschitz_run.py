"""--mode=lipschitz on a smoke-trained workdir, and the Figure 4 plot."""

import json
import os
import shutil

import pytest

from mlrobust import lipschitz_run


def test_lipschitz_mode_and_figure(trained, tmp_path):
  config, workdir = trained
  summary = lipschitz_run.run_lipschitz(config, workdir)
  saved = json.load(open(os.path.join(workdir, 'lipschitz.json')))
  convs = [l for l in saved['layers'] if l['kind'] == 'conv']
  assert len(convs) == 1 + 3 + 2  # Stem, one layer per block, transitions.
  for layer in convs:
    # Power iteration converges from below to the exact norm, which the
    # padded FFT bounds from above.
    assert layer['exact'] <= layer['upper'] * (1 + 1e-4)
  network = saved['network']
  assert network['exact']['structured'] <= network['upper']['structured'] * (
      1 + 1e-4)
  cert = saved['certificate']
  assert cert['num_examples'] == 32
  assert all(0 <= v <= 1 for v in cert['certified_accuracy_l2'].values())
  assert summary['path'].endswith('lipschitz.json')
  out = str(tmp_path / 'figure4.png')
  lipschitz_run.plot_figure4([workdir], out)
  assert os.path.getsize(out) > 1000


def test_several_workdirs_in_one_call(trained, tmp_path, capsys):
  config, workdir = trained
  # A copy of the run is a second workdir without lipschitz.json yet.
  other = str(tmp_path / 'copy')
  shutil.copytree(workdir, other)
  lipschitz_run.run_lipschitz(config, workdir)
  before = os.stat(os.path.join(workdir, 'lipschitz.json')).st_mtime_ns
  out = str(tmp_path / 'fig' / 'figure4.png')
  os.makedirs(os.path.dirname(out))
  written = lipschitz_run.figure4([workdir, other], out)
  assert written == [out, out[:-len('.png')] + '.md']
  # The missing result was computed with the run's saved config; the
  # existing one was only read.
  assert os.path.exists(os.path.join(other, 'lipschitz.json'))
  assert os.stat(os.path.join(workdir, 'lipschitz.json')).st_mtime_ns == before
  assert os.path.getsize(out) > 1000
  table = open(out[:-len('.png')] + '.md').read()
  first = json.load(open(os.path.join(workdir, 'lipschitz.json')))
  stem = first['layers'][0]
  assert stem['name'] == 'stem'
  assert f"| stem | {stem['circular']:.3g} | {stem['exact']:.3g} |" in table
  with pytest.raises(ValueError, match='at least one workdir'):
    lipschitz_run.figure4([], out)
