"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, 2020, "Square
Attack: a query-efficient black-box adversarial attack via random search"),
Linf, untargeted.

Score-based: it reads only the class scores of the generic decoding
(`clf.scores`), never a gradient, so a masked gradient does not stop it. Per
example:
  start:  x + eps * s, one random sign s per (column, channel), constant
          along the column (vertical stripes), clipped to [0, 1];
  loss:   the margin score_y - max_{j != y} score_j;
  step:   a square window of side max(round(sqrt(p H W)), 1) (at most
          min(H, W)) at a uniformly random position gets a new perturbation
          of +-eps per channel, constant over the window; the candidate,
          projected onto the eps ball and [0, 1], replaces the current point
          only if its margin is lower (or it is misclassified).
The fraction of pixels p starts at p_init and halves at iterations 10, 50,
200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10000-iteration run, rescaled
to n_queries (the paper's schedule). A window whose new values equal its
current ones gets the opposite signs, so no query is spent on an unchanged
image (the paper's code resamples until the window changes: the same with one
channel). An example stops changing once it is misclassified (by the
decoding). Each iteration is one forward pass of the batch; n_queries counts
them, the start included.

Every example draws its randomness from its own key (`core.example_keys`),
so its result does not depend on the other images of its batch. eps, p_init
and n_queries are traced: one compilation per image shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mlrobust.attacks import core

# Where p halves, in iterations of a 10000-iteration run (the paper's code).
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# How the attack loops: None picks host-driven chunks of unrolled iterations
# on the CPU (XLA:CPU runs convolutions ~4x slower inside a while loop;
# BENCHMARKS.md) and one compiled while loop elsewhere; True or False forces
# one. Both compute the same (tested).
CHUNKED = None
# Iterations per unrolled chunk.
CHUNK = 10


def thresholds(n_queries: int) -> np.ndarray:
  """[9] int32: p has halved k times from the iteration thresholds[k - 1] on.

  Iteration i of n counts as iteration floor(10000 i / n) of the paper's
  10000-iteration run, which is past the halving point b iff
  i >= ceil((b + 1) n / 10000): exact integers, computed on the host.
  """
  return np.array([-(-(b + 1) * n_queries // 10000) for b in HALVINGS],
                  np.int32)


def window_side(i, halving_at, p_init, height: int, width: int):
  """The window side at iteration i: round(sqrt(p H W)) in [1, min(H, W)]."""
  halvings = jnp.sum(i >= halving_at)
  p = p_init / 2.0 ** halvings.astype(jnp.float32)
  side = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
  return jnp.clip(side, 1, min(height, width))


def _start(key, x, eps):
  """x + eps * a random sign per (column, channel), in [0, 1]; x [H, W, C]."""
  signs = jax.random.rademacher(key, (1,) + x.shape[1:], x.dtype)
  return jnp.clip(x + eps * signs, 0.0, 1.0)


def _propose(key, x, best, side, eps):
  """`best` with a random side x side window set to x +- eps per channel."""
  h, w, c = x.shape
  k_row, k_col, k_sign = jax.random.split(key, 3)
  row = jax.random.randint(k_row, (), 0, h - side + 1)
  col = jax.random.randint(k_col, (), 0, w - side + 1)
  rows = jnp.arange(h)[:, None, None]
  cols = jnp.arange(w)[None, :, None]
  window = ((rows >= row) & (rows < row + side) & (cols >= col) &
            (cols < col + side))
  signs = jax.random.rademacher(k_sign, (c,), x.dtype)

  def candidate(signs):
    new = jnp.where(window, x + eps * signs, best)
    return jnp.clip(jnp.clip(new, x - eps, x + eps), 0.0, 1.0)

  new = candidate(signs)
  return jnp.where(jnp.all(new == best), candidate(-signs), new)


def _evaluate(clf, x, y):
  """(margin score_y - max_{j != y} score_j [B], prediction [B])."""
  scores = clf.scores(x)
  prediction = jnp.argmax(scores, axis=1).astype(jnp.int32)
  return -core.margin(scores, y), prediction


def _init(clf, x, y, keys, eps):
  start_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  best = jax.vmap(_start, in_axes=(0, 0, None))(start_keys, x, eps)
  loss, prediction = _evaluate(clf, best, y)
  return {'best': best, 'loss': loss, 'broken': prediction != y}


def _step(clf, x, y, keys, state, i, last, halving_at, eps, p_init):
  """Iteration i (a no-op from i = last on, and for broken examples)."""
  side = window_side(i, halving_at, p_init, x.shape[1], x.shape[2])
  step_keys = jax.vmap(lambda k: jax.random.fold_in(
      jax.random.fold_in(k, 1), i))(keys)
  candidate = jax.vmap(_propose, in_axes=(0, 0, 0, None, None))(
      step_keys, x, state['best'], side, eps)
  loss, prediction = _evaluate(clf, candidate, y)
  broken = prediction != y
  accept = ((loss < state['loss']) | broken) & ~state['broken'] & (i < last)
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  return {'best': jnp.where(accept.reshape(shape), candidate, state['best']),
          'loss': jnp.where(accept, loss, state['loss']),
          'broken': state['broken'] | (accept & broken)}


@jax.jit
def _square(clf, x, y, keys, eps, p_init, last, halving_at):
  """The whole attack as one program (a while loop; `last` is traced)."""
  def body(carry):
    i, state = carry
    return i + 1, _step(clf, x, y, keys, state, i, last, halving_at, eps,
                        p_init)

  _, state = jax.lax.while_loop(
      lambda c: (c[0] < last) & ~jnp.all(c[1]['broken']), body,
      (jnp.array(0, jnp.int32), _init(clf, x, y, keys, eps)))
  adv = jax.lax.stop_gradient(state['best'])
  return adv, clf.predict(adv)


@functools.partial(jax.jit, static_argnames=('steps',))
def _chunk(clf, x, y, keys, state, start, last, halving_at, eps, p_init, *,
           steps):
  """Iterations start, ..., start + steps - 1, unrolled."""
  for k in range(steps):
    state = _step(clf, x, y, keys, state, start + k, last, halving_at, eps,
                  p_init)
  return state


_init_jit = jax.jit(_init)
_predict = jax.jit(lambda clf, x: clf.predict(x))


def _square_chunked(clf, x, y, keys, eps, p_init, last, halving_at):
  """The same attack driven from the host in chunks of unrolled iterations
  (see `mlrobust.attacks.cw._cw_chunked`); it stops early once every example
  is broken. One compiled chunk serves every chunk and every n_queries."""
  state = _init_jit(clf, x, y, keys, eps)
  for start in range(0, last, CHUNK):
    if np.all(jax.device_get(state['broken'])):
      break
    state = _chunk(clf, x, y, keys, state, jnp.int32(start),
                   jnp.int32(last), halving_at, eps, p_init, steps=CHUNK)
  adv = jax.lax.stop_gradient(state['best'])
  return adv, _predict(clf, adv)


def _use_chunks() -> bool:
  return jax.default_backend() == 'cpu' if CHUNKED is None else CHUNKED


def square(clf, x, y, *, targeted=False, rng=None, eps=0.3, n_queries=1000,
           p_init=0.8, batch_size=None) -> core.AttackResult:
  """The Linf Square Attack, untargeted (see module docstring).

  Args:
    clf: a `mlrobust.classifier.Classifier` (only `clf.scores` is queried).
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] true labels (success = prediction != y).
    targeted: must be False (untargeted only).
    rng: the key of the random start and windows (None: key 0); each
      example's own key comes from it and the example's pixels.
    eps: Linf radius (>= 0).
    n_queries: forward passes per example, the start included (>= 1).
    p_init: the first window's fraction of the pixels, in (0, 1].
    batch_size: examples per compiled call (None: all at once).

  Returns:
    An AttackResult: the point of lowest margin found, or the first
    misclassified one.

  Raises:
    ValueError: targeted, or a parameter outside its allowed values.
  """
  if targeted:
    raise ValueError('square is untargeted only; use targeted=False')
  core.check_values(eps=eps, n_queries=n_queries, p_init=p_init)
  x, y = core.check_inputs(clf, x, y, targeted=False)
  fn = _square_chunked if _use_chunks() else _square
  halving_at = jnp.asarray(thresholds(n_queries))
  last = n_queries - 1  # Iterations after the start.
  return core.run_batched(
      lambda clf, xb, yb, keys: fn(clf, xb, yb, keys, jnp.float32(eps),
                                   jnp.float32(p_init), last, halving_at),
      clf, x, y, batch_size=batch_size, targeted=False,
      rng=core.default_rng(rng))
