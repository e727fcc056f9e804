"""Auto-PGD (Croce & Hein, 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks"), Linf and L2.

A step-size-free PGD: step 2 eps, momentum 0.75, and at checkpoints
w_j = p_j N (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06); `checkpoints`) the step is halved and the iterate restarts from the
best point found so far when, since the last checkpoint, the loss rose in
fewer than rho = 0.75 of the steps, or neither the step nor the best loss
changed. All of it per example (each example has its own step size and
checkpoints).

The norm sets the step and the projection P (the paper defines APGD for
both): Linf steps eta * sign(g) and clips to [x - eps, x + eps]; L2 steps
eta * g / ||g||_2 and rescales x' - x to L2 norm eps where it is longer.
Both then clip to the box [0, 1] (which keeps x' in the ball: each
coordinate moves towards x's). Both start at x.

Losses on the class scores of the generic decoding (so every head is attacked
the same way):
  'ce':  cross-entropy of the scores;
  'dlr': -(s_y - max_{i != y} s_i) / (s_pi1 - s_pi3 + 1e-12), the
         difference-of-logits ratio (scale invariant: saturated heads do not
         flatten it);
targeted, 'dlr' is the targeted DLR
  -(s_y - s_t) / (s_pi1 - (s_pi3 + s_pi4) / 2 + 1e-12)
with y the true class and t the target, and 'ce' minus the CE of t.

An example counts as broken as soon as any iterate is misclassified (or
reaches the target); the first such iterate is returned, otherwise the best
point by the loss (the decoding then says whether it is adversarial).

On the CPU the iterations run as host-driven chunks of unrolled iterations
(XLA:CPU runs convolutions ~4x slower inside a loop; BENCHMARKS.md), elsewhere
as one compiled fori_loop; both compute the same (tested).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mlrobust.attacks import core

APGD_LOSSES = ('ce', 'dlr')
# How the attack loops: None picks host-driven chunks of unrolled iterations
# on the CPU and one compiled fori_loop elsewhere; True or False forces one.
CHUNKED = None
# Iterations per unrolled chunk (divides the usual 100).
CHUNK = 10


def checkpoints(n_iter: int) -> list[int]:
  """The iterations w_j at which the step size may be halved (w_0 = 0).

  The paper's p_j in whole iterations, as the reference implementation
  counts them: a first interval of 0.22 N, each next one 0.03 N shorter, but
  at least 0.06 N (N = 100: 0, 22, 41, 57, 70, 80, 87, 93, 99).
  """
  interval = max(int(0.22 * n_iter), 1)
  shrink, shortest = max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
  points = [0]
  while points[-1] + interval <= n_iter:
    points.append(points[-1] + interval)
    interval = max(interval - shrink, shortest)
  return points


def _loss(clf, x, label, target, *, loss, targeted):
  scores = clf.scores(x)
  if loss == 'dlr':
    value = core.dlr_loss(scores, label, target if targeted else None)
  else:
    goal = target if targeted else label
    ce = -jnp.take_along_axis(jax.nn.log_softmax(scores), goal[:, None],
                              axis=1)[:, 0]
    value = -ce if targeted else ce
  prediction = jnp.argmax(scores, axis=1).astype(jnp.int32)
  return jnp.sum(value), (value, prediction)


def schedule(n_iter: int) -> tuple[np.ndarray, np.ndarray]:
  """The checkpoints per iteration: ([n_iter] bool, [n_iter] float32).

  Entry k says whether iteration k is a checkpoint w_j (j >= 1) and, there,
  the steps since the previous one (w_j - w_{j-1}; 0 elsewhere).
  """
  is_ckpt = np.zeros(n_iter + 1, bool)
  since = np.zeros(n_iter + 1, np.float32)
  points = checkpoints(n_iter)
  for prev, cur in zip(points, points[1:]):
    is_ckpt[cur] = True
    since[cur] = cur - prev
  return is_ckpt[:n_iter], since[:n_iter]


def _per_example(v):
  """[B] -> [B, 1, 1, 1], to broadcast against images [B, H, W, C]."""
  return v[:, None, None, None]


def _l2(v):
  """Per-example L2 norms [B] of v [B, ...]."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim))))


def _direction(g, norm):
  """The steepest-ascent direction of unit norm: sign(g) (Linf) or
  g / ||g||_2 (L2; 0 where g is 0)."""
  if norm == 'linf':
    return jnp.sign(g)
  n = _l2(g)
  return g / _per_example(jnp.where(n > 0, n, 1.0))


def _project(v, x, eps, norm):
  """Onto the eps ball around x, then the box [0, 1].

  Clipping to the box only moves a coordinate towards x's (which lies in
  the box), so the result stays in the ball.
  """
  if norm == 'linf':
    v = jnp.clip(v, x - eps, x + eps)
  else:
    n = _l2(v - x)
    scale = jnp.where(n > eps, eps / jnp.where(n > 0, n, 1.0), 1.0)
    v = x + (v - x) * _per_example(scale)
  return jnp.clip(v, 0.0, 1.0)


def _succeeded(prediction, label, target, targeted):
  return prediction == target if targeted else prediction != label


def _init(x, eps):
  """The state before iteration 0: every example at x, step 2 eps."""
  b = x.shape[0]
  full = lambda v: jnp.full((b,), v, x.dtype)
  return dict(x=x, x_prev=x, f_prev=full(-jnp.inf), eta=full(2.0) * eps,
              f_max=full(-jnp.inf), x_max=x, g_max=jnp.zeros_like(x),
              found=jnp.zeros((b,), bool), adv=x, increases=full(0.0),
              eta_last=full(-1.0), f_max_last=full(-jnp.inf))


def _step(clf, x, label, target, eps, rho, s, k, is_ckpt, since, *, loss,
          targeted, norm):
  """Iteration k; is_ckpt and since are its entries of `schedule`."""
  alpha = 0.75
  grad_fn = jax.value_and_grad(
      functools.partial(_loss, clf, loss=loss, targeted=targeted),
      has_aux=True)
  (_, (f, pred)), g = grad_fn(s['x'], label, target)
  hit = _succeeded(pred, label, target, targeted) & ~s['found']
  adv = jnp.where(_per_example(hit), s['x'], s['adv'])
  found = s['found'] | hit
  increases = s['increases'] + ((k > 0) & (f > s['f_prev']))
  better = f > s['f_max']
  f_max = jnp.where(better, f, s['f_max'])
  x_max = jnp.where(_per_example(better), s['x'], s['x_max'])
  g_max = jnp.where(_per_example(better), g, s['g_max'])
  # Checkpoint: halve the step and restart from the best point if the
  # loss rose too rarely, or neither step nor best loss changed.
  reduce = is_ckpt & (
      (increases < rho * since) |
      ((s['eta_last'] == s['eta']) & (s['f_max_last'] == f_max)))
  eta = jnp.where(reduce, s['eta'] / 2, s['eta'])
  r = _per_example(reduce)
  x_k = jnp.where(r, x_max, s['x'])
  g = jnp.where(r, g_max, g)
  x_prev = jnp.where(r, x_max, s['x_prev'])
  z = _project(x_k + _per_example(eta) * _direction(g, norm), x, eps, norm)
  momentum = jnp.where(k > 0, 1.0, 0.0)
  x_next = _project(x_k + (alpha * (z - x_k) + (1 - alpha) *
                           (x_k - x_prev)) * momentum + (z - x_k) *
                    (1 - momentum), x, eps, norm)
  return dict(
      x=x_next, x_prev=x_k, f_prev=f, eta=eta, f_max=f_max, x_max=x_max,
      g_max=g_max, found=found, adv=adv,
      increases=jnp.where(is_ckpt, 0.0, increases),
      eta_last=jnp.where(is_ckpt, eta, s['eta_last']),
      f_max_last=jnp.where(is_ckpt, f_max, s['f_max_last']))


def _finish(clf, state, label, target, *, targeted):
  """(adv, prediction): the first success, else the last iterate if it
  succeeds, else the best point by the loss."""
  last_pred = clf.predict(state['x'])
  hit = _succeeded(last_pred, label, target, targeted) & ~state['found']
  adv = jnp.where(_per_example(hit), state['x'], state['adv'])
  found = state['found'] | hit
  adv = jnp.where(_per_example(found), adv, state['x_max'])
  adv = jax.lax.stop_gradient(adv)
  return adv, clf.predict(adv)


_STATIC = ('loss', 'targeted', 'norm')


@functools.partial(jax.jit, static_argnames=_STATIC + ('n_iter',))
def _apgd(clf, x, label, target, eps, rho, *, loss, targeted, norm,
          n_iter):
  """The whole attack as one program (a fori_loop)."""
  is_ckpt, since = (jnp.asarray(a) for a in schedule(n_iter))
  step = functools.partial(_step, clf, x, label, target, eps, rho, loss=loss,
                           targeted=targeted, norm=norm)
  state = jax.lax.fori_loop(
      0, n_iter, lambda k, s: step(s, k, is_ckpt[k], since[k]),
      _init(x, eps))
  return _finish(clf, state, label, target, targeted=targeted)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _chunk(clf, x, label, target, eps, rho, state, start, last, is_ckpt,
           since, *, loss, targeted, norm):
  """Iterations start, ..., start + len(is_ckpt) - 1, unrolled; those from
  `last` on change nothing."""
  for j in range(is_ckpt.shape[0]):
    k = start + j
    new = _step(clf, x, label, target, eps, rho, state, k, is_ckpt[j],
                since[j], loss=loss, targeted=targeted, norm=norm)
    state = jax.tree.map(lambda a, b, k=k: jnp.where(k < last, a, b), new,
                         state)
  return state


_init_jit = jax.jit(_init)
_finish_jit = jax.jit(_finish, static_argnames=('targeted',))


def _apgd_chunked(clf, x, label, target, eps, rho, *, loss, targeted, norm,
                  n_iter):
  """The same attack driven from the host in chunks of CHUNK unrolled
  iterations (see `mlrobust.attacks.cw._cw_chunked`); it stops once every
  example has succeeded (the rest cannot change the result). The iteration
  index, n_iter and the chunk's schedule are arguments: one compiled chunk
  serves every chunk and every n_iter."""
  pad = -n_iter % CHUNK  # The last chunk overruns n_iter.
  is_ckpt, since = (np.pad(a, (0, pad)) for a in schedule(n_iter))
  state = _init_jit(x, eps)
  for start in range(0, n_iter, CHUNK):
    if start and np.all(jax.device_get(state['found'])):
      break
    window = slice(start, start + CHUNK)
    state = _chunk(clf, x, label, target, eps, rho, state, jnp.int32(start),
                   jnp.int32(n_iter), jnp.asarray(is_ckpt[window]),
                   jnp.asarray(since[window]), loss=loss, targeted=targeted,
                   norm=norm)
  return _finish_jit(clf, state, label, target, targeted=targeted)


def _use_chunks() -> bool:
  return jax.default_backend() == 'cpu' if CHUNKED is None else CHUNKED


def apgd(clf, x, y, *, targeted=False, rng=None, eps=0.3, n_iter=100,
         loss='ce', rho=0.75, norm='linf', labels=None,
         batch_size=None) -> core.AttackResult:
  """Auto-PGD in the Linf or L2 ball (see module docstring).

  Args:
    clf: a `mlrobust.classifier.Classifier`.
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] true labels (untargeted) or target classes (targeted).
    targeted: reach y instead of leaving it.
    rng: unused (the start is x itself, as in AutoAttack's first run).
    eps: the ball's radius in `norm`.
    n_iter: iterations (100 in AutoAttack).
    loss: 'ce' or 'dlr' on the class scores.
    rho: the checkpoint condition's fraction of increasing steps.
    norm: 'linf' or 'l2', the ball's norm.
    labels: targeted only: the true labels [B] (the targeted DLR needs them).
    batch_size: examples per compiled call (None: all at once).
  Returns:
    An AttackResult: the first iterate that succeeded, else the best point.

  Raises:
    ValueError: an unknown loss or norm, a parameter outside its allowed
      values, too few classes for the DLR loss, or targeted without labels.
  """
  del rng
  if loss not in APGD_LOSSES:
    raise ValueError(f'unknown APGD loss {loss!r}; choose one of '
                     f'{list(APGD_LOSSES)}')
  core.check_values(eps=eps, nb_iter=n_iter, norm=norm)
  if not 0 < rho < 1:
    raise ValueError(f'rho must be in (0, 1), got {rho}')
  x, y = core.check_inputs(clf, x, y, targeted=targeted)
  min_classes = 4 if targeted else 3
  if loss == 'dlr' and clf.num_classes < min_classes:
    raise ValueError(f'the {"targeted " if targeted else ""}DLR loss needs '
                     f'at least {min_classes} classes')
  if targeted:
    if labels is None:
      raise ValueError('targeted apgd needs the true labels as `labels` (y '
                       'holds the target classes)')
    _, labels = core.check_inputs(clf, x, labels, targeted=False)
  else:
    labels = y
  fn = functools.partial(_apgd_chunked if _use_chunks() else _apgd,
                         loss=loss, targeted=targeted, norm=norm,
                         n_iter=n_iter)
  eps, rho = jnp.float32(eps), jnp.float32(rho)
  return core.run_batched(
      lambda clf, xb, yb, key, lb: fn(clf, xb, lb, yb, eps, rho), clf, x, y,
      batch_size=batch_size, targeted=targeted, rng=jax.random.key(0),
      extra=labels)
