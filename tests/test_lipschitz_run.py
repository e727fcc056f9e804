"""--mode=lipschitz on a smoke-trained workdir, and the Figure 4 plot."""

import json
import os

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
