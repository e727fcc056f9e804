"""Every notebook runs top to bottom at the smoke size (mock MNIST)."""

import os

import nbclient
import nbformat
import pytest

from tests import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ('quickstart', 'sweeps', 'lipschitz', 'reproduce')

# Run before the notebook's own cells, in its kernel: serve mock MNIST through
# TFDS, as the other tests do, so no dataset file is needed (the manual
# directory holds empty stand-ins for the loader's offline check).
_MOCK = '''\
import tensorflow_datasets as tfds
from mlrobust import data as _data
_mock_data = tfds.testing.mock_data(num_examples=320)
_mock_data.__enter__()
_data.default_manual_dir = lambda data_dir, name: {manual!r}
'''


def _execute(name, tmp_path, monkeypatch):
  manual = tmp_path / 'manual'
  manual.mkdir()
  for f in conftest.MNIST_FILES:
    (manual / f).touch()
  monkeypatch.setenv('MLROBUST_NOTEBOOK_SIZE', 'smoke')
  monkeypatch.setenv('MLROBUST_RUNS', str(tmp_path / 'runs'))
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  path = os.path.join(ROOT, 'notebooks', f'{name}.ipynb')
  notebook = nbformat.read(path, as_version=4)
  notebook.cells.insert(
      0, nbformat.v4.new_code_cell(_MOCK.format(manual=str(manual))))
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}})
  client.execute()  # Raises CellExecutionError on any cell's error.
  return notebook


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
  notebook = _execute(name, tmp_path, monkeypatch)
  images = [o for c in notebook.cells if c.cell_type == 'code'
            for o in c.get('outputs', ())
            if 'image/png' in o.get('data', {})]
  assert images, f'{name} showed no figure'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_stored_notebook_is_small_and_has_its_outputs(name):
  path = os.path.join(ROOT, 'notebooks', f'{name}.ipynb')
  assert os.path.getsize(path) < 2 * 1024 * 1024
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert all(c.get('execution_count') for c in code), 'not run top to bottom'
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  errors = [o for c in code for o in c.get('outputs', ())
            if o.get('output_type') == 'error']
  assert not errors
  assert 'colab.research.google.com' in notebook.cells[0].source


def test_a_notebook_that_loads_results_fails_loudly_without_them(
    tmp_path, monkeypatch):
  # A copy of the reproduce notebook pointed at a folder without results.
  path = os.path.join(ROOT, 'notebooks', 'reproduce.ipynb')
  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    cell.source = cell.source.replace("os.path.join('results', 'cpu')",
                                      repr(str(tmp_path / 'nothing')))
  client = nbclient.NotebookClient(
      notebook, timeout=300, kernel_name='python3',
      resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}})
  with pytest.raises(nbclient.exceptions.CellExecutionError,
                     match='config.json is missing'):
    client.execute()
