r"""L-BFGS now against an earlier revision of it, on a trained model.

  python benchmarks/lbfgs_versions.py --workdir=W --baseline=1c75fc0

Loads the trained run in W and its first --images test images (random
targets, seed 0), and times, in one process after a warm-up call each:
one input-gradient step of the model's loss on the batch; the attack of the
baseline revision (mlrobust/attacks/lbfgs.py as of that git revision,
imported from `git show`); today's attack as host-driven chunks and as one
while-loop program. Every row runs one binary-search round of
--iterations iterations with the projected-gradient stop off, so each ratio
is the time of one iteration in input-gradient steps. Also prints each
version's success rate and median L2 at the cleverhans budget of 5 rounds,
so that speed is not bought with strength.
"""

import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import attacks
from mlrobust import data
from mlrobust import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run.',
                               required=True)
_BASELINE = flags.DEFINE_string('baseline', '1c75fc0',
                                'git revision of the earlier lbfgs.py.')
_IMAGES = flags.DEFINE_integer('images', 128, 'Test images attacked.')
_ITERATIONS = flags.DEFINE_integer('iterations', 20,
                                   'Iterations of the timed round.')
_STRENGTH_ITERATIONS = flags.DEFINE_integer(
    'strength_iterations', 100, 'Iterations per round of the 5-round runs.')
_C = flags.DEFINE_float('c', 0.1, 'initial_const.')


def _load_revision(rev):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  source = subprocess.run(
      ['git', 'show', f'{rev}:mlrobust/attacks/lbfgs.py'], cwd=root,
      check=True, capture_output=True, text=True).stdout
  path = os.path.join(tempfile.mkdtemp(), 'lbfgs_baseline.py')
  with open(path, 'w') as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location('lbfgs_baseline', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _timed(fn, repeats=1):
  jax.block_until_ready(fn())  # Compile.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  config, clf = workdir_lib.load_run(_WORKDIR.value)
  _, x, y = data.load_test(config.data, _IMAGES.value)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  t = jnp.asarray(attacks.random_targets(jax.random.key(0), y,
                                         clf.num_classes))
  old = _load_revision(_BASELINE.value)
  new = sys.modules['mlrobust.attacks.lbfgs']

  @jax.jit
  def input_grad(clf, x, y):
    return jax.grad(lambda x: jnp.sum(clf.loss(x, y)))(x)

  grad_s = _timed(lambda: input_grad(clf, x, t), 20)

  def run(module, chunked, bss, iterations):
    fn = module._lbfgs  # pylint: disable=protected-access
    if chunked:
      fn = module._lbfgs_chunked  # pylint: disable=protected-access
    return lambda: fn(clf, x, t, None, _C.value, loss='train',
                      binary_search_steps=bss, max_iterations=iterations)

  rows = [(f'baseline {_BASELINE.value} (vmapped optax.lbfgs, while loops)',
           old, False), ('now, host-driven chunks (the CPU path)', new, True),
          ('now, one while-loop program (accelerators)', new, False)]
  n = _ITERATIONS.value
  print(f'# {config.data.name} {workdir_lib.run_label(config)} '
        f'({config.model.name}-{config.model.depth}-'
        f'k{config.model.growth_rate}), {len(x)} test images, c = '
        f'{_C.value}, jax {jax.__version__}, {platform.machine()} '
        f'{jax.devices()[0].device_kind}')
  print(f'# one input-gradient step: {grad_s * 1e3:.1f} ms per batch')
  print(f'| L-BFGS | s for 1 round x {n} iterations | gradient steps per '
        f'iteration | success, 5 x {_STRENGTH_ITERATIONS.value} | median L2 '
        '| s, 5 rounds (first call) |')
  print('|---|---|---|---|---|---|')
  for name, module, chunked in rows:
    pgtol = module.PGTOL
    module.PGTOL = -1.0  # Every iteration runs.
    s = _timed(run(module, chunked, 1, n), 3)
    module.PGTOL = pgtol
    start = time.perf_counter()
    adv, pred = jax.block_until_ready(
        run(module, chunked, 5, _STRENGTH_ITERATIONS.value)())
    wall = time.perf_counter() - start
    success = np.asarray(pred) == np.asarray(t)
    l2 = np.linalg.norm(np.asarray(adv - x).reshape(len(x), -1), axis=1)
    median = float(np.median(l2[success])) if success.any() else float('nan')
    print(f'| {name} | {s:.1f} | {s / (n * grad_s):.2f} | '
          f'{success.mean():.3f} | {median:.3f} | {wall:.0f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
