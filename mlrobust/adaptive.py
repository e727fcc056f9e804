"""Adaptive evaluation: an ensemble of attacks on the class scores, and the
sanity checks that tell robustness from gradient masking.

Later work broke defenses of this family by adapting the attack to the model
(Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On Evaluating
Adversarial Robustness"; Tramer et al. 2020; Croce & Hein 2020). Here:

  ensemble(clf, x, y, eps)    per example, the worst case over MEMBERS, each
                              run only on the examples still unbroken; every
                              example's breaking attack is recorded;
  checklist(clf, x, y, ...)   pass/fail items with their numbers and what a
                              failure suggests.

Every member attacks the generic decoding's class scores, so every head is
attacked the same way; all are untargeted in outcome (an example is broken
when it is misclassified).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import attacks
from mlrobust import heads
from mlrobust import stats
from mlrobust.attacks import core


def _apgd_ce(clf, x, y, eps, rng, effort):
  del rng
  return attacks.apgd(clf, x, y, eps=eps, n_iter=100 * effort, loss='ce')


def _apgd_t(clf, x, y, eps, rng, effort):
  """Targeted APGD-DLR on the top-k other classes (k = min(9, K - 1))."""
  del rng
  k = min(9, clf.num_classes - 1)
  scores = np.array(clf.scores(jnp.asarray(x)))
  scores[np.arange(len(y)), y] = -np.inf
  ranked = np.argsort(-scores, axis=1)[:, :k]
  adv, broken = x.copy(), np.zeros(len(y), bool)
  loss = 'dlr' if clf.num_classes >= 4 else 'ce'
  for r in range(k):
    todo = ~broken
    if not todo.any():
      break
    result = attacks.apgd(clf, x[todo], ranked[todo, r].astype(np.int32),
                          targeted=True, labels=y[todo], eps=eps,
                          n_iter=100 * effort, loss=loss)
    hit = result.prediction != y[todo]
    idx = np.flatnonzero(todo)[hit]
    adv[idx], broken[idx] = result.adv[hit], True
  return _result(clf, x, y, adv)


def _margin_restarts(clf, attacked, x, y, eps, rng, effort):
  """Margin PGD on `attacked` with random restarts: 100 steps of eps / 10
  each; an example counts as broken only if `clf` misclassifies it."""
  adv, broken = x.copy(), np.zeros(len(y), bool)
  for restart in range(2 * effort):
    todo = ~broken
    if not todo.any():
      break
    result = attacks.pgd(attacked, x[todo], y[todo], eps=eps,
                         eps_iter=eps / 10, nb_iter=100, loss='margin',
                         rng=jax.random.fold_in(rng, restart))
    hit = np.asarray(clf.predict(jnp.asarray(result.adv))) != y[todo]
    idx = np.flatnonzero(todo)[hit]
    adv[idx], broken[idx] = result.adv[hit], True
  return _result(clf, x, y, adv)


def _pgd_margin(clf, x, y, eps, rng, effort):
  """Margin PGD with random restarts on the model itself."""
  return _margin_restarts(clf, clf, x, y, eps, rng, effort)


def _pgd_margin_bpda(clf, x, y, eps, rng, effort):
  """Margin PGD through the BPDA surrogate of the head activation (forward
  as the model, identity backward); success is decided by the real model."""
  surrogate = clf.replace(activation=heads.BPDA_PREFIX + clf.activation)
  return _margin_restarts(clf, surrogate, x, y, eps, rng, effort)


def _square(clf, x, y, eps, rng, effort):
  """The score-based Square Attack: no gradients, so masking cannot stop it."""
  return attacks.square(clf, x, y, eps=eps, n_queries=1000 * effort, rng=rng)


def _hop_skip_jump(clf, x, y, eps, rng, effort):
  """Label-only HopSkipJump: sees only predictions (a secret codebook)."""
  return attacks.hop_skip_jump(clf, x, y, eps=eps, n_queries=5000 * effort,
                               rng=rng)


def _result(clf, x, y, adv):
  pred = np.asarray(clf.predict(jnp.asarray(adv)))
  flat = (adv - x).reshape(len(x), -1)
  return attacks.AttackResult(adv, pred != y, np.linalg.norm(flat, axis=1),
                              np.abs(flat).max(axis=1), pred)


# The ensemble's members, strongest-first as in AutoAttack's standard
# version (APGD-CE, APGD-T, then the score-based Square; FAB-T is not here
# yet). The white-box ones read gradients; Square only the class scores.
# All are Linf, as the budget eps is: APGD-L2 is not a member (an L2 ball
# of radius eps lies inside the Linf one, and a larger one leaves it).
# 'hop-skip-jump' (decision-based: only the predicted class, 5,000 queries)
# is not a default member: it measures the threat model where the codebook is
# secret, and is the costliest per example. Nor is 'pgd-margin-bpda' (margin
# PGD through the BPDA surrogate of the head activation): add it where the
# gradient-health item finds zero gradients, e.g. a saturated tanh.
MEMBERS = {'apgd-ce': _apgd_ce, 'apgd-t': _apgd_t, 'pgd-margin': _pgd_margin,
           'pgd-margin-bpda': _pgd_margin_bpda, 'square': _square,
           'hop-skip-jump': _hop_skip_jump}
WHITE_BOX = ('apgd-ce', 'apgd-t', 'pgd-margin')
DEFAULT_MEMBERS = WHITE_BOX + ('square',)


def ensemble(clf, x, y, eps, *, members=DEFAULT_MEMBERS, rng=None,
             effort: int = 1) -> dict:
  """Robust accuracy under the worst case over `members` (Linf eps).

  Each member runs on the examples no earlier member broke. Returns
  {'robust_accuracy', 'interval' (95% Wilson), 'num_examples',
   'clean_accuracy', 'broken_by': [member or None per example],
   'per_member': {member: examples it broke}, 'adv': images}.
  """
  for m in members:
    if m not in MEMBERS:
      raise ValueError(f'unknown ensemble member {m!r}; choose from '
                       f'{sorted(MEMBERS)}')
  rng = jax.random.key(0) if rng is None else rng
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  pred = np.asarray(clf.predict(jnp.asarray(x)))
  broken = pred != y
  broken_by = ['clean' if b else None for b in broken]
  adv = x.copy()
  per_member = {}
  for i, m in enumerate(members):
    todo = ~broken
    if not todo.any():
      per_member[m] = 0
      continue
    result = MEMBERS[m](clf, x[todo], y[todo], eps, jax.random.fold_in(rng, i),
                        effort)
    idx = np.flatnonzero(todo)[result.success]
    adv[idx] = result.adv[result.success]
    broken[idx] = True
    for j in idx:
      broken_by[j] = m
    per_member[m] = int(result.success.sum())
  n = len(y)
  robust = int(np.sum(~broken))
  return {'robust_accuracy': robust / max(n, 1),
          'interval': stats.wilson_interval(robust, n) if n else None,
          'num_examples': n, 'clean_accuracy': float(np.mean(pred == y)),
          'broken_by': broken_by, 'per_member': per_member,
          'adv': adv}


def _accuracy(clf, x, y):
  return float(np.mean(np.asarray(clf.predict(jnp.asarray(x))) == y))


@functools.partial(jax.jit, static_argnames=('loss',))
def _input_grads(clf, x, y, loss):
  return jax.grad(lambda v: jnp.sum(core.attack_loss(clf, v, y, loss)))(x)


def gradient_health(clf, x, y) -> dict:
  """Fractions of examples with a zero or non-finite input gradient per
  attack loss, and of saturated output units."""
  out = {}
  for loss in ('train', 'ce', 'dlr'):
    if loss == 'dlr' and clf.num_classes < 3:
      continue
    g = np.asarray(_input_grads(clf, jnp.asarray(x), jnp.asarray(y), loss))
    flat = g.reshape(len(g), -1)
    out[f'zero_or_nonfinite_gradient_{loss}'] = float(np.mean(
        ~np.all(np.isfinite(flat), axis=1) |
        (np.abs(flat).max(axis=1) == 0)))
  z = np.asarray(clf.logits(jnp.asarray(x)))
  if clf.activation == 'tanh':
    out['saturated_units'] = float(np.mean(np.abs(z) > 4))
  elif clf.activation == 'softmax':
    p = np.asarray(jax.nn.softmax(jnp.asarray(z)))
    out['saturated_units'] = float(np.mean(p.max(axis=1) > 1 - 1e-6))
  return out


def noise_is_weaker(clean, noise, attack) -> bool:
  """Whether the attack beats random noise of the same size at every eps.

  Where either lowers accuracy by 0.05 or more, the attack must leave at
  most half of what the noise leaves, or lower accuracy at least twice as
  much as the noise does (noise that barely hurts and an attack that halves
  accuracy is a pass).
  """
  return all(a <= 0.5 * n or clean - a >= 2 * (clean - n)
             for n, a in zip(noise, attack) if clean - min(n, a) >= 0.05)


def checklist(clf, x, y, *, eps_grid, ensemble_accuracy, rng=None,
              proxy=None) -> list:
  """The masking checklist; each item: {'check', 'pass' (True, False or None
  for information), 'numbers', 'if it fails'}.

  Args:
    clf, x, y: the model and test images with labels.
    eps_grid: the Linf budgets evaluated (ascending).
    ensemble_accuracy: the ensemble's robust accuracy at each eps.
    rng: the key of the randomized attacks (None: key 0).
    proxy: another trained classifier of the same task (e.g. the softmax_ce
      proxy of Table 6), or None; given, white-box is held against transfer
      from it.
  """
  rng = jax.random.key(0) if rng is None else rng
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  clean = _accuracy(clf, x, y)
  items = []

  def item(name, ok, numbers, hint):
    items.append({'check': name, 'pass': ok, 'numbers': numbers,
                  'if it fails': hint})

  big = {}
  for eps in (0.5, 1.0):
    big[eps] = ensemble(clf, x, y, eps, members=('apgd-ce', 'pgd-margin'),
                        rng=rng)['robust_accuracy']
  item('unbounded budget: accuracy 0 at Linf eps 0.5 and 1.0',
       all(a <= 0.01 for a in big.values()),
       {f'eps={e:g}': a for e, a in big.items()},
       'gradients do not lead anywhere (masking, or a bug): the smaller eps '
       'numbers are not evidence of robustness')
  correct = np.asarray(clf.predict(jnp.asarray(x))) == y
  rate, hit = None, np.zeros(0)
  if correct.any():  # Else there is nothing to attack: information only.
    fool = attacks.deepfool(clf, x[correct], y[correct])
    rate = float(np.mean(fool.success))
    hit = fool.l2[fool.success]
  item('unbounded L2: DeepFool, without a budget, misclassifies >= 99% of '
       'the correctly classified examples', None if rate is None else
       rate >= 0.99,
       {'success_rate': rate, 'examples': int(correct.sum()),
        'median_l2': float(np.median(hit)) if hit.size else None},
       'a minimal-perturbation attack without a budget fails: its '
       'gradients lead nowhere (masking, or a bug); compare models by the '
       'median L2 of the perturbations it found, not by an accuracy')
  rises = [(a, b) for a, b in zip(ensemble_accuracy, ensemble_accuracy[1:])
           if b > a + 1.0 / len(y)]
  item('monotone in budget', not rises,
       dict(zip((f'eps={e:g}' for e in eps_grid), ensemble_accuracy)),
       'a larger budget found fewer adversarial examples: the attack is not '
       'converged or is misled')
  single, iterative = [], []
  for eps in eps_grid:
    single.append(_accuracy(clf, attacks.fgsm(clf, x, y, eps=eps).adv, y))
    iterative.append(_accuracy(
        clf, attacks.apgd(clf, x, y, eps=eps, loss='ce').adv, y))
  item('iterative at least as strong as single-step (APGD <= FGSM + 0.01)',
       all(i <= s + 0.01 for i, s in zip(iterative, single)),
       {'fgsm': single, 'apgd-ce': iterative},
       'single steps beating iterations is a sign of a rugged or masked loss')
  paper = [_accuracy(clf, attacks.pgd(clf, x, y, eps=eps).adv, y)
           for eps in eps_grid]
  item("the paper's attack (PGD, 40 steps, training loss) vs the ensemble",
       None, {'paper-style pgd': paper, 'ensemble': ensemble_accuracy,
              'gap': [p - e for p, e in zip(paper, ensemble_accuracy)]},
       'a gap is robustness the paper-style attack over-reports')
  noise = []
  for i, eps in enumerate(eps_grid):
    signs = jax.random.rademacher(jax.random.fold_in(rng, 100 + i), x.shape)
    noisy = np.clip(x + eps * np.asarray(signs, np.float32), 0, 1)
    noise.append(_accuracy(clf, noisy, y))
  item('random noise of the same size is far weaker than the attack '
       '(attack accuracy <= half the noise accuracy, or an accuracy drop at '
       "least twice the noise's)",
       noise_is_weaker(clean, noise, ensemble_accuracy),
       {'noise': noise, 'ensemble': ensemble_accuracy, 'clean': clean},
       'noise does about as much as the attack: the attack is not using '
       'gradients effectively')
  if eps_grid:
    eps = eps_grid[len(eps_grid) // 2]
    doubled = ensemble(clf, x, y, eps, rng=rng, effort=2)['robust_accuracy']
    single_effort = ensemble_accuracy[len(eps_grid) // 2]
    item('more effort changes little (2x iterations and restarts: < 0.005)',
         abs(doubled - single_effort) < 0.005,
         {f'eps={eps:g}': {'effort 1': single_effort, 'effort 2': doubled}},
         'the number is not converged: report the stronger one')
    white = ensemble(clf, x, y, eps, members=WHITE_BOX,
                     rng=rng)['robust_accuracy']
    black = ensemble(clf, x, y, eps, members=('square',),
                     rng=rng)['robust_accuracy']
    item("white-box >= black-box: the gradient members' accuracy <= "
         "Square's alone + 0.01", white <= black + 0.01,
         {f'eps={eps:g}': {'white-box (' + ', '.join(WHITE_BOX) + ')': white,
                           'square': black}},
         'an attack that never sees a gradient beats the gradient attacks: '
         'the gradients are masked or misleading (Carlini et al. 2019); '
         'trust only numbers of ensembles that include Square')
    if proxy is not None:
      crafted = attacks.apgd(proxy, x, y, eps=eps, loss='ce').adv
      transfer = _accuracy(clf, crafted, y)
      item("white-box >= transfer: the gradient members' accuracy <= that "
           'of APGD-CE examples crafted on the proxy + 0.01',
           white <= transfer + 0.01,
           {f'eps={eps:g}': {'white-box (' + ', '.join(WHITE_BOX) + ')':
                             white, 'transfer from the proxy': transfer}},
           "another model's gradients fool this one better than its own: "
           'its gradients are masked (Athalye et al. 2018)')
  health = gradient_health(clf, x, y)
  zero = [v for k, v in health.items() if k.startswith('zero')]
  item('gradient health (zero or non-finite input gradients < 5%)',
       max(zero) < 0.05, health,
       'gradient attacks see no signal: use attacks that do not need it '
       "(score-based 'square', or 'pgd-margin-bpda' through a surrogate of "
       'the head activation) before trusting any number')
  return items
