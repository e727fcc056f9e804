r"""mlrobust's CW-L2 and DeepFool against foolbox's, on a trained model.

  pip install -e '.[benchmark]'
  python benchmarks/foolbox_compare.py --workdir=W [--images=64]

Loads the trained run in W (e.g. a `cpu` tanh_mse run on MNIST), takes its
first --images test images and runs, in one process, after a warm-up call of
each (compilation excluded):
- CW-L2, untargeted, 5 binary-search steps x 100 iterations, c = 0.1, Adam
  learning rate 5e-3, confidence 0, abort early: mlrobust's `cw_l2_distance`
  (its margin is on the class scores, minus the distances to the targets) and
  foolbox 3.3.4's `L2CarliniWagnerAttack` on the same class scores;
- DeepFool, L2, 10 candidates, overshoot 0.02, at most 50 steps: mlrobust's
  `deepfool` and foolbox's `L2DeepFoolAttack` (loss 'logits' on the class
  scores), and foolbox's DeepFool also on mlrobust's scores (minus half the
  squared distances), to tell a difference of scores from one of algorithm;
- mlrobust's CW also as it ran before the host-driven chunks (one compiled
  while-loop program) and with chunks but without dropping finished examples,
  so the effect of each change is measured in the same process.
Prints a markdown table: wall time, accuracy under attack (by the model's
own decoding) and the median L2 of the successful examples. foolbox returns
an all-zero image for an example it did not break (and its own success flag
then judges that zero image), so only non-zero foolbox results that the model
misclassifies count as successes here.
"""

import platform
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import attacks
from mlrobust import data
from mlrobust import heads
from mlrobust import workdir as workdir_lib
from mlrobust.attacks import cw

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run.',
                               required=True)
_IMAGES = flags.DEFINE_integer('images', 64, 'Test images attacked.')
_SKIP = flags.DEFINE_list('skip', [], 'Rows to leave out (by name).')


def _timed(fn):
  fn()  # Warm-up: compiles.
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _summary(adv, x, y, clf, valid=None):
  pred = np.asarray(clf.predict(jnp.asarray(adv)))
  success = pred != y
  if valid is not None:
    success &= valid
  l2 = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)
  return 1.0 - success.mean(), (float(np.median(l2[success]))
                                if success.any() else float('nan'))


def main(argv):
  del argv
  import foolbox as fb  # pylint: disable=g-import-not-at-top

  config, clf = workdir_lib.load_run(_WORKDIR.value)
  _, x, y = data.load_test(config.data, _IMAGES.value)
  n = len(x)
  # The class scores, compiled (foolbox differentiates through the call).
  model = fb.JAXModel(jax.jit(lambda v: clf.scores(v)), bounds=(0.0, 1.0))
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  clean = float(np.mean(np.asarray(clf.predict(xj)) == y))

  cw_params = dict(initial_const=0.1, binary_search_steps=5,
                   max_iterations=100, learning_rate=5e-3, confidence=0.0,
                   abort_early=True)
  rows = []

  def ours(name, fn):
    if name in _SKIP.value:
      return
    result, wall = _timed(fn)
    acc, l2 = _summary(result.adv, x, y, clf)
    rows.append((name, wall, acc, l2))
    print(rows[-1], flush=True)

  def theirs(name, attack, model=model):
    if name in _SKIP.value:
      return
    (_, adv, _), wall = _timed(lambda: attack(model, xj, yj, epsilons=None))
    adv = np.asarray(adv)
    nonzero = np.abs(adv).reshape(n, -1).max(axis=1) > 0
    acc, l2 = _summary(adv, x, y, clf, valid=nonzero)
    rows.append((name, wall, acc, l2))
    print(rows[-1], flush=True)

  ours('mlrobust cw_l2_distance',
       lambda: attacks.cw_l2_distance(clf, x, y, **cw_params))
  min_bucket, cw.MIN_BUCKET = cw.MIN_BUCKET, 10**9
  ours('mlrobust cw_l2_distance, chunks without dropping finished examples',
       lambda: attacks.cw_l2_distance(clf, x, y, **cw_params))
  cw.MIN_BUCKET, cw.CHUNKED = min_bucket, False
  ours('mlrobust cw_l2_distance, one while-loop program (before)',
       lambda: attacks.cw_l2_distance(clf, x, y, **cw_params))
  cw.CHUNKED = None
  theirs('foolbox L2CarliniWagnerAttack', fb.attacks.L2CarliniWagnerAttack(
      binary_search_steps=5, steps=100, stepsize=5e-3, confidence=0.0,
      initial_const=0.1, abort_early=True))
  df = sys.modules['mlrobust.attacks.deepfool']
  ours('mlrobust deepfool', lambda: attacks.deepfool(
      clf, x, y, nb_candidate=10, overshoot=0.02, max_iter=50))
  df.CHUNKED = False
  ours('mlrobust deepfool, one while-loop program (before)',
       lambda: attacks.deepfool(clf, x, y, nb_candidate=10, overshoot=0.02,
                                max_iter=50))
  df.CHUNKED = None
  theirs('foolbox L2DeepFoolAttack', fb.attacks.L2DeepFoolAttack(
      steps=50, candidates=10, overshoot=0.02, loss='logits'))
  # foolbox's DeepFool on the scores mlrobust's linearises (minus half the
  # squared distances; the same decisions as the class scores): tells a
  # difference of scores from a difference of implementation.
  squared = fb.JAXModel(jax.jit(lambda v: -0.5 * heads.squared_distances(
      clf.outputs(v), clf.targets)), bounds=(0.0, 1.0))
  theirs('foolbox L2DeepFoolAttack on mlrobust\'s scores',
         fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02,
                                     loss='logits'), model=squared)

  print(f'\n# {config.data.name} {workdir_lib.run_label(config)} '
        f'({config.size}), {n} test images (clean accuracy {clean:.3f}), '
        f'jax {jax.__version__}, foolbox {fb.__version__}, '
        f'{platform.machine()} {jax.devices()[0].device_kind}')
  print('| attack | wall s | accuracy under attack | median L2 of '
        'successes |')
  print('|---|---|---|---|')
  for name, wall, acc, l2 in rows:
    print(f'| {name} | {wall:.1f} | {acc:.3f} | {l2:.3f} |')


if __name__ == '__main__':
  app.run(main)
