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
which is zero exactly when the decoding gives (or leaves) the class. The
paper (Section 3.3) writes D between "the logits" z and the targets; D is
taken on the head's outputs o (softmax probabilities, tanh values) by
default, where the decoding measures it. `space='logits'` takes the paper's
words literally, D(z, t) on the pre-activations. On a one-hot head that is
the logit margin in disguise (||z - e_i||^2 = ||z||^2 - 2 z_i + 1, so f = 0
exactly when argmax z is the class) and does not saturate with the softmax;
on a codeword head D(z, t) is not what the decoding measures, and iterates
are still kept only when the decoding reaches the goal.

The initial c is traced, so a sweep over c compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlrobust import heads
from mlrobust.attacks import core

MARGINS = ('logits', 'distance', 'logit_distance')
# How the attack loops: None picks host-driven chunks of unrolled iterations
# on the CPU and one compiled while-loop program elsewhere; True or False
# forces one. Both compute the same (tested).
CHUNKED = None
# The smallest batch finished examples are dropped to (chunks only).
MIN_BUCKET = 8


def _f(clf, z, y, *, margin, targeted, confidence):
  """Per-example f [B] (zero iff the attack goal holds with the margin), from
  the pre-activations z [B, d] of the candidate images."""
  if margin == 'logits':
    t = clf.targets[y]
    real = jnp.sum(t * z, axis=1)
    other = jnp.max((1.0 - t) * z - 10000.0 * t, axis=1)
    gap = other - real if targeted else real - other
  else:
    o = z if margin == 'logit_distance' else heads.activate(clf.activation, z)
    d = heads.distances(o, clf.targets)
    own = jnp.take_along_axis(d, y[:, None], axis=1)[:, 0]
    rest = jnp.min(jnp.where(jax.nn.one_hot(y, d.shape[1], dtype=bool),
                             jnp.inf, d), axis=1)
    gap = own - rest if targeted else rest - own
  return jnp.maximum(gap + confidence, 0.0)


_STATIC = ('margin', 'targeted', 'max_iterations', 'abort_early', 'cleverhans')


def _start(x):
  """w0 with x = (tanh(w0) + 1) / 2 (slightly inside the box)."""
  return jnp.arctanh((2.0 * x - 1.0) * 0.999999)


def _round_state(x, best_l2, best_adv, learning_rate):
  """The state of one search round: every example starts at x."""
  b = x.shape[0]
  modifier = jnp.zeros_like(x)
  return {'i': jnp.array(0), 'modifier': modifier,
          'opt_state': optax.adam(learning_rate).init(modifier),
          'prev': jnp.full((b,), jnp.inf, x.dtype),
          'done': jnp.zeros((b,), bool), 'best_l2': best_l2,
          'best_adv': best_adv, 'found': jnp.zeros((b,), bool)}


def _step(clf, x, w0, y, const, state, confidence, learning_rate, *, margin,
          targeted, max_iterations, abort_early, cleverhans):
  """One Adam iteration of a search round for the examples still running.

  Every example has its own loss, abort-early test and stopping point, as if
  it were attacked alone (cleverhans runs CW one image at a time): a stopped
  example's modifier and Adam moments are frozen. Past `max_iterations` the
  step changes nothing, so chunks of steps may overrun the round's end.
  """
  b = x.shape[0]
  axes = tuple(range(1, x.ndim))
  tx = optax.adam(learning_rate)
  check_every = max(max_iterations // 10, 1)
  i, done = state['i'], state['done']
  live = i < max_iterations
  frozen = done | ~live

  def objective(modifier):
    x_new = (jnp.tanh(w0 + modifier) + 1.0) / 2.0
    l2 = jnp.sum(jnp.square(x_new - x), axis=axes)
    z = clf.logits(x_new)
    f = _f(clf, z, y, margin=margin, targeted=targeted, confidence=confidence)
    per_example = l2 + const * f
    # The sum's gradient is each example's own gradient.
    return jnp.sum(per_example), (per_example, x_new, l2, z)

  (_, (loss, x_new, l2, z)), g = jax.value_and_grad(
      objective, has_aux=True)(state['modifier'])
  # Kept by the decoding of the iterate's own forward pass (cleverhans keeps
  # iterates by its `compare`, not by f: f of the logit margin never reaches
  # 0 for a codeword label).
  if cleverhans:
    success = core.cleverhans_compare(z, clf.targets, y, targeted, confidence)
  else:
    prediction = heads.predict(heads.activate(clf.activation, z), clf.targets)
    success = core.is_success(prediction, y, targeted)
  success = success & ~frozen
  best_l2, best_adv = core.keep_closest(success, x_new, l2, state['best_l2'],
                                        state['best_adv'])
  updates, new_opt_state = tx.update(g, state['opt_state'])
  new_modifier = optax.apply_updates(state['modifier'], updates)
  modifier, opt_state = jax.tree.map(
      lambda new, old: jnp.where(
          frozen.reshape((b,) + (1,) * (old.ndim - 1)), old, new)
      if old.ndim else jnp.where(live, new, old),
      (new_modifier, new_opt_state), (state['modifier'], state['opt_state']))
  check = live & ((i % check_every) == 0)
  stalled = check & (loss > state['prev'] * 0.9999)
  return {'i': jnp.where(live, i + 1, i), 'modifier': modifier,
          'opt_state': opt_state,
          'prev': jnp.where(check, loss, state['prev']),
          'done': done | (abort_early & stalled), 'best_l2': best_l2,
          'best_adv': best_adv, 'found': state['found'] | success}


@functools.partial(jax.jit, static_argnames=(
    'margin', 'targeted', 'binary_search_steps', 'max_iterations',
    'abort_early', 'cleverhans'))
def _cw(clf, x, y, rng, initial_const, confidence, learning_rate, *, margin,
        targeted, binary_search_steps, max_iterations, abort_early,
        cleverhans=False):
  """The whole attack as one program (a while loop per search round)."""
  del rng
  w0 = _start(x)
  step = functools.partial(
      _step, clf, x, w0, y, confidence=confidence,
      learning_rate=learning_rate, margin=margin, targeted=targeted,
      max_iterations=max_iterations, abort_early=abort_early,
      cleverhans=cleverhans)

  def search_round(const, best_l2, best_adv):
    state = _round_state(x, best_l2, best_adv, learning_rate)
    state = jax.lax.while_loop(
        lambda s: (s['i'] < max_iterations) & ~jnp.all(s['done']),
        lambda s: step(const, s), state)
    return state['found'], state['best_l2'], state['best_adv']

  best_adv = core.search_over_c(search_round, initial_const, x,
                                binary_search_steps)
  best_adv = jax.lax.stop_gradient(best_adv)
  return best_adv, clf.predict(best_adv)


@functools.partial(jax.jit, static_argnames=_STATIC + ('steps',))
def _chunk(clf, x, w0, y, const, state, confidence, learning_rate, *, margin,
           targeted, max_iterations, abort_early, cleverhans, steps):
  """`steps` iterations of `_step`, unrolled (straight-line code)."""
  for _ in range(steps):
    state = _step(clf, x, w0, y, const, state, confidence, learning_rate,
                  margin=margin, targeted=targeted,
                  max_iterations=max_iterations, abort_early=abort_early,
                  cleverhans=cleverhans)
  return state


_round_state_jit = jax.jit(_round_state)
_start_jit = jax.jit(_start)
_predict = jax.jit(lambda clf, x: clf.predict(x))
_next_const = jax.jit(core.next_const)


def chunk_size(max_iterations: int) -> int:
  """Iterations per unrolled chunk: the abort-early period, at most 25."""
  period = max(max_iterations // 10, 1)
  for k in range(min(period, 25), 0, -1):
    if period % k == 0:
      return k
  return 1


def _cw_chunked(clf, x, y, rng, initial_const, confidence, learning_rate, *,
                margin, targeted, binary_search_steps, max_iterations,
                abort_early, cleverhans=False, min_bucket=None):
  """The same attack driven from the host in chunks of unrolled iterations.

  XLA:CPU runs convolutions ~4x slower inside a while loop than in
  straight-line code (BENCHMARKS.md), so on the CPU each search round runs
  as jitted chunks of `chunk_size` unrolled iterations. Between chunks the
  host drops the examples that have stopped (abort early): the running ones
  are gathered into a smaller batch of a power-of-two size (at least
  `min_bucket`, padded by repeating a running example), so finished examples
  stop costing, with at most log2(batch / min_bucket) + 1 compiled chunk
  shapes. Each example's computation is that of `_cw` (tested equal).
  """
  del rng
  min_bucket = MIN_BUCKET if min_bucket is None else min_bucket
  b = x.shape[0]
  w0 = _start_jit(x)
  const = jnp.full((b,), initial_const, x.dtype)
  lower = jnp.zeros((b,), x.dtype)
  upper = jnp.full((b,), 1e10, x.dtype)
  best_l2, best_adv = jnp.full((b,), jnp.inf, x.dtype), x
  chunk = functools.partial(
      _chunk, confidence=confidence, learning_rate=learning_rate,
      margin=margin, targeted=targeted, max_iterations=max_iterations,
      abort_early=abort_early, cleverhans=cleverhans,
      steps=chunk_size(max_iterations))
  for _ in range(binary_search_steps):
    full = _round_state_jit(x, best_l2, best_adv, learning_rate)
    # The running batch: rows[:n] are examples, the rest repeat rows[0].
    rows, n = np.arange(b), b
    state = full
    sub = (x, w0, y, const)
    while True:
      state = chunk(clf, *sub, state)
      i, done = jax.device_get((state['i'], state['done']))
      running = ~done[:n]
      if i >= max_iterations or not running.any():
        break
      size = max(min_bucket, 1 << int(np.ceil(np.log2(running.sum()))))
      if size < len(rows):  # Compact: only the running examples go on.
        full = _scatter(full, state, rows, n)
        keep = rows[:n][running]
        rows, n = np.concatenate([keep, np.full(size - len(keep),
                                                keep[0])]), len(keep)
        state = _gather(full, rows, i)
        sub = tuple(a[rows] for a in (x, w0, y, const))
    full = _scatter(full, state, rows, n)
    found = full['found']
    best_l2, best_adv = full['best_l2'], full['best_adv']
    const, lower, upper = _next_const(found, const, lower, upper)
  return best_adv, _predict(clf, best_adv)


def _gather(full, rows, i):
  """The state of the examples `rows` (per-example leaves) at iteration i."""
  return jax.tree.map(lambda a: a[rows] if a.ndim else a,
                      {**full, 'i': jnp.asarray(i)})


def _scatter(full, state, rows, n):
  """Writes the running batch's examples (rows[:n]) back into `full`."""
  return jax.tree.map(lambda f, s: f.at[rows[:n]].set(s[:n]) if f.ndim
                      else s, full, state)


def _use_chunks() -> bool:
  return jax.default_backend() == 'cpu' if CHUNKED is None else CHUNKED


def _attack(clf, x, y, *, margin, targeted, rng, initial_const, confidence,
            learning_rate, binary_search_steps, max_iterations, abort_early,
            semantics, batch_size):
  core.check_values(initial_const=initial_const, confidence=confidence,
                    learning_rate=learning_rate,
                    binary_search_steps=binary_search_steps,
                    max_iterations=max_iterations, semantics=semantics)
  x, y = core.check_inputs(clf, x, y, targeted=targeted)
  fn = functools.partial(_cw_chunked if _use_chunks() else _cw,
                         margin=margin, targeted=targeted,
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
                   semantics='decoding', space='outputs',
                   batch_size=None) -> core.AttackResult:
  """Saito & Roy's CW-L2 with a margin of distances to the targets.

  Arguments as `cw_l2`, and:
    space: where the distances D are measured: 'outputs' (the default: the
      head's outputs, as the decoding) or 'logits' (the pre-activations, the
      paper's wording; see the module docstring).
  """
  core.check_values(space=space)
  margin = 'distance' if space == 'outputs' else 'logit_distance'
  return _attack(clf, x, y, margin=margin, targeted=targeted, rng=rng,
                 initial_const=initial_const, confidence=confidence,
                 learning_rate=learning_rate,
                 binary_search_steps=binary_search_steps,
                 max_iterations=max_iterations, abort_early=abort_early,
                 semantics=semantics, batch_size=batch_size)
