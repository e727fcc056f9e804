"""The tree is lint-clean under the ruff settings of pyproject.toml."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_is_clean():
  ruff = shutil.which('ruff')
  if ruff is None:
    pytest.fail("ruff is missing: install the test extras, pip install -e "
                "'.[test]'")
  result = subprocess.run([ruff, 'check', '--output-format=concise', '.'],
                          cwd=ROOT, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr
