"""DeepFool (Moosavi-Dezfooli et al., 2016), untargeted, on the decoding.

DeepFool linearises the class scores around the current point and steps to the
nearest linearised boundary, repeating until the prediction changes or
`max_iter` steps are taken; the total step is finally scaled by
(1 + overshoot). As in cleverhans v2.1, only the `nb_candidate` classes with the
highest scores at the clean image are considered, and the attack moves away
from the clean prediction.

The linearised scores (`scores='auto'`) are minus half the squared distances
of the outputs to the targets. They decide exactly like the distance scores,
and their pairwise differences are affine in the outputs: for a model whose
outputs are affine in x (the setting DeepFool's derivation assumes) one step
lands on the boundary. For a softmax head with one-hot targets the decoding is
the argmax of the pre-activations, and 'auto' linearises those instead, as
cleverhans does: softmax probabilities saturate, their gradients vanish, and
linear steps on them overshoot far outside the image box (measured on the
MNIST `cpu` softmax_ce model: median L2 19.5 instead of about 1).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import heads
from mlrobust.attacks import core

SCORES = ('auto', 'logits', 'distance')


_STATIC = ('nb_candidate', 'use_logits', 'cleverhans')
# How the attack loops: None picks host-driven chunks of unrolled iterations
# on the CPU and one compiled while-loop program elsewhere; True or False
# forces one. Both compute the same (tested).
CHUNKED = None
CHUNK = 5  # Iterations per unrolled chunk.
MIN_BUCKET = 8  # The smallest batch finished examples are dropped to.


def _origin(clf, x, *, nb_candidate, cleverhans):
  """(original class [B], candidate classes [B, nc]) at the clean images.

  decoding: the candidates are the top classes by score at x, and an example
  stops when its decoded class changes. cleverhans: the original is the
  argmax of the d pre-activation units (cleverhans v2.1's DeepFool handed
  the d outputs of a codeword head as logits); its candidates are re-picked
  at every iterate, so none are fixed here (a placeholder [B, 1]).
  """
  if cleverhans:
    return (jnp.argmax(clf.logits(x), axis=1),
            jnp.zeros((x.shape[0], 1), jnp.int32))
  candidates = jax.lax.top_k(clf.scores(x), nb_candidate)[1]
  return candidates[:, 0], candidates


def _scores_fn(clf, candidates, *, nb_candidate, use_logits, cleverhans):
  """x_i -> (candidate scores [B, nc], the iterate's label [B]), from one
  forward pass; the attack linearises the candidate scores (minus half
  squared distances, or logits; cleverhans: the top units of the logits)."""
  if cleverhans:
    def fn(x_i):
      z = clf.logits(x_i)
      return jax.lax.top_k(z, nb_candidate)[0], jnp.argmax(z, axis=1)
    return fn

  def fn(x_i):
    if use_logits:  # One-hot head decoded by the argmax of the logits.
      full = clf.logits(x_i)
    else:  # Minus half squared distances: the decoding's order.
      full = -0.5 * heads.squared_distances(clf.outputs(x_i), clf.targets)
    return (jnp.take_along_axis(full, candidates, axis=1),
            jnp.argmax(full, axis=1).astype(jnp.int32))
  return fn


def _step(x, original, scores_fn, carry, max_iter):
  """One DeepFool iteration for the examples whose label has not changed.

  One forward pass at the iterate gives both its label (has it left the
  original class? then the example stops) and the candidate scores, whose
  nb_candidate gradients give the step to the nearest linearised boundary.
  Past `max_iter` nothing changes, so chunks of steps may overrun.
  """
  i, r_tot, active = carry
  b = x.shape[0]
  pixel_axes = tuple(range(1, x.ndim))
  x_i = jnp.clip(x + r_tot, 0.0, 1.0)
  f, vjp_fn, label = jax.vjp(scores_fn, x_i, has_aux=True)
  live = i < max_iter
  active = active & (label == original) & live
  nb_candidate = f.shape[1]
  cotangents = jnp.broadcast_to(jnp.eye(nb_candidate)[:, None, :],
                                (nb_candidate, b, nb_candidate))
  grads = jax.vmap(lambda ct: vjp_fn(ct)[0])(cotangents)  # [nc, B, ...]
  w = grads[1:] - grads[:1]                                # [nc-1, B, ...]
  f_diff = (f[:, 1:] - f[:, :1]).T                         # [nc-1, B]
  w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(
      a + 1 for a in pixel_axes)))
  pert = (jnp.abs(f_diff) + 1e-5) / jnp.maximum(w_norm, 1e-12)
  best = jnp.argmin(pert, axis=0)                          # [B]
  pick = lambda a: jnp.take_along_axis(
      a, best.reshape((1, b) + (1,) * (a.ndim - 2)), axis=0)[0]
  w_best, norm_best, pert_best = pick(w), pick(w_norm), pick(pert)
  scale = pert_best / jnp.maximum(norm_best, 1e-12)
  r_i = scale.reshape((b,) + (1,) * (x.ndim - 1)) * w_best
  mask = active.reshape((b,) + (1,) * (x.ndim - 1))
  return (jnp.where(live, i + 1, i), r_tot + jnp.where(mask, r_i, 0.0),
          active)


def _finish(clf, x, r_tot, overshoot):
  adv = jnp.clip(x + (1.0 + overshoot) * r_tot, 0.0, 1.0)
  adv = jax.lax.stop_gradient(adv)
  return adv, clf.predict(adv)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _deepfool(clf, x, y, rng, overshoot, max_iter, *, nb_candidate,
              use_logits, cleverhans):
  """The DeepFool loop as one program (a while loop); per-example stopping."""
  del y, rng
  original, candidates = _origin(clf, x, nb_candidate=nb_candidate,
                                 cleverhans=cleverhans)
  scores_fn = _scores_fn(clf, candidates, nb_candidate=nb_candidate,
                         use_logits=use_logits, cleverhans=cleverhans)
  carry = (jnp.array(0), jnp.zeros_like(x), jnp.ones((x.shape[0],), bool))
  _, r_tot, _ = jax.lax.while_loop(
      lambda c: jnp.any(c[2]) & (c[0] < max_iter),
      lambda c: _step(x, original, scores_fn, c, max_iter), carry)
  return _finish(clf, x, r_tot, overshoot)


@functools.partial(jax.jit, static_argnames=_STATIC + ('steps',))
def _chunk(clf, x, original, candidates, carry, max_iter, *, nb_candidate,
           use_logits, cleverhans, steps):
  """`steps` unrolled iterations on the clean images x."""
  scores_fn = _scores_fn(clf, candidates, nb_candidate=nb_candidate,
                         use_logits=use_logits, cleverhans=cleverhans)
  for _ in range(steps):
    carry = _step(x, original, scores_fn, carry, max_iter)
  return carry


_finish_jit = jax.jit(_finish)
_origin_jit = jax.jit(_origin, static_argnames=('nb_candidate', 'cleverhans'))


def _deepfool_chunked(clf, x, y, rng, overshoot, max_iter, *, nb_candidate,
                      use_logits, cleverhans):
  """The same attack driven from the host in chunks of unrolled iterations,
  dropping the examples that have stopped into smaller power-of-two batches
  between chunks (see `mlrobust.attacks.cw._cw_chunked`)."""
  del y, rng
  b = x.shape[0]
  chunk = functools.partial(_chunk, nb_candidate=nb_candidate,
                            use_logits=use_logits, cleverhans=cleverhans,
                            steps=CHUNK)
  origin = _origin_jit(clf, x, nb_candidate=nb_candidate,
                       cleverhans=cleverhans)
  r_full = jnp.zeros_like(x)
  rows, n = np.arange(b), b  # rows[:n] are examples, the rest repeat them.
  carry = (jnp.array(0), r_full, jnp.ones((b,), bool))
  sub = (x, *origin)
  while True:
    carry = chunk(clf, *sub, carry, max_iter)
    i, active = jax.device_get((carry[0], carry[2]))
    running = active[:n]
    if i >= max_iter or not running.any():
      break
    size = max(MIN_BUCKET, 1 << int(np.ceil(np.log2(running.sum()))))
    if size < len(rows):
      r_full = r_full.at[rows[:n]].set(carry[1][:n])
      keep = rows[:n][running]
      rows, n = np.concatenate([keep, np.full(size - len(keep),
                                              keep[0])]), len(keep)
      sub = (x[rows], *(a[rows] for a in origin))
      carry = (carry[0], r_full[rows], jnp.ones((size,), bool))
  r_full = r_full.at[rows[:n]].set(carry[1][:n])
  return _finish_jit(clf, x, r_full, overshoot)


def _decodes_as_argmax_of_logits(clf) -> bool:
  targets = np.asarray(clf.targets)
  return (clf.activation in ('softmax', 'identity') and
          targets.shape[0] == targets.shape[1] and
          np.array_equal(targets, np.eye(targets.shape[0])))


def deepfool(clf, x, y, *, targeted=False, rng=None, nb_candidate=10,
             overshoot=0.02, max_iter=50, scores='auto',
             semantics='decoding',
             batch_size=None) -> core.AttackResult:
  """Untargeted DeepFool.

  Args:
    clf: a `mlrobust.classifier.Classifier`.
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] true labels (success = prediction != y).
    targeted: must be False (DeepFool is untargeted only).
    rng: unused (deterministic).
    nb_candidate: classes considered, the top ones at the clean image
      (capped at the number of classes; >= 2).
    overshoot: the final perturbation is scaled by 1 + overshoot.
    max_iter: maximum linearisation steps (the paper sweeps 10 ... 40).
    scores: what is linearised: 'distance' (minus half squared distances),
      'logits' (pre-activations; only valid where the decoding is their
      argmax) or 'auto' (see module docstring).
    semantics: 'decoding' (the default: candidates and stopping by the
      generic decoding) or 'cleverhans' (what cleverhans v2.1 computes when
      the d pre-activations are handed to it as logits: the top units,
      re-picked each step, stopping when the argmax unit changes; the same as
      'decoding' with logits for one-hot heads, up to the candidates being
      re-picked). Success is always judged by the decoding.
    batch_size: examples per compiled call (None: all at once).
  """
  if targeted:
    raise ValueError('deepfool is untargeted only; use targeted=False')
  core.check_values(nb_candidate=nb_candidate, overshoot=overshoot,
                    max_iter=max_iter)
  if scores not in SCORES:
    raise ValueError(f'unknown scores {scores!r}; choose one of {SCORES}')
  argmax_logits = _decodes_as_argmax_of_logits(clf)
  if scores == 'logits' and not argmax_logits:
    raise ValueError("scores='logits' needs one-hot targets with a softmax "
                     "or identity head (the decoding must be the argmax of "
                     "the logits)")
  use_logits = scores == 'logits' or (scores == 'auto' and argmax_logits)
  core.check_values(semantics=semantics)
  x, y = core.check_inputs(clf, x, y, targeted=False)
  cleverhans = semantics == 'cleverhans'
  width = clf.targets.shape[1] if cleverhans else clf.num_classes
  nc = min(nb_candidate, width)
  chunked = jax.default_backend() == 'cpu' if CHUNKED is None else CHUNKED
  fn = functools.partial(_deepfool_chunked if chunked else _deepfool,
                         nb_candidate=nc, use_logits=use_logits,
                         cleverhans=cleverhans)
  return core.run_batched(
      lambda clf, x, y, key: fn(clf, x, y, key, overshoot, max_iter), clf, x,
      y, batch_size=batch_size, targeted=False, rng=core.default_rng(rng))
