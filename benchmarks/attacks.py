r"""Attack cost against its lower bound: nb_iter x one input-gradient step.

For each attack on the `cpu` DenseNet (MNIST shape, tanh_mse head, random
weights: the cost of a fixed number of iterations does not depend on them,
except L-BFGS's, whose line search backtracks more on an untrained network)
and a batch of 128 images, prints the wall time per image and the ratio

  attack time / (iterations x time of one jitted input-gradient step)

measured in the same process after warm-up. The gradient family runs its
cleverhans iteration counts; CW and L-BFGS run one binary-search round of a
fixed number of iterations with early abort off (L-BFGS: its projected-gradient
stop off), so the ratio is their time per iteration relative to one gradient
step. APGD runs 100 iterations at eps = 0 (nothing can succeed, so none
stops early). DeepFool runs a fixed max_iter on
images it cannot fool within it (overshoot 0), so it runs every iteration;
each of its iterations takes nb_candidate gradients.

  python benchmarks/attacks.py            # see BENCHMARKS.md
  python benchmarks/attacks.py --workdir=W --only=lbfgs

With --workdir, the trained model of run W and its first test images (L-BFGS:
random targets): the realistic cost of L-BFGS's line search. Attacks that
stop examples early on success (DeepFool, APGD) then run fewer iterations
than the ratio assumes.
"""

import platform
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from mlrobust import attacks
from mlrobust import classifier as classifier_lib
from mlrobust import data
from mlrobust import heads
from mlrobust import models
from mlrobust import workdir as workdir_lib
from mlrobust.attacks import cw

_BATCH = flags.DEFINE_integer('batch_size', 128, 'Images per batch.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per attack.')
_PRESET = flags.DEFINE_string('preset', 'tanh_mse', 'Config preset.')
_ONLY = flags.DEFINE_list('only', [], 'Attacks to measure (default: all).')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'A trained run: measure on its model and its first '
    '--batch_size test images instead of random weights and images.')


def _timed(fn, repeats):
  fn()  # Compile.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  b = _BATCH.value
  if _WORKDIR.value:
    config, clf = workdir_lib.load_run(_WORKDIR.value)
    _, x, y = data.load_test(config.data, b)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    weights = f'trained: {_WORKDIR.value}'
  else:
    config = common.get_config('mnist', f'{_PRESET.value},cpu')
    model = models.make(config.model, config.head.dim)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    targets = heads.make_targets(config.head.targets, 10, config.head.dim,
                                 jax.random.key(1))
    clf = classifier_lib.from_model(model, variables, targets,
                                    activation=config.head.activation,
                                    loss=config.loss)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (b, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, b).astype(np.int32)
    weights = 'random weights'
  xj, yj = jnp.asarray(x), jnp.asarray(y)

  @jax.jit
  def input_grad(clf, x, y):
    return jax.grad(lambda x: jnp.sum(clf.loss(x, y)))(x)

  grad_s = _timed(lambda: jax.block_until_ready(input_grad(clf, xj, yj)),
                  _REPEATS.value * 3)

  # DeepFool's floor per iteration: one forward pass and nb_candidate = 10
  # backward passes (the candidate scores' vector-Jacobian products).
  df = sys.modules['mlrobust.attacks.deepfool']

  candidates = jax.jit(lambda clf, x: df._origin(
      clf, x, nb_candidate=10, cleverhans=False)[1])(clf, xj)

  @jax.jit
  def deepfool_floor(clf, x, candidates):
    fn = df._scores_fn(clf, candidates, nb_candidate=10, use_logits=False,
                       cleverhans=False)
    _, vjp_fn, _ = jax.vjp(fn, x, has_aux=True)
    return jax.vmap(lambda ct: vjp_fn(ct)[0])(
        jnp.broadcast_to(jnp.eye(10)[:, None, :], (10, x.shape[0], 10)))

  floor_s = _timed(lambda: jax.block_until_ready(
      deepfool_floor(clf, xj, candidates)), _REPEATS.value * 3)
  cases = [
      ('fgsm', {}, 1),
      ('bim', {}, 10),
      ('mim', {}, 10),
      ('pgd', {}, 40),
      ('deepfool', {'max_iter': 10, 'overshoot': 0.0}, 10),
      ('cw_l2', {'max_iterations': 50, 'binary_search_steps': 1,
                 'abort_early': False}, 50),
      ('cw_l2_distance', {'max_iterations': 50, 'binary_search_steps': 1,
                          'abort_early': False}, 50),
      ('lbfgs', {'max_iterations': 20, 'binary_search_steps': 1}, 20),
      # eps = 0: no example can succeed, so every iteration runs.
      ('apgd', {'n_iter': 100, 'eps': 0.0}, 100),
  ]
  print(f'# cpu DenseNet-{config.model.depth}-k{config.model.growth_rate} '
        f'({config.head.activation} head, {weights}), batch {b}, '
        f'jax {jax.__version__}, '
        f'{platform.machine()} {jax.devices()[0].device_kind}')
  print(f'# one input-gradient step: {grad_s * 1e3:.1f} ms per batch; '
        f'DeepFool floor (1 forward + 10 backward): {floor_s * 1e3:.1f} ms')
  print('| attack | iterations | ms per image | attack / (iterations x '
        'gradient step) | DeepFool / (iterations x its floor) |')
  print('|---|---|---|---|---|')
  # CW also as one compiled while-loop program (its path on accelerators,
  # and on the CPU before the host-driven chunks).
  cases += [(f'{name} (while program)', params, iters)
            for name, params, iters in cases
            if name.startswith(('cw', 'deepfool', 'apgd', 'lbfgs'))]
  only = _ONLY.value
  lbfgs_targets = attacks.random_targets(jax.random.key(0), y, 10)
  lb = sys.modules['mlrobust.attacks.lbfgs']
  ap = sys.modules['mlrobust.attacks.auto_pgd']
  pgtol = lb.PGTOL
  for name, params, iters in cases:
    if only and name.split(' ')[0] not in only:
      continue
    attack = name.split(' ')[0]
    targeted = attack == 'lbfgs'
    cw.CHUNKED = df.CHUNKED = ap.CHUNKED = lb.CHUNKED = (
        False if 'while' in name else None)
    # Every L-BFGS iteration runs (random weights can stop it at once).
    lb.PGTOL = -1.0 if attack == 'lbfgs' else pgtol
    goal = lbfgs_targets if targeted else y
    fn = lambda: attacks.get(attack)(clf, x, goal, targeted=targeted,
                                     **params)
    t = _timed(fn, _REPEATS.value)
    floor = (f'{t / (iters * floor_s):.2f}' if attack == 'deepfool'
             else '')
    print(f'| {name} | {iters} | {t / b * 1e3:.2f} | '
          f'{t / (iters * grad_s):.2f} | {floor} |', flush=True)
  cw.CHUNKED = df.CHUNKED = ap.CHUNKED = lb.CHUNKED = None
  lb.PGTOL = pgtol


if __name__ == '__main__':
  app.run(main)
