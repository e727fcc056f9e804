r"""mlrobust's HopSkipJump against foolbox's, on a trained model.

  pip install -e '.[benchmark]'
  python benchmarks/hop_skip_jump_compare.py --workdir=W [--images=32] \
      [--steps=20] [--eps=0.05,0.1,0.2]

Loads the trained run in W and takes its first --images test images, less
those where foolbox's start (blended uniform noise) finds nothing
misclassified, which foolbox's HopSkipJump refuses (said in the output). Runs
foolbox 3.3.4's `HopSkipJumpAttack` (Linf constraint, --steps iterations,
its defaults otherwise: 100 initial gradient queries, gamma 1, geometric step
search, blended-noise start) on the model's label, counting every image the
model is asked about; then mlrobust's `hop_skip_jump` (Linf) with the same
number of queries per example (foolbox's total / images, rounded up), with
eps = 0 so that it never stops early. Both are decision-based: foolbox's
model is the jitted class scores, of which it uses only the argmax.

Prints, for each: the queries per example, the median Linf distance of the
closest adversarial found (misclassified by the model's decoding; none found
counts as infinity) and the accuracy left at each --eps (an example survives
when nothing misclassified was found within eps). One process, the same
images; wall times include compilation.
"""

import math
import platform
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import data
from mlrobust import workdir as workdir_lib
from mlrobust.attacks import core

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run.',
                               required=True)
_IMAGES = flags.DEFINE_integer('images', 32, 'Test images attacked.')
_STEPS = flags.DEFINE_integer('steps', 20, "foolbox's iterations.")
_EPS = flags.DEFINE_list('eps', ['0.05', '0.1', '0.2'], 'Linf budgets.')


def _distances(clf, x, y, adv):
  pred = np.asarray(clf.predict(jnp.asarray(adv)))
  linf = np.abs(adv - x).reshape(len(x), -1).max(axis=1)
  return np.where(pred != y, linf, np.inf)


def main(argv):
  del argv
  import foolbox as fb  # pylint: disable=g-import-not-at-top
  hsja = sys.modules['mlrobust.attacks.hop_skip_jump']

  config, clf = workdir_lib.load_run(_WORKDIR.value)
  _, x, y = data.load_test(config.data, _IMAGES.value)
  n = len(x)
  clean = np.asarray(clf.predict(jnp.asarray(x))) == y
  scores = jax.jit(lambda v: clf.scores(v))
  asked = [0]

  def counted(v):
    asked[0] += v.shape[0]
    return scores(v)

  model = fb.JAXModel(counted, bounds=(0.0, 1.0))
  # foolbox's HopSkipJump refuses a batch where its start (blended uniform
  # noise) fails on any image: keep the images where it succeeds.
  start = fb.attacks.LinearSearchBlendedUniformNoiseAttack().run(
      model, jnp.asarray(x), fb.criteria.Misclassification(jnp.asarray(y)))
  keep = np.asarray(clf.predict(start)) != y
  dropped = int(np.sum(~keep))
  x, y = x[keep], y[keep]
  n = len(x)
  clean = np.asarray(clf.predict(jnp.asarray(x))) == y
  asked[0] = 0
  attack = fb.attacks.HopSkipJumpAttack(steps=_STEPS.value,
                                        constraint='linf')
  start = time.perf_counter()
  adv = attack.run(model, jnp.asarray(x), jnp.asarray(y))
  theirs_s = time.perf_counter() - start
  theirs = _distances(clf, x, y, np.asarray(adv))
  budget = math.ceil(asked[0] / n)

  start = time.perf_counter()
  out = hsja.attack(clf, jnp.asarray(x), jnp.asarray(y),
                    core.example_keys(jax.random.key(0), x), eps=0.0,
                    norm='linf', n_queries=budget)
  ours_s = time.perf_counter() - start
  ours = _distances(clf, x, y, np.asarray(out['best']))
  queries = np.asarray(out['queries'])
  theirs[~clean] = ours[~clean] = 0.0

  eps_grid = [float(e) for e in _EPS.value]
  print(f'\n# {config.data.name} {workdir_lib.run_label(config)} '
        f'({config.size}), {n} test images (clean accuracy '
        f'{clean.mean():.3f}; {dropped} more dropped: foolbox found no '
        f'start), jax {jax.__version__}, foolbox '
        f'{fb.__version__}, {platform.machine()} '
        f'{jax.devices()[0].device_kind}')
  heads = ' | '.join(f'accuracy at eps {e:g}' for e in eps_grid)
  print(f'| attack | queries per example | median Linf | {heads} | wall s |')
  print('|---|---|---|' + '---|' * len(eps_grid) + '---|')
  for name, dist, q, wall in (
      (f'foolbox HopSkipJumpAttack ({_STEPS.value} steps)', theirs,
       f'{asked[0] / n:.0f} (mean)', theirs_s),
      ('mlrobust hop_skip_jump', ours,
       f'{queries.mean():.0f} (mean), <= {budget}', ours_s)):
    accs = ' | '.join(f'{np.mean(dist > e):.3f}' for e in eps_grid)
    print(f'| {name} | {q} | {np.median(dist):.4f} | {accs} | {wall:.0f} |')


if __name__ == '__main__':
  app.run(main)
