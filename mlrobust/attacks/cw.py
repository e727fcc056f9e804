"""Carlini & Wagner L2 (2017) and Saito & Roy's distance variant (Section 3.3).

Both minimise ||x' - x||_2^2 + c * f(x') over x' = (tanh(w) + 1) / 2 (which
keeps x' in [0, 1]) with Adam, and binary-search c per example, keeping the
successful x' with the smallest L2 distance. Every iterate is judged, and kept
or not, by the generic distance decoding alone (cleverhans likewise keeps
iterates by its `compare`, not by f). Each example is optimised as if alone:
its own loss, abort-early test and stopping point (cleverhans runs CW one
image at a time), so a result never depends on the other images of a batch.
Defaults follow cleverhans v2.1 as the paper used it (Table 2): learning rate
5e-3, 5 binary-search steps, 1000 iterations, confidence 0, abort early when an
example's loss stops decreasing (checked every tenth of the iterations).

f for `cw_l2` is the classic margin on the pre-activation outputs z, with the
class's target representation t as the label vector, as cleverhans computes it:
  real = <t, z>,  other = max_j ((1 - t_j) z_j - 10000 t_j),
  f = max(other - real + confidence, 0)   (targeted; untargeted swaps them).
With one-hot targets this is the textbook attack. With codewords it is the
objective cleverhans uses when handed codeword labels, which is how the
paper's "CWL2 against R:TANH:MSE" rows were made: f rarely reaches 0 then
(other is ~10000 max |t_j|), and untargeted its gradient is zero at x.

f for `cw_l2_distance` uses the distances D of the outputs to the targets:
  f = max(D(o, t_y) - min_{i != y} D(o, t_i) + confidence, 0)   (targeted),
  f = max(min_{i != y} D(o, t_i) - D(o, t_y) + confidence, 0)   (untargeted),
which is zero exactly when the decoding gives (or leaves) the class.

The initial c is traced, so a sweep over c compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from mlrobust import heads
from mlrobust.attacks import core

MARGINS = ('logits', 'distance')


def _f(clf, x_new, y, *, margin, targeted, confidence):
  """Per-example f [B] (zero iff the attack goal holds with the margin)."""
  if margin == 'logits':
    z = clf.logits(x_new)
    t = clf.targets[y]
    real = jnp.sum(t * z, axis=1)
    other = jnp.max((1.0 - t) * z - 10000.0 * t, axis=1)
    gap = other - real if targeted else real - other
  else:
    d = heads.distances(clf.outputs(x_new), clf.targets)
    own = jnp.take_along_axis(d, y[:, None], axis=1)[:, 0]
    rest = jnp.min(jnp.where(jax.nn.one_hot(y, d.shape[1], dtype=bool),
                             jnp.inf, d), axis=1)
    gap = own - rest if targeted else rest - own
  return jnp.maximum(gap + confidence, 0.0)


@functools.partial(jax.jit, static_argnames=(
    'margin', 'targeted', 'binary_search_steps', 'max_iterations',
    'abort_early', 'cleverhans'))
def _cw(clf, x, y, rng, initial_const, confidence, learning_rate, *, margin,
        targeted, binary_search_steps, max_iterations, abort_early,
        cleverhans=False):
  del rng
  b = x.shape[0]
  axes = tuple(range(1, x.ndim))
  w0 = jnp.arctanh((2.0 * x - 1.0) * 0.999999)
  tx = optax.adam(learning_rate)
  check_every = max(max_iterations // 10, 1)

  def objective(modifier, const):
    x_new = (jnp.tanh(w0 + modifier) + 1.0) / 2.0
    l2 = jnp.sum(jnp.square(x_new - x), axis=axes)
    f = _f(clf, x_new, y, margin=margin, targeted=targeted,
           confidence=confidence)
    per_example = l2 + const * f
    # The sum's gradient is each example's own gradient.
    return jnp.sum(per_example), (per_example, x_new, l2)

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def search_round(const, best_l2, best_adv):
    # Every example has its own loss, abort-early test and stopping point,
    # as if it were attacked alone (cleverhans runs CW one image at a time):
    # a stopped example's modifier and Adam moments are frozen.

    def inner(state):
      i, modifier, opt_state, prev, done, best_l2, best_adv, found = state
      (_, (loss, x_new, l2)), g = grad_fn(modifier, const)
      # Kept by the decoding (cleverhans keeps iterates by its `compare`, not
      # by f: f of the logit margin never reaches 0 for a codeword label).
      if cleverhans:
        success = core.cleverhans_success(clf, x_new, y, targeted, confidence)
      else:
        success = core.is_success(clf.predict(x_new), y, targeted)
      success = success & ~done
      best_l2, best_adv = core.keep_closest(success, x_new, l2, best_l2,
                                            best_adv)
      updates, new_opt_state = tx.update(g, opt_state)
      new_modifier = optax.apply_updates(modifier, updates)
      modifier, opt_state = jax.tree.map(
          lambda new, old: jnp.where(
              done.reshape((b,) + (1,) * (old.ndim - 1)), old, new)
          if old.ndim and old.shape[0] == b else new,
          (new_modifier, new_opt_state), (modifier, opt_state))
      check = (i % check_every) == 0
      stalled = check & (loss > prev * 0.9999)
      done = done | (abort_early & stalled)
      prev = jnp.where(check, loss, prev)
      return (i + 1, modifier, opt_state, prev, done, best_l2, best_adv,
              found | success)

    def cond(state):
      return (state[0] < max_iterations) & ~jnp.all(state[4])

    modifier = jnp.zeros_like(x)
    state = (jnp.array(0), modifier, tx.init(modifier),
             jnp.full((b,), jnp.inf, x.dtype), jnp.zeros((b,), bool),
             best_l2, best_adv, jnp.zeros((b,), bool))
    *_, best_l2, best_adv, found = jax.lax.while_loop(cond, inner, state)
    return found, best_l2, best_adv

  best_adv = core.search_over_c(search_round, initial_const, x,
                                binary_search_steps)
  best_adv = jax.lax.stop_gradient(best_adv)
  return best_adv, clf.predict(best_adv)


def _attack(clf, x, y, *, margin, targeted, rng, initial_const, confidence,
            learning_rate, binary_search_steps, max_iterations, abort_early,
            semantics, batch_size):
  core.check_values(initial_const=initial_const, confidence=confidence,
                    learning_rate=learning_rate,
                    binary_search_steps=binary_search_steps,
                    max_iterations=max_iterations, semantics=semantics)
  x, y = core.check_inputs(clf, x, y, targeted=targeted)
  fn = functools.partial(_cw, margin=margin, targeted=targeted,
                         binary_search_steps=binary_search_steps,
                         max_iterations=max_iterations,
                         abort_early=bool(abort_early),
                         cleverhans=semantics == 'cleverhans')
  return core.run_batched(
      lambda clf, x, y, key: fn(clf, x, y, key, initial_const, confidence,
                                learning_rate),
      clf, x, y, batch_size=batch_size, targeted=targeted,
      rng=core.default_rng(rng))


def cw_l2(clf, x, y, *, targeted=False, rng=None, initial_const=0.01,
          confidence=0.0, learning_rate=5e-3, binary_search_steps=5,
          max_iterations=1000, abort_early=True, semantics='decoding',
          batch_size=None) -> core.AttackResult:
  """Carlini-Wagner L2 with the classic margin on pre-activations (see module).

  Args:
    clf: a `mlrobust.classifier.Classifier`.
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] true labels (untargeted) or target classes (targeted).
    targeted: reach y instead of leaving it.
    rng: unused (deterministic).
    initial_const: first c of the binary search (> 0; the paper sweeps
      0.01 ... 10).
    confidence: margin kappa >= 0 required beyond the boundary.
    learning_rate: Adam's step size.
    binary_search_steps: rounds of the search over c.
    max_iterations: Adam steps per round.
    abort_early: stop an example's round when its loss stops decreasing.
    semantics: how iterates are kept: 'decoding' (the default: the generic
      decoding reaches the goal) or 'cleverhans' (cleverhans v2.1's
      `compare`: argmax of the logits against the argmax of the target's
      representation; the same for one-hot heads). The returned success is
      always the decoding's.
    batch_size: examples per compiled call (None: all at once).
  Returns:
    An AttackResult; a failed example is returned unchanged (x).
  """
  return _attack(clf, x, y, margin='logits', targeted=targeted, rng=rng,
                 initial_const=initial_const, confidence=confidence,
                 learning_rate=learning_rate,
                 binary_search_steps=binary_search_steps,
                 max_iterations=max_iterations, abort_early=abort_early,
                 semantics=semantics, batch_size=batch_size)


def cw_l2_distance(clf, x, y, *, targeted=False, rng=None, initial_const=0.01,
                   confidence=0.0, learning_rate=5e-3, binary_search_steps=5,
                   max_iterations=1000, abort_early=True,
                   semantics='decoding',
                   batch_size=None) -> core.AttackResult:
  """Saito & Roy's CW-L2 with a margin of distances to the targets.

  Arguments as `cw_l2`.
  """
  return _attack(clf, x, y, margin='distance', targeted=targeted, rng=rng,
                 initial_const=initial_const, confidence=confidence,
                 learning_rate=learning_rate,
                 binary_search_steps=binary_search_steps,
                 max_iterations=max_iterations, abort_early=abort_early,
                 semantics=semantics, batch_size=batch_size)
