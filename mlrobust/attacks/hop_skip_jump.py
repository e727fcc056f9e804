"""HopSkipJump (Chen, Jordan & Wainwright, 2020, "HopSkipJumpAttack: a
query-efficient decision-based attack"), Linf or L2, untargeted.

Decision-based (label-only): it sees only the model's prediction
(`clf.predict`), never a score or a gradient. It is the attack for the threat
model where the codebook is secret and only the predicted class is visible.
Per example, with phi(v) = [prediction(v) != y]:
  start:     random images until one is misclassified (at most
             INIT_TRIES): uniform noise, alternating with sparse binary noise
             (each pixel 1 with a probability drawn from U(0, 0.25)), since a
             model may put all uniform noise in one class (a trained MNIST
             model: all of it in class 8, so images of that class could never
             start); then a binary search on the blend (1 - a) x + a noise
             down to a precision of 0.001;
  boundary:  a binary search along the projection of the current point onto
             the ball of radius r around x (L2: the blend (1 - r) x + r v;
             Linf: clip(v, x - r, x + r)) to a precision theta (L2:
             gamma / d^1.5; Linf: gamma / d^2; d = pixels x channels);
  iteration t: estimate the boundary's normal at the current point from
             n_t ~ INIT_EVALS sqrt(t) queries phi(v + delta u) on random unit
             directions u (Linf: uniform in the cube, then normalised; L2:
             Gaussian), baseline-subtracted (Monte Carlo, the paper's eq. 16);
             step along it (Linf: its sign) with the step dist / sqrt(t),
             halved until the point is misclassified (at most MAX_HALVINGS);
             then the boundary search again. delta = 0.1 at t = 1, else
             sqrt(d) theta dist (L2) or d theta dist (Linf).
The point closest to x found so far is kept. An example stops once it is
within eps (the budget is eps, so queries beyond it buy nothing), or when the
next iteration could exceed n_queries: every example makes at most n_queries
decisions, the start included (`attack` returns the count). The answer is the
best point projected onto the eps ball (Linf: clipped; L2: scaled), judged by
the decoding. An example never misclassified by a random start is returned
unchanged.

Samples per iteration are rounded up to whole blocks of BLOCK, so one
compiled program serves every iteration. Every example draws its randomness
from its own key and stops by its own test, so its result does not depend on
the other images of its call. The loops run on the host around compiled
steps (one forward pass of the batch each), on every backend.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mlrobust.attacks import core

# Random starts tried per example.
INIT_TRIES = 100
# The largest pixel density of the sparse binary starts.
SPARSE_DENSITY = 0.25
# Precision of the start's blend search.
INIT_PRECISION = 1e-3
# The first iteration's number of gradient queries (the paper's B_0).
INIT_EVALS = 100
# At most this many gradient queries per iteration.
MAX_EVALS = 10_000
# Gradient queries are drawn in blocks of this many per example.
BLOCK = 50
# The step size is halved at most this many times per iteration.
MAX_HALVINGS = 25
# The paper's gamma (theta = gamma / d^1.5 for L2, gamma / d^2 for Linf).
GAMMA = 1.0


def theta(norm: str, dim: int) -> float:
  return GAMMA / (dim ** 1.5 if norm == 'l2' else dim ** 2)


def evals_at(t: int) -> int:
  """Gradient queries of iteration t (1-based), whole blocks."""
  n = min(int(INIT_EVALS * math.sqrt(t)), MAX_EVALS)
  return BLOCK * -(-n // BLOCK)


def reserve(norm: str, dim: int) -> int:
  """Queries an iteration may spend besides its gradient estimate."""
  return MAX_HALVINGS + math.ceil(math.log2(1.0 / theta(norm, dim))) + 1


def _expand(a, like):
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def _distance(x, v, norm):
  flat = (v - x).reshape(len(x), -1)
  if norm == 'l2':
    return jnp.linalg.norm(flat, axis=1)
  return jnp.max(jnp.abs(flat), axis=1)


def _project(x, v, r, norm):
  """The point of v's path at radius parameter r [B] (see module docstring)."""
  r = _expand(r, x)
  if norm == 'l2':
    return (1 - r) * x + r * v
  return jnp.clip(v, x - r, x + r)


def _answer(out):
  return out['adv'], out['prediction']


_predict = jax.jit(lambda clf, v: clf.predict(v))


@jax.jit
def _decide(clf, v, y):
  return clf.predict(v) != y


@functools.partial(jax.jit, static_argnames=('norm',))
def _mid(clf, x, v, y, low, high, todo, *, norm):
  """One bisection step of the boundary search for the examples in todo."""
  mid = (low + high) / 2
  adversarial = _decide(clf, _project(x, v, mid, norm), y)
  return (jnp.where(todo & ~adversarial, mid, low),
          jnp.where(todo & adversarial, mid, high))


def _random_image(key, k, shape):
  """Try k's random image: uniform noise (k even) or sparse binary noise."""
  k_image, k_density = jax.random.split(key)
  uniform = jax.random.uniform(k_image, shape)
  density = jax.random.uniform(k_density, (), maxval=SPARSE_DENSITY)
  return jnp.where(k % 2 == 0, uniform, (uniform < density).astype(
      uniform.dtype))


@jax.jit
def _noise_try(clf, x, y, keys, k):
  noise = jax.vmap(lambda key: _random_image(
      jax.random.fold_in(jax.random.fold_in(key, 0), k), k, x.shape[1:]))(
          keys)
  return noise, _decide(clf, noise, y)


@functools.partial(jax.jit, static_argnames=('norm',))
def _gradient_block(clf, v, y, keys, t, b, delta, *, norm):
  """Sums over one block of BLOCK random directions at the points v [B]."""
  def directions(key):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        key, 1), t), b)
    shape = (BLOCK,) + v.shape[1:]
    if norm == 'l2':
      u = jax.random.normal(key, shape)
    else:
      u = jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)
    norms = jnp.linalg.norm(u.reshape(BLOCK, -1), axis=1)
    return u / _expand(norms, u)

  u = jax.vmap(directions)(keys)  # [B, BLOCK, H, W, C]
  d = _expand(delta, u)
  moved = jnp.clip(v[:, None] + d * u, 0.0, 1.0)
  u = (moved - v[:, None]) / d
  flat = moved.reshape((-1,) + v.shape[1:])
  f = 2.0 * _decide(clf, flat, jnp.repeat(y, BLOCK)).astype(v.dtype) - 1.0
  f = f.reshape(len(v), BLOCK)
  return (jnp.einsum('nb,nb...->n...', f, u), jnp.sum(u, axis=1),
          jnp.sum(f, axis=1))


@functools.partial(jax.jit, static_argnames=('norm',))
def _direction(sum_fu, sum_u, sum_f, count, *, norm):
  """The baseline-subtracted estimate of the boundary normal, normalised."""
  mean_f = sum_f / count
  mean_fu = sum_fu / count
  g = jnp.where(_expand(jnp.abs(mean_f) == 1.0, mean_fu), mean_fu,
                mean_fu - _expand(mean_f, mean_fu) * sum_u / count)
  norms = jnp.linalg.norm(g.reshape(len(g), -1), axis=1)
  g = g / _expand(jnp.maximum(norms, 1e-20), g)
  return jnp.sign(g) if norm == 'linf' else g


@jax.jit
def _try_step(clf, v, y, update, xi):
  candidate = jnp.clip(v + _expand(xi, v) * update, 0.0, 1.0)
  return candidate, _decide(clf, candidate, y)


def _boundary(clf, x, v, y, active, queries, norm, tol):
  """Binary search towards x along `norm`'s projection; returns the point
  on the adversarial side, its distance and the updated query counts."""
  dist = _distance(x, v, norm)
  if norm == 'l2':
    high = jnp.ones_like(dist)
    thresholds = jnp.full_like(dist, tol)
  else:
    high = dist
    thresholds = jnp.minimum(dist * tol, tol)
  low = jnp.zeros_like(dist)
  while True:
    todo = active & ((high - low) > thresholds)
    if not bool(jnp.any(todo)):
      break
    low, high = _mid(clf, x, v, y, low, high, todo, norm=norm)
    queries = queries + todo
  out = jnp.where(_expand(active, v), _project(x, v, high, norm), v)
  return out, _distance(x, out, norm), queries


def attack(clf, x, y, keys, *, eps, norm, n_queries) -> dict:
  """One batch; x, y, keys as `core.run_batched` passes them.

  Returns {'adv': the answer in the eps ball, 'prediction': its class,
  'queries': decisions made per example (the answer's classification is not
  one), 'best': the adversarial point closest to x found (x where none),
  'distance': its distance (inf where none)}.
  """
  dim = int(np.prod(x.shape[1:]))
  tol = theta(norm, dim)
  n = len(x)
  queries = jnp.zeros(n, jnp.int32)
  found = jnp.zeros(n, bool)
  start = x
  for k in range(INIT_TRIES):
    todo = ~found & (queries < n_queries)
    if not bool(jnp.any(todo)):
      break
    noise, adversarial = _noise_try(clf, x, y, keys, k)
    hit = todo & adversarial
    start = jnp.where(_expand(hit, x), noise, start)
    found = found | hit
    queries = queries + todo
  # The blend search from x to the random start.
  low, high = jnp.zeros(n), jnp.ones(n)
  while True:
    todo = found & ((high - low) > INIT_PRECISION) & (queries < n_queries)
    if not bool(jnp.any(todo)):
      break
    low, high = _mid(clf, x, start, y, low, high, todo, norm='l2')
    queries = queries + todo
  v = jnp.where(_expand(found, x), _project(x, start, high, 'l2'), x)
  room = found & (queries + reserve(norm, dim) <= n_queries)
  v, dist, queries = _boundary(clf, x, v, y, room, queries, norm, tol)
  dist = jnp.where(found, dist, jnp.inf)
  best, best_dist = v, dist
  t = 1
  while True:
    cost = evals_at(t)
    active = (found & (best_dist > eps) &
              (queries + cost + reserve(norm, dim) <= n_queries))
    if not bool(jnp.any(active)):
      break
    if t == 1:
      delta = jnp.full((n,), 0.1)
    elif norm == 'l2':
      delta = math.sqrt(dim) * tol * dist
    else:
      delta = dim * tol * dist
    delta = jnp.maximum(delta, 1e-12)
    sums = None
    for b in range(cost // BLOCK):
      block = _gradient_block(clf, v, y, keys, t, b, delta, norm=norm)
      sums = block if sums is None else [s + a for s, a in zip(sums, block)]
    update = _direction(*sums, cost, norm=norm)
    queries = queries + cost * active
    xi = dist / math.sqrt(t)
    moved = jnp.zeros(n, bool)
    new = v
    for _ in range(MAX_HALVINGS):
      todo = active & ~moved
      if not bool(jnp.any(todo)):
        break
      candidate, adversarial = _try_step(clf, v, y, update, xi)
      hit = todo & adversarial
      new = jnp.where(_expand(hit, x), candidate, new)
      moved = moved | hit
      xi = jnp.where(todo & ~adversarial, xi / 2, xi)
      queries = queries + todo
    new, new_dist, queries = _boundary(clf, x, new, y, active & moved,
                                       queries, norm, tol)
    v = jnp.where(_expand(active, x), new, v)
    dist = jnp.where(active, new_dist, dist)
    closer = active & (dist < best_dist)
    best = jnp.where(_expand(closer, x), v, best)
    best_dist = jnp.where(closer, dist, best_dist)
    t += 1
  # Onto the eps ball.
  if norm == 'l2':
    scale = jnp.minimum(1.0, eps / jnp.maximum(best_dist, 1e-12))
    adv = x + _expand(scale, x) * (best - x)
  else:
    adv = jnp.clip(best, x - eps, x + eps)
  adv = jnp.where(_expand(found, x), jnp.clip(adv, 0.0, 1.0), x)
  return {'adv': adv, 'prediction': _predict(clf, adv), 'queries': queries,
          'best': best, 'distance': best_dist}


def hop_skip_jump(clf, x, y, *, targeted=False, rng=None, eps=0.3,
                  n_queries=5000, norm='linf',
                  batch_size=None) -> core.AttackResult:
  """HopSkipJump, untargeted, within an eps ball (see module docstring).

  Args:
    clf: a `mlrobust.classifier.Classifier` (only its predictions are used).
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] true labels (success = prediction != y).
    targeted: must be False (untargeted only).
    rng: the key of the random starts and directions (None: key 0).
    eps: the radius of the ball (Linf or L2) the answer is projected onto.
    n_queries: decisions per example at most, the start included (>= 1).
    norm: 'linf' or 'l2'.
    batch_size: examples per call (None: all at once).

  Returns:
    An AttackResult.

  Raises:
    ValueError: targeted, or a parameter outside its allowed values.
  """
  if targeted:
    raise ValueError('hop_skip_jump is untargeted only; use targeted=False')
  core.check_values(eps=eps, n_queries=n_queries, norm=norm)
  x, y = core.check_inputs(clf, x, y, targeted=False)
  return core.run_batched(
      lambda *args: _answer(attack(*args, eps=float(eps), norm=norm,
                                   n_queries=int(n_queries))),
      clf, x, y, batch_size=batch_size, targeted=False,
      rng=core.default_rng(rng))
