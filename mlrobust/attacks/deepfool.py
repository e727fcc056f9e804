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


@functools.partial(jax.jit, static_argnames=('nb_candidate', 'use_logits',
                                             'cleverhans'))
def _deepfool(clf, x, y, rng, overshoot, max_iter, *, nb_candidate,
              use_logits, cleverhans):
  """The DeepFool loop; per-example stopping.

  decoding: the candidates are the top classes by score at x, their scores
  (minus half squared distances, or logits) are linearised, and an example
  stops when its decoded class changes. cleverhans: the candidates are the
  top `nb_candidate` of the d pre-activation units, re-picked at every
  iterate, and an example stops when its argmax unit changes (cleverhans
  v2.1's DeepFool handed the d outputs of a codeword head as logits).
  """
  del y, rng
  b = x.shape[0]
  pixel_axes = tuple(range(1, x.ndim))

  def half_sq_scores(x):
    if use_logits:
      return clf.logits(x)
    return -0.5 * heads.squared_distances(clf.outputs(x), clf.targets)

  if cleverhans:
    original = jnp.argmax(clf.logits(x), axis=1)

    def candidate_scores(x):
      return jax.lax.top_k(clf.logits(x), nb_candidate)[0]

    def label(x):
      return jnp.argmax(clf.logits(x), axis=1)
  else:
    candidates = jax.lax.top_k(clf.scores(x), nb_candidate)[1]  # [B, nc]
    original = candidates[:, 0]

    def candidate_scores(x):
      return jnp.take_along_axis(half_sq_scores(x), candidates, axis=1)

    label = clf.predict

  def body(carry):
    i, r_tot, active = carry
    x_i = jnp.clip(x + r_tot, 0.0, 1.0)
    f, vjp_fn = jax.vjp(candidate_scores, x_i)
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
    r_tot = r_tot + jnp.where(mask, r_i, 0.0)
    still = label(jnp.clip(x + r_tot, 0.0, 1.0)) == original
    return i + 1, r_tot, active & still

  def cond(carry):
    i, _, active = carry
    return jnp.any(active) & (i < max_iter)

  _, r_tot, _ = jax.lax.while_loop(
      cond, body, (jnp.array(0), jnp.zeros_like(x), jnp.ones((b,), bool)))
  adv = jnp.clip(x + (1.0 + overshoot) * r_tot, 0.0, 1.0)
  adv = jax.lax.stop_gradient(adv)
  return adv, clf.predict(adv)


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
  fn = functools.partial(_deepfool, nb_candidate=nc, use_logits=use_logits,
                         cleverhans=cleverhans)
  return core.run_batched(
      lambda clf, x, y, key: fn(clf, x, y, key, overshoot, max_iter), clf, x,
      y, batch_size=batch_size, targeted=False, rng=core.default_rng(rng))
