"""The L-BFGS attack (Szegedy et al., 2014), targeted only.

Minimises, per example, c * loss(x', target) + ||x' - x||_2^2 over the box
[0, 1], with a binary search over c (5 steps) and up to 1000 L-BFGS iterations
per step, keeping the closest successful x'. As in cleverhans v2.1 (which the
paper used), c weighs the classification loss, so larger c means more
aggressive attacks (success rises with c in the paper's Table 5). Each example
is its own L-BFGS problem (cleverhans attacks one image at a time), vmapped
over the batch, so a result never depends on the other images of a batch.
cleverhans calls scipy's L-BFGS-B; here it is optax's L-BFGS with a zoom line
search, projected onto the box after every step, so that the attack is one
compiled program. The loss defaults to the model's training loss against the
target's representation (Saito & Roy Section 4.3.2).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from mlrobust.attacks import core


@functools.partial(jax.jit, static_argnames=(
    'loss', 'binary_search_steps', 'max_iterations', 'cleverhans'))
def _lbfgs(clf, x, y, rng, initial_const, *, loss, binary_search_steps,
           max_iterations, cleverhans=False):
  """Each example is its own L-BFGS problem (vmapped), as if attacked alone."""
  del rng
  solve = functools.partial(_solve_one, clf, initial_const=initial_const,
                            loss=loss, binary_search_steps=binary_search_steps,
                            max_iterations=max_iterations,
                            cleverhans=cleverhans)
  best_adv = jax.vmap(lambda xi, yi: solve(xi[None], yi[None])[0])(x, y)
  best_adv = jax.lax.stop_gradient(best_adv)
  return best_adv, clf.predict(best_adv)


def _solve_one(clf, x, y, *, initial_const, loss, binary_search_steps,
               max_iterations, cleverhans):
  """The attack on one example (x [1, H, W, C]): its own line searches and
  Hessian approximation."""
  axes = tuple(range(1, x.ndim))
  opt = optax.lbfgs()

  def search_round(const, best_l2, best_adv):

    def objective(x_new):
      l2 = jnp.sum(jnp.square(x_new - x), axis=axes)
      return jnp.sum(const * core.attack_loss(clf, x_new, y, loss) + l2)

    def step(_, state):
      x_new, opt_state = state
      value, grad = jax.value_and_grad(objective)(x_new)
      updates, opt_state = opt.update(grad, opt_state, x_new, value=value,
                                      grad=grad, value_fn=objective)
      x_new = jnp.clip(optax.apply_updates(x_new, updates), 0.0, 1.0)
      return x_new, opt_state

    x_new, _ = jax.lax.fori_loop(0, max_iterations, step, (x, opt.init(x)))
    if cleverhans:
      success = core.cleverhans_success(clf, x_new, y, True)
    else:
      success = clf.predict(x_new) == y
    l2 = jnp.sum(jnp.square(x_new - x), axis=axes)
    best_l2, best_adv = core.keep_closest(success, x_new, l2, best_l2,
                                          best_adv)
    return success, best_l2, best_adv

  return core.search_over_c(search_round, initial_const, x,
                            binary_search_steps)


def lbfgs(clf, x, y, *, targeted=True, rng=None, initial_const=0.01,
          binary_search_steps=5, max_iterations=1000, loss='train',
          semantics='decoding', batch_size=None) -> core.AttackResult:
  """Targeted L-BFGS attack (see module docstring).

  Args:
    clf: a `mlrobust.classifier.Classifier`.
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] target classes.
    targeted: must be True (L-BFGS is targeted only).
    rng: unused (deterministic).
    initial_const: first c of the binary search (> 0; swept 0.01 ... 10).
    binary_search_steps: rounds of the search over c.
    max_iterations: L-BFGS iterations per round.
    loss: attack loss, one of core.ATTACK_LOSSES.
    semantics: 'decoding' (the default: a round succeeds when the decoding
      gives the target) or 'cleverhans' (cleverhans v2.1's check: argmax of
      the logits equals the argmax of the target's representation). The
      returned success is always the decoding's.
    batch_size: examples per compiled call (None: all at once).
  Returns:
    An AttackResult; a failed example is returned unchanged (x).
  """
  if not targeted:
    raise ValueError('lbfgs is targeted only; use targeted=True with target '
                     'classes as y')
  core.check_values(initial_const=initial_const,
                    binary_search_steps=binary_search_steps,
                    max_iterations=max_iterations, loss=loss,
                    semantics=semantics)
  x, y = core.check_inputs(clf, x, y, targeted=True)
  fn = functools.partial(_lbfgs, loss=loss,
                         binary_search_steps=binary_search_steps,
                         max_iterations=max_iterations,
                         cleverhans=semantics == 'cleverhans')
  return core.run_batched(
      lambda clf, x, y, key: fn(clf, x, y, key, initial_const), clf, x, y,
      batch_size=batch_size, targeted=True, rng=core.default_rng(rng))
