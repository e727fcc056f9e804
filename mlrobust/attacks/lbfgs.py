"""The L-BFGS attack (Szegedy et al., 2014), targeted only.

Minimises, per example, c * loss(x', target) + ||x' - x||_2^2 over the box
[0, 1], with a binary search over c (5 steps) and up to 1000 L-BFGS iterations
per step (an example stops early when its projected gradient vanishes),
keeping the closest successful x'. As in cleverhans v2.1 (which the
paper used), c weighs the classification loss, so larger c means more
aggressive attacks (success rises with c in the paper's Table 5). Each example
is its own L-BFGS problem (cleverhans attacks one image at a time), with its
own Hessian approximation, line search and stopping point, so a result never
depends on the other images of a batch.
cleverhans calls scipy's L-BFGS-B; here it is optax's L-BFGS direction on
the projected gradient (pixels at a bound that the gradient pushes outwards
are held), with a backtracking line search along the projected path, batched
with per-example state and compiled; a test holds it against scipy's
L-BFGS-B, another against optax's own `lbfgs` run on each example alone.
The loss defaults to the model's training loss against the target's
representation (Saito & Roy Section 4.3.2).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from mlrobust.attacks import core

# scipy's L-BFGS-B projected-gradient tolerance (its default, as cleverhans
# v2.1 called it): an example whose projected gradient is this small stops.
# scipy's other rule (relative decrease below factr * eps) is not used: in
# float32 it fires on the first step that rounds to no change, measured to
# cost success (0.875 vs 0.969 on 32 MNIST images at 100 iterations).
PGTOL = 1e-5
# The line search: Armijo backtracking from the unit step along the projected
# path, halving, at most this many halvings (optax's
# scale_by_backtracking_linesearch with these settings, evaluated per
# example).
MAX_BACKTRACKING_STEPS = 20
DECREASE_FACTOR = 0.5
INCREASE_FACTOR = 1e6
SLOPE_RTOL = 1e-4
# Halvings tried in straight-line code before the line search's while loop.
UNROLLED_HALVINGS = 3
# How the attack loops: None picks host-driven chunks of unrolled iterations
# on the CPU and one compiled while-loop program elsewhere; True or False
# forces one. Both compute the same (tested).
CHUNKED = None
# Iterations per unrolled chunk (at most; a divisor of max_iterations).
CHUNK = 10

_STATIC = ('loss', 'max_iterations')


def _projected(grad, x):
  """The gradient with its out-of-box components at the bounds zeroed."""
  return jnp.where(x <= 0.0, jnp.minimum(grad, 0.0),
                   jnp.where(x >= 1.0, jnp.maximum(grad, 0.0), grad))


def _per_example(a, b):
  """a reshaped to broadcast against the batch b [B, ...]."""
  return a.reshape((a.shape[0],) + (1,) * (b.ndim - 1))


def _objective(clf, x0, y, const, loss):
  """x' -> (per-example objective [B], its per-example gradient)."""
  axes = tuple(range(1, x0.ndim))

  def per_example(x_new):
    l2 = jnp.sum(jnp.square(x_new - x0), axis=axes)
    return const * core.attack_loss(clf, x_new, y, loss) + l2

  def value_and_grad(x_new):
    # The sum's gradient is each example's own gradient.
    (_, value), grad = jax.value_and_grad(
        lambda v: (jnp.sum(per_example(v)), per_example(v)),
        has_aux=True)(x_new)
    return value, grad

  return per_example, value_and_grad


def _direction_tx():
  """optax's L-BFGS direction (memory 10, scaled initial preconditioner)."""
  return optax.chain(optax.scale_by_lbfgs(), optax.scale(-1.0))


def _round_state(clf, x0, y, const, best_l2, best_adv, *, loss):
  """The state of one search round: every example starts at x0."""
  _, value_and_grad = _objective(clf, x0, y, const, loss)
  value, grad = value_and_grad(x0)
  b = x0.shape[0]
  return {'i': jnp.array(0), 'x': x0, 'value': value, 'grad': grad,
          'direction': jax.vmap(_direction_tx().init)(x0),
          'lr': jnp.ones((b,), x0.dtype), 'done': jnp.zeros((b,), bool),
          'best_l2': best_l2, 'best_adv': best_adv}


def _decrease_error(lr, slope, value, new_value):
  """optax's backtracking criterion: > 0 rejects the step lr."""
  error = new_value - value - lr * SLOPE_RTOL * slope
  return jnp.maximum(jnp.where(jnp.isnan(error), jnp.inf, error), 0.0)


def _bucket(b):
  """The batch the backtracking examples are gathered into (static), or
  None to backtrack on the whole batch: a quarter of it, for batches of at
  least 32 (on a trained model 10-20% of the examples backtrack at an
  iteration, mostly by one halving)."""
  return b // 4 if b >= 32 else None


def _line_search(clf, x0, y, const, x, d, slope, value, lr, error, searching,
                 *, loss):
  """Armijo backtracking (halving, values only) for the examples
  `searching`, whose unit step `lr` was rejected with `error`; returns the
  accepted point, its value and gradient, and the step."""
  per_example, value_and_grad = _objective(clf, x0, y, const, loss)
  at = lambda lr: jnp.clip(x + _per_example(lr, x) * d, 0.0, 1.0)

  def cond(s):
    return (s[0] <= MAX_BACKTRACKING_STEPS) & jnp.any(s[3])

  def body(s):
    k, lr, error, searching = s
    lr = jnp.where(searching, DECREASE_FACTOR * lr, lr)
    error = jnp.where(searching, _decrease_error(
        lr, slope, value, per_example(at(lr))), error)
    return k + 1, lr, error, searching & (error > 0.0)

  # The first halvings in straight-line code (XLA:CPU runs the network
  # ~4x slower inside a while loop); the loop only for the rare rest.
  state = (1, lr, error, searching)
  for _ in range(UNROLLED_HALVINGS):
    state = jax.lax.cond(jnp.any(state[3]), body, lambda s: s, state)
  _, lr, error, _ = jax.lax.while_loop(cond, body, state)
  # optax's rule: a step whose values were never finite is not taken.
  lr = jnp.where(jnp.isinf(error), 0.0, lr)
  x_new = at(lr)
  value_new, grad_new = value_and_grad(x_new)
  return x_new, value_new, grad_new, lr


def _step(clf, x0, y, const, state, *, loss, max_iterations):
  """One L-BFGS iteration for the examples still running.

  Each example has its own Hessian approximation, line search and stopping
  point, as if it were attacked alone (cleverhans runs it one image at a
  time). The line search's first trial, the unit step, is evaluated with its
  gradient, so an accepted unit step (the usual case on a trained model)
  costs one value-and-gradient; the forward-only backtracking runs only when
  some example rejects it, and then on those examples only, gathered into a
  smaller batch when they are few (`_bucket`). Past `max_iterations` the
  step changes nothing, so chunks of steps may overrun the round's end.
  """
  _, value_and_grad = _objective(clf, x0, y, const, loss)
  x, value, grad = state['x'], state['value'], state['grad']
  active = ~state['done'] & (state['i'] < max_iterations)
  axes = tuple(range(1, x.ndim))
  # Pixels at a bound whose gradient points out of the box stay there; the
  # line search runs on the projected path.
  g = _projected(grad, x)
  d, direction = jax.vmap(_direction_tx().update)(g, state['direction'], x)
  slope = jnp.sum(d * g, axis=axes)
  lr0 = jnp.minimum(INCREASE_FACTOR * state['lr'], 1.0)
  at = lambda lr: jnp.clip(x + _per_example(lr, x) * d, 0.0, 1.0)
  trial = at(lr0)
  value_t, grad_t = value_and_grad(trial)
  error_t = _decrease_error(lr0, slope, value, value_t)
  backtrack = active & (error_t > 0.0)
  unit = (trial, value_t, grad_t, lr0)
  args = (x0, y, const, x, d, slope, value, lr0, error_t)

  def search_all(_):
    found = _line_search(clf, *args, backtrack, loss=loss)
    return jax.tree.map(
        lambda new, old: jnp.where(_per_example(backtrack, new), new, old),
        found, unit)

  def search_some(_):
    # The few examples that backtrack, gathered into a batch of `bucket`
    # (its padding rows are dropped when scattering back).
    b = x.shape[0]
    rows = jnp.nonzero(backtrack, size=bucket, fill_value=b)[0]
    safe = jnp.minimum(rows, b - 1)
    found = _line_search(clf, *(a[safe] for a in args),
                         backtrack[safe] & (rows < b), loss=loss)
    return jax.tree.map(lambda old, new: old.at[rows].set(new, mode='drop'),
                        unit, found)

  count = jnp.sum(backtrack)
  bucket = _bucket(x.shape[0])
  if bucket is None:
    branches, which = [lambda _: unit, search_all], (count > 0).astype(int)
  else:
    branches = [lambda _: unit, search_some, search_all]
    which = jnp.where(count == 0, 0, jnp.where(count <= bucket, 1, 2))
  x_new, value_new, grad_new, lr = jax.lax.switch(which, branches, None)
  converged = jnp.max(jnp.abs(_projected(grad_new, x_new)),
                      axis=axes) <= PGTOL
  # A projected step that raises the objective is not taken.
  keep = active & (value_new <= value)
  take = lambda new, old, mask: jnp.where(_per_example(mask, new), new, old)
  return {
      'i': jnp.where(state['i'] < max_iterations, state['i'] + 1,
                     state['i']),
      'x': take(x_new, x, keep), 'value': take(value_new, value, keep),
      'grad': take(grad_new, grad, keep),
      'direction': jax.tree.map(lambda new, old: take(new, old, active),
                                direction, state['direction']),
      'lr': take(lr, state['lr'], active),
      'done': state['done'] | (active & converged),
      'best_l2': state['best_l2'], 'best_adv': state['best_adv']}


def _finish_round(clf, x0, y, state, *, cleverhans):
  """(found, best_l2, best_adv) after a round: its solution, if it succeeds
  and is closer than the best so far."""
  x_new = state['x']
  if cleverhans:
    success = core.cleverhans_success(clf, x_new, y, True)
  else:
    success = clf.predict(x_new) == y
  l2 = jnp.sum(jnp.square(x_new - x0), axis=tuple(range(1, x0.ndim)))
  best_l2, best_adv = core.keep_closest(success, x_new, l2, state['best_l2'],
                                        state['best_adv'])
  return success, best_l2, best_adv


@functools.partial(jax.jit, static_argnames=(
    'loss', 'binary_search_steps', 'max_iterations', 'cleverhans'))
def _lbfgs(clf, x, y, rng, initial_const, *, loss, binary_search_steps,
           max_iterations, cleverhans=False):
  """The whole attack as one program (a while loop per search round)."""
  del rng

  def search_round(const, best_l2, best_adv):
    state = _round_state(clf, x, y, const, best_l2, best_adv, loss=loss)
    state = jax.lax.while_loop(
        lambda s: (s['i'] < max_iterations) & ~jnp.all(s['done']),
        lambda s: _step(clf, x, y, const, s, loss=loss,
                        max_iterations=max_iterations), state)
    return _finish_round(clf, x, y, state, cleverhans=cleverhans)

  best_adv = core.search_over_c(search_round, initial_const, x,
                                binary_search_steps)
  best_adv = jax.lax.stop_gradient(best_adv)
  return best_adv, clf.predict(best_adv)


@functools.partial(jax.jit, static_argnames=_STATIC + ('steps',))
def _chunk(clf, x, y, const, state, *, loss, max_iterations, steps):
  """`steps` iterations of `_step`, unrolled (straight-line code)."""
  for _ in range(steps):
    state = _step(clf, x, y, const, state, loss=loss,
                  max_iterations=max_iterations)
  return state


_round_state_jit = jax.jit(_round_state, static_argnames=('loss',))
_finish_round_jit = jax.jit(_finish_round, static_argnames=('cleverhans',))
_predict = jax.jit(lambda clf, x: clf.predict(x))


_next_const = jax.jit(core.next_const)


def chunk_size(max_iterations: int) -> int:
  """Iterations per unrolled chunk: the largest divisor of max_iterations
  that is at most CHUNK."""
  for k in range(min(CHUNK, max_iterations), 0, -1):
    if max_iterations % k == 0:
      return k
  return 1


def _lbfgs_chunked(clf, x, y, rng, initial_const, *, loss, binary_search_steps,
                   max_iterations, cleverhans=False):
  """The same attack driven from the host in chunks of unrolled iterations.

  XLA:CPU runs convolutions ~4x slower inside a while loop than in
  straight-line code (BENCHMARKS.md), so on the CPU each search round runs
  as jitted chunks of `chunk_size` unrolled iterations, and stops once every
  example has converged. Each example's computation is that of `_lbfgs`
  (tested equal).
  """
  del rng
  b = x.shape[0]
  const = jnp.full((b,), initial_const, x.dtype)
  lower = jnp.zeros((b,), x.dtype)
  upper = jnp.full((b,), 1e10, x.dtype)
  best_l2, best_adv = jnp.full((b,), jnp.inf, x.dtype), x
  chunk = functools.partial(_chunk, loss=loss, max_iterations=max_iterations,
                            steps=chunk_size(max_iterations))
  for _ in range(binary_search_steps):
    state = _round_state_jit(clf, x, y, const, best_l2, best_adv, loss=loss)
    while True:
      state = chunk(clf, x, y, const, state)
      i, done = jax.device_get((state['i'], state['done']))
      if i >= max_iterations or done.all():
        break
    found, best_l2, best_adv = _finish_round_jit(clf, x, y, state,
                                                 cleverhans=cleverhans)
    const, lower, upper = _next_const(found, const, lower, upper)
  return best_adv, _predict(clf, best_adv)


def _use_chunks() -> bool:
  return jax.default_backend() == 'cpu' if CHUNKED is None else CHUNKED


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
  fn = functools.partial(_lbfgs_chunked if _use_chunks() else _lbfgs,
                         loss=loss,
                         binary_search_steps=binary_search_steps,
                         max_iterations=max_iterations,
                         cleverhans=semantics == 'cleverhans')
  return core.run_batched(
      lambda clf, x, y, key: fn(clf, x, y, key, initial_const), clf, x, y,
      batch_size=batch_size, targeted=True, rng=core.default_rng(rng))
