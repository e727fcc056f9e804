"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, 2020, "Square
Attack: a query-efficient black-box adversarial attack via random search"),
Linf and L2, untargeted.

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
The L2 version (norm='l2') differs in its start and its step:
  start:  a grid of squares of side max(H // 5, 1), each holding the
          meta pattern below times a random sign per channel, scaled to L2
          norm eps, clipped to [0, 1];
  step:   two windows of side max(round(sqrt(p H W)), 3) (at most
          min(H, W)) at independent random positions; the second one's
          perturbation is dropped and the first one's becomes the meta
          pattern times a random sign per channel plus its old values (as
          a unit vector per channel), rescaled per channel to the norm the
          two windows held plus an equal share of the budget left,
          sqrt(max(eps^2 - ||delta||^2, 0) / C + ||delta_windows||^2); the
          whole perturbation is then projected onto the eps ball and the
          image clipped to [0, 1]. Accepted as in Linf.
  meta pattern of side s: two halves (rows [0, s // 2) and the rest) of
          opposite signs, each a pyramid of nested squares around its centre
          whose value at Chebyshev distance k from it is
          sum_{m=k}^{s // 2} 1 / (m + 1)^2, each half of unit norm; with
          probability 1/2 transposed. p_init defaults to 0.1 (0.8 in Linf).
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


# The paper's first window fraction per norm (p_init=None picks it).
P_INIT = {'linf': 0.8, 'l2': 0.1}


def window_side(i, halving_at, p_init, height: int, width: int,
                minimum: int = 1):
  """The window side at iteration i: round(sqrt(p H W)), at least `minimum`
  (1 for Linf, 3 for L2), at most min(H, W)."""
  halvings = jnp.sum(i >= halving_at)
  p = p_init / 2.0 ** halvings.astype(jnp.float32)
  side = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
  return jnp.clip(jnp.maximum(side, minimum), 1, min(height, width))


def _start(key, x, eps):
  """x + eps * a random sign per (column, channel), in [0, 1]; x [H, W, C]."""
  signs = jax.random.rademacher(key, (1,) + x.shape[1:], x.dtype)
  return jnp.clip(x + eps * signs, 0.0, 1.0)


def _window(h, w, row, col, side):
  """[H, W, 1] bool: the side x side window at (row, col)."""
  rows = jnp.arange(h)[:, None, None]
  cols = jnp.arange(w)[None, :, None]
  return ((rows >= row) & (rows < row + side) & (cols >= col) &
          (cols < col + side))


def _propose(key, x, best, side, eps):
  """`best` with a random side x side window set to x +- eps per channel."""
  h, w, c = x.shape
  k_row, k_col, k_sign = jax.random.split(key, 3)
  row = jax.random.randint(k_row, (), 0, h - side + 1)
  col = jax.random.randint(k_col, (), 0, w - side + 1)
  window = _window(h, w, row, col, side)
  signs = jax.random.rademacher(k_sign, (c,), x.dtype)

  def candidate(signs):
    new = jnp.where(window, x + eps * signs, best)
    return jnp.clip(jnp.clip(new, x - eps, x + eps), 0.0, 1.0)

  new = candidate(signs)
  return jnp.where(jnp.all(new == best), candidate(-signs), new)


def _pyramid(a, b, side, size: int):
  """The meta pattern of side `side` at local coordinates (a, b) (int
  arrays; 0 outside the square), each half of unit norm; `size` (static)
  bounds side."""
  # tail[k] = sum_{m >= k} 1 / (m + 1)^2 over m < size: the value at
  # Chebyshev distance k, up to the constant that cancels below.
  inv = 1.0 / jnp.arange(1, size + 2, dtype=jnp.float32) ** 2
  head = jnp.concatenate([jnp.zeros(1), jnp.cumsum(inv)])

  def unnormalized(a, b):
    inside = (a >= 0) & (a < side) & (b >= 0) & (b < side)
    top = a < side // 2
    half_rows = jnp.where(top, side // 2, side - side // 2)
    r = jnp.where(top, a, a - side // 2)
    k = jnp.maximum(jnp.abs(r - half_rows // 2), jnp.abs(b - side // 2))
    k_max = side // 2 + 1
    value = head[k_max] - head[jnp.clip(k, 0, size)]
    return jnp.where(inside, value, 0.0), top

  grid = jnp.arange(size)
  ref, ref_top = unnormalized(grid[:, None], grid[None, :])
  norm_top = jnp.sqrt(jnp.sum(jnp.where(ref_top, ref**2, 0.0)))
  norm_bottom = jnp.sqrt(jnp.sum(jnp.where(ref_top, 0.0, ref**2)))
  value, top = unnormalized(a, b)
  return jnp.where(top, value / jnp.maximum(norm_top, 1e-12),
                   -value / jnp.maximum(norm_bottom, 1e-12))


def _project_l2(x, delta, eps):
  norm = jnp.sqrt(jnp.sum(delta**2))
  delta = delta * jnp.minimum(1.0, eps / jnp.maximum(norm, 1e-12))
  return jnp.clip(x + delta, 0.0, 1.0)


def _start_l2(key, x, eps):
  """A grid of meta patterns with random signs, at L2 norm eps."""
  h, w, c = x.shape
  side = max(h // 5, 1)
  cells_h, cells_w = h // side, w // side
  off_h, off_w = (h - cells_h * side) // 2, (w - cells_w * side) // 2
  k_sign, k_flip = jax.random.split(key)
  signs = jax.random.rademacher(k_sign, (cells_h, cells_w, c), x.dtype)
  flip = jax.random.bernoulli(k_flip, 0.5, (cells_h, cells_w))
  rows = jnp.arange(h)[:, None] - off_h
  cols = jnp.arange(w)[None, :] - off_w
  inside = ((rows >= 0) & (rows < cells_h * side) & (cols >= 0) &
            (cols < cells_w * side))
  cell_r = jnp.clip(rows // side, 0, cells_h - 1)
  cell_c = jnp.clip(cols // side, 0, cells_w - 1)
  a, b = rows - cell_r * side, cols - cell_c * side
  t = flip[cell_r, cell_c]
  pattern = _pyramid(jnp.where(t, b, a), jnp.where(t, a, b), side,
                     max(h, w))
  delta = jnp.where(inside[..., None],
                    pattern[..., None] * signs[cell_r, cell_c], 0.0)
  norm = jnp.sqrt(jnp.sum(delta**2))
  return _project_l2(x, delta * eps / jnp.maximum(norm, 1e-12), eps)


def _propose_l2(key, x, best, side, eps):
  """`best` with window 1 given a new pattern and window 2 zeroed."""
  h, w, c = x.shape
  keys = jax.random.split(key, 6)
  row1, row2 = (jax.random.randint(k, (), 0, h - side + 1) for k in keys[:2])
  col1, col2 = (jax.random.randint(k, (), 0, w - side + 1)
                for k in keys[2:4])
  first = _window(h, w, row1, col1, side)
  both = first | _window(h, w, row2, col2, side)
  delta = best - x
  norm_image = jnp.sqrt(jnp.sum(delta**2))
  norm_both = jnp.sqrt(jnp.sum(jnp.where(both, delta**2, 0.0), axis=(0, 1)))
  norm_first = jnp.sqrt(jnp.sum(jnp.where(first, delta**2, 0.0),
                                axis=(0, 1)))
  a = jnp.arange(h)[:, None] - row1
  b = jnp.arange(w)[None, :] - col1
  t = jax.random.bernoulli(keys[5], 0.5)
  pattern = _pyramid(jnp.where(t, b, a), jnp.where(t, a, b), side, max(h, w))
  signs = jax.random.rademacher(keys[4], (c,), x.dtype)
  new = pattern[..., None] * signs + jnp.where(
      first, delta / (norm_first + 1e-10), 0.0)
  budget = jnp.sqrt(jnp.maximum(eps**2 - norm_image**2, 0.0) / c +
                    norm_both**2)
  new_norm = jnp.sqrt(jnp.sum(new**2, axis=(0, 1)))
  new = new * budget / jnp.maximum(new_norm, 1e-12)
  return _project_l2(x, jnp.where(both, 0.0, delta) + new, eps)


def _evaluate(clf, x, y):
  """(margin score_y - max_{j != y} score_j [B], prediction [B])."""
  scores = clf.scores(x)
  prediction = jnp.argmax(scores, axis=1).astype(jnp.int32)
  return -core.margin(scores, y), prediction


def _init(clf, x, y, keys, eps, norm):
  start_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  start = _start if norm == 'linf' else _start_l2
  best = jax.vmap(start, in_axes=(0, 0, None))(start_keys, x, eps)
  loss, prediction = _evaluate(clf, best, y)
  return {'best': best, 'loss': loss, 'broken': prediction != y}


def _step(clf, x, y, keys, state, i, last, halving_at, eps, p_init, norm):
  """Iteration i (a no-op from i = last on, and for broken examples)."""
  side = window_side(i, halving_at, p_init, x.shape[1], x.shape[2],
                     1 if norm == 'linf' else 3)
  step_keys = jax.vmap(lambda k: jax.random.fold_in(
      jax.random.fold_in(k, 1), i))(keys)
  propose = _propose if norm == 'linf' else _propose_l2
  candidate = jax.vmap(propose, in_axes=(0, 0, 0, None, None))(
      step_keys, x, state['best'], side, eps)
  loss, prediction = _evaluate(clf, candidate, y)
  broken = prediction != y
  accept = ((loss < state['loss']) | broken) & ~state['broken'] & (i < last)
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  return {'best': jnp.where(accept.reshape(shape), candidate, state['best']),
          'loss': jnp.where(accept, loss, state['loss']),
          'broken': state['broken'] | (accept & broken)}


@functools.partial(jax.jit, static_argnames=('norm',))
def _square(clf, x, y, keys, eps, p_init, last, halving_at, norm):
  """The whole attack as one program (a while loop; `last` is traced)."""
  def body(carry):
    i, state = carry
    return i + 1, _step(clf, x, y, keys, state, i, last, halving_at, eps,
                        p_init, norm)

  _, state = jax.lax.while_loop(
      lambda c: (c[0] < last) & ~jnp.all(c[1]['broken']), body,
      (jnp.array(0, jnp.int32), _init(clf, x, y, keys, eps, norm)))
  adv = jax.lax.stop_gradient(state['best'])
  return adv, clf.predict(adv)


@functools.partial(jax.jit, static_argnames=('steps', 'norm'))
def _chunk(clf, x, y, keys, state, start, last, halving_at, eps, p_init, *,
           steps, norm):
  """Iterations start, ..., start + steps - 1, unrolled."""
  for k in range(steps):
    state = _step(clf, x, y, keys, state, start + k, last, halving_at, eps,
                  p_init, norm)
  return state


_init_jit = jax.jit(_init, static_argnames=('norm',))
_predict = jax.jit(lambda clf, x: clf.predict(x))


def _square_chunked(clf, x, y, keys, eps, p_init, last, halving_at, norm):
  """The same attack driven from the host in chunks of unrolled iterations
  (see `mlrobust.attacks.cw._cw_chunked`); it stops early once every example
  is broken. One compiled chunk serves every chunk and every n_queries."""
  state = _init_jit(clf, x, y, keys, eps, norm=norm)
  for start in range(0, last, CHUNK):
    if np.all(jax.device_get(state['broken'])):
      break
    state = _chunk(clf, x, y, keys, state, jnp.int32(start),
                   jnp.int32(last), halving_at, eps, p_init, steps=CHUNK,
                   norm=norm)
  adv = jax.lax.stop_gradient(state['best'])
  return adv, _predict(clf, adv)


def _use_chunks() -> bool:
  return jax.default_backend() == 'cpu' if CHUNKED is None else CHUNKED


def square(clf, x, y, *, targeted=False, rng=None, eps=0.3, n_queries=1000,
           p_init=None, norm='linf', batch_size=None) -> core.AttackResult:
  """The Square Attack, untargeted, Linf or L2 (see module docstring).

  Args:
    clf: a `mlrobust.classifier.Classifier` (only `clf.scores` is queried).
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] true labels (success = prediction != y).
    targeted: must be False (untargeted only).
    rng: the key of the random start and windows (None: key 0); each
      example's own key comes from it and the example's pixels.
    eps: the radius (>= 0) in `norm`.
    n_queries: forward passes per example, the start included (>= 1).
    p_init: the first window's fraction of the pixels, in (0, 1] (None: 0.8
      for Linf, 0.1 for L2, the paper's).
    norm: 'linf' or 'l2'.
    batch_size: examples per compiled call (None: all at once).

  Returns:
    An AttackResult: the point of lowest margin found, or the first
    misclassified one.

  Raises:
    ValueError: targeted, or a parameter outside its allowed values.
  """
  if targeted:
    raise ValueError('square is untargeted only; use targeted=False')
  core.check_values(norm=norm)
  p_init = P_INIT[norm] if p_init is None else p_init
  core.check_values(eps=eps, n_queries=n_queries, p_init=p_init)
  x, y = core.check_inputs(clf, x, y, targeted=False)
  fn = _square_chunked if _use_chunks() else _square
  halving_at = jnp.asarray(thresholds(n_queries))
  last = n_queries - 1  # Iterations after the start.
  return core.run_batched(
      lambda clf, xb, yb, keys: fn(clf, xb, yb, keys, jnp.float32(eps),
                                   jnp.float32(p_init), last, halving_at,
                                   norm),
      clf, x, y, batch_size=batch_size, targeted=False,
      rng=core.default_rng(rng))
