r"""APGD on the CPU: one compiled fori_loop against host-driven chunks.

Loads a trained run, attacks its first test images with APGD-CE (Linf) both
ways in one process, a warm-up call each (compilation), and prints the wall
time of the next call and whether the two agree.

  python benchmarks/apgd_chunks.py --workdir=/work/runs/cpu_v3/mnist_tanh_mse
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np

from mlrobust import attacks
from mlrobust import data
from mlrobust import workdir as workdir_lib
from mlrobust.attacks import auto_pgd

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run.',
                               required=True)
_IMAGES = flags.DEFINE_integer('images', 128, 'Test images (one batch).')
_EPS = flags.DEFINE_float('eps', 0.1, 'Linf radius.')
_ITERS = flags.DEFINE_integer('n_iter', 100, 'APGD iterations.')


def main(argv):
  del argv
  config, clf = workdir_lib.load_run(_WORKDIR.value)
  _, x, y = data.load_test(config.data, _IMAGES.value)
  x, y = np.asarray(x)[:_IMAGES.value], np.asarray(y)[:_IMAGES.value]
  print(f'# {_WORKDIR.value}, {len(x)} images, APGD-CE eps {_EPS.value:g}, '
        f'{_ITERS.value} iterations, jax {jax.__version__}, '
        f'{jax.default_backend()}')
  print('| loop | warm-up s | wall s | accuracy under attack |')
  print('|---|---|---|---|')
  results = {}
  for chunked in (False, True):
    auto_pgd.CHUNKED = chunked
    fn = lambda: attacks.apgd(clf, x, y, eps=_EPS.value, n_iter=_ITERS.value,
                              loss='ce')
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    results[chunked] = fn()
    wall = time.perf_counter() - start
    acc = np.mean(results[chunked].prediction == y)
    name = f'chunks of {auto_pgd.CHUNK}' if chunked else 'fori_loop'
    print(f'| {name} | {warm:.1f} | {wall:.2f} | {acc:.3f} |', flush=True)
  auto_pgd.CHUNKED = None
  diff = np.abs(results[True].adv - results[False].adv).max()
  print(f'# max |adv difference| {diff:.2g}')


if __name__ == '__main__':
  app.run(main)
