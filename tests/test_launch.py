"""The one entry point: every mode through launch.py (subprocesses)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_RUNS = [f'results/cpu/mnist_{p}'
              for p in ('softmax_ce', 'softmax_mse', 'tanh_mse')]
FMNIST_RUNS = [f'results/cpu/fashion_mnist_{p}'
               for p in ('softmax_ce', 'softmax_mse', 'tanh_mse')]
CIFAR_RUNS = [f'results/cpu/cifar10_jpeg_{p}'
              for p in ('softmax_ce', 'softmax_mse', 'tanh_mse')]


def _launch(*args):
  return subprocess.run([sys.executable, 'launch.py', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        check=False)


# The runs whose paper grids were recomputed at the new cpu budget.
V3_RUNS = ['results/cpu_v3/mnist_tanh_mse']
V4_RUNS = (['results/cpu_v4/mnist_softmax_ce',
            'results/cpu_v4/mnist_softmax_mse'] + V3_RUNS
           + [f'results/cpu_v4/fashion_mnist_{p}'
              for p in ('softmax_ce', 'softmax_mse', 'tanh_mse')]
           + ['results/cpu/mnist_tanh_mse_adaptive']
           + [f'results/cpu_seeds/{d}_{p}_seed{s}'
              for d in ('mnist', 'fashion_mnist') for p in (
                  'softmax_ce', 'softmax_mse', 'tanh_mse') for s in (1, 2)
              if (d, p, s) != ('mnist', 'tanh_mse', 2)]
           + CIFAR_RUNS)


@pytest.mark.parametrize('runs, report', [
    (MNIST_RUNS + FMNIST_RUNS, 'cpu'), (V3_RUNS, 'cpu_v3'),
    (V4_RUNS, 'cpu_v4')])
def test_report_of_the_committed_results_is_the_committed_report(
    tmp_path, runs, report):
  # The report is a function of the result files: regenerating it from
  # results/ gives the committed reports/<report>/report.md byte for byte.
  out = tmp_path / 'report'
  result = _launch('--mode=report', f'--workdirs={",".join(runs)}',
                   f'--out={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(ROOT, 'reports', report, 'report.md')) as f:
    assert (out / 'report.md').read_text() == f.read()
  assert (out / 'mnist_table3.png').stat().st_size > 1000


def test_figure4_of_the_committed_results_is_the_committed_table(tmp_path):
  runs = [r for r in MNIST_RUNS + FMNIST_RUNS + CIFAR_RUNS if 'tanh' not in r]
  out = tmp_path / 'figure4_cpu.png'
  result = _launch('--mode=figure4', f'--workdirs={",".join(runs)}',
                   f'--out={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(ROOT, 'figures', 'figure4_cpu.md')) as f:
    assert (tmp_path / 'figure4_cpu.md').read_text() == f.read()


@pytest.mark.parametrize('args, message', [
    (['--mode=report', '--out=x'], '--mode=report needs --workdirs and --out'),
    (['--mode=figure4', '--workdirs=a'], 'needs --workdirs and --out'),
    (['--mode=attack', '--workdir=w'], '--mode=attack needs --config'),
    (['--mode=report', '--workdirs=/nonexistent/run', '--out=x'],
     'error: /nonexistent/run/config.json is missing'),
    (['--mode=sweeps'], 'value should be one of'),
    (['--mode=sweep', '--workdirs=a', '--out=x'],
     '--mode=sweep needs --attack, --param, --values'),
    (['--mode=sweep', '--workdirs=a', '--out=x', '--attack=pgd',
      '--param=eps', '--values=0,0.1,...,0.25'], 'error: --values'),
])
def test_modes_say_what_they_need(args, message):
  result = _launch(*args)
  assert result.returncode != 0
  assert message in result.stderr + result.stdout
