"""Shared parts of the attacks: input checks, attack losses, results, batching.

Every attack reads the classifier only through `mlrobust.classifier.Classifier`
(outputs, distance-decoded scores, training loss), so it works with every head.
Success is decided by the generic decoding: prediction != y (untargeted) or
prediction == y (targeted, y = target classes).
"""

import functools
import hashlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import classifier as classifier_lib
from mlrobust import sharding

# Losses of the gradient attacks. 'train': the model's own training loss
# against the target representation (cross-entropy for CE models, MSE for MSE
# models; Saito & Roy Section 4.3.2). 'ce': cross-entropy on the class scores.
# 'margin': best other class score minus the class's score. 'dlr': the margin
# divided by the spread of the top scores (Croce & Hein 2020; `dlr_loss`).
ATTACK_LOSSES = ('train', 'ce', 'margin', 'dlr')


class AttackResult(NamedTuple):
  """Adversarial images and per-example outcome (numpy arrays)."""
  adv: np.ndarray      # [B, H, W, C] float32 in [0, 1]
  success: np.ndarray  # [B] bool, by the generic decoding
  l2: np.ndarray       # [B] ||adv - x||_2
  linf: np.ndarray     # [B] ||adv - x||_inf
  prediction: np.ndarray  # [B] int32 predicted class of adv


def attack_loss(clf: classifier_lib.Classifier, x: jax.Array, y: jax.Array,
                name: str) -> jax.Array:
  """Per-example loss [B] of class y; attacks ascend it (untargeted)."""
  if name == 'train':
    return clf.loss(x, y)
  scores = clf.scores(x)
  if name == 'ce':
    return -jnp.take_along_axis(jax.nn.log_softmax(scores), y[:, None],
                                axis=1)[:, 0]
  if name == 'margin':
    return margin(scores, y)
  if name == 'dlr':
    return dlr_loss(scores, y)
  raise ValueError(f'unknown attack loss {name!r}; choose one of '
                   f'{list(ATTACK_LOSSES)}')


def dlr_loss(scores, y, target=None):
  """Difference-of-logits ratio [B] on class scores (Croce & Hein 2020).

  Untargeted: -(s_y - max_{i != y} s_i) / (s_pi1 - s_pi3 + 1e-12), with
  s_pi1 >= s_pi2 >= ... the sorted scores; targeted (target given):
  -(s_y - s_t) / (s_pi1 - (s_pi3 + s_pi4) / 2 + 1e-12). Attacks ascend it.
  Invariant to shifting and scaling the scores.
  """
  k = scores.shape[1]
  srt = jnp.sort(scores, axis=1)[:, ::-1]
  own = jnp.take_along_axis(scores, y[:, None], axis=1)[:, 0]
  if target is None:
    others = jnp.where(jax.nn.one_hot(y, k, dtype=bool), -jnp.inf, scores)
    return -(own - jnp.max(others, axis=1)) / (srt[:, 0] - srt[:, 2] + 1e-12)
  tgt = jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
  return -(own - tgt) / (srt[:, 0] - (srt[:, 2] + srt[:, 3]) / 2 + 1e-12)


def margin(scores: jax.Array, y: jax.Array) -> jax.Array:
  """max_{k != y} scores_k - scores_y: [B]; > 0 iff y is not predicted."""
  own = jnp.take_along_axis(scores, y[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, scores.shape[1], dtype=bool), -jnp.inf,
                     scores)
  return jnp.max(others, axis=1) - own


def is_success(prediction: jax.Array, y: jax.Array,
               targeted: bool) -> jax.Array:
  return prediction == y if targeted else prediction != y


def cleverhans_success(clf: classifier_lib.Classifier, x: jax.Array,
                       y: jax.Array, targeted: bool,
                       confidence=0.0) -> jax.Array:
  """cleverhans v2.1's `compare` [B]: argmax of the logits z against the
  argmax of the label vector t = targets[y] (a codeword's largest unit), with
  the confidence margin, as its CW and L-BFGS attacks judge iterates."""
  return cleverhans_compare(clf.logits(x), clf.targets, y, targeted,
                            confidence)


def cleverhans_compare(z: jax.Array, targets: jax.Array, y: jax.Array,
                       targeted: bool, confidence=0.0) -> jax.Array:
  """`cleverhans_success` from logits z [B, d] already computed."""
  unit = jnp.argmax(targets[y], axis=1)
  hit = jax.nn.one_hot(unit, z.shape[1], dtype=z.dtype)
  if targeted:
    return jnp.argmax(z - confidence * hit, axis=1) == unit
  return jnp.argmax(z + confidence * hit, axis=1) != unit


def per_example_norms(delta: jax.Array):
  flat = delta.reshape(delta.shape[0], -1)
  return jnp.linalg.norm(flat, axis=1), jnp.max(jnp.abs(flat), axis=1)


def check_inputs(clf: classifier_lib.Classifier, x, y, *, targeted: bool):
  """Validates images and labels on the host; returns them as arrays.

  Raises:
    ValueError: non-float or non-4-D images, NaN/inf, values outside [0, 1],
      labels of the wrong shape or range, or target == label is impossible to
      detect here (targets are the caller's choice).
  """
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'x must be float images [B, H, W, C], got shape '
                     f'{x.shape} and dtype {x.dtype}')
  if not np.all(np.isfinite(x)):
    raise ValueError('x contains NaN or infinite values')
  if x.min() < 0 or x.max() > 1:
    raise ValueError(f'x must lie in [0, 1], got values in [{x.min()}, '
                     f'{x.max()}]')
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'y must be integer labels of shape ({x.shape[0]},), got '
                     f'shape {y.shape} and dtype {y.dtype}')
  k = clf.num_classes
  if y.size and (y.min() < 0 or y.max() >= k):
    what = 'target classes' if targeted else 'labels'
    raise ValueError(f'{what} must lie in [0, {k}), got [{y.min()}, '
                     f'{y.max()}]')
  return x.astype(np.float32), y.astype(np.int32)


def check_param(name: str, value, *, minimum=None, exclusive=False,
                integer=False, maximum=None):
  """Raises ValueError unless minimum <= value (< if exclusive) <= maximum."""
  if integer and (not isinstance(value, (int, np.integer)) or
                  isinstance(value, bool)):
    raise ValueError(f'{name} must be an integer, got {value!r}')
  v = np.asarray(value)
  if not np.all(np.isfinite(v)):
    raise ValueError(f'{name} must be finite, got {value!r}')
  if minimum is not None:
    bad = np.any(v <= minimum) if exclusive else np.any(v < minimum)
    if bad:
      op = '>' if exclusive else '>='
      raise ValueError(f'{name} must be {op} {minimum}, got {value!r}')
  if maximum is not None and np.any(v > maximum):
    raise ValueError(f'{name} must be <= {maximum}, got {value!r}')


# The allowed values of every attack parameter (checked before any work).
PARAM_RULES = {
    'eps': dict(minimum=0),
    'eps_iter': dict(minimum=0),
    'nb_iter': dict(minimum=1, integer=True),
    'decay': dict(minimum=0),
    'initial_const': dict(minimum=0, exclusive=True),
    'confidence': dict(minimum=0),
    'learning_rate': dict(minimum=0, exclusive=True),
    'binary_search_steps': dict(minimum=1, integer=True),
    'max_iterations': dict(minimum=1, integer=True),
    'max_iter': dict(minimum=1, integer=True),
    'nb_candidate': dict(minimum=2, integer=True),
    'overshoot': dict(minimum=0),
    'batch_size': dict(minimum=1, integer=True),
    'n_queries': dict(minimum=1, integer=True),
    'p_init': dict(minimum=0, exclusive=True, maximum=1),
}


# How an attack chooses candidates and judges its iterates: 'decoding' (the
# generic distance decoding, the meaningful attack) or 'cleverhans' (what
# cleverhans v2.1 computes when a head's d pre-activations are handed to it as
# logits and codewords as labels: how the paper's tables were made). The
# final adversarial image is always classified by the decoding.
SEMANTICS = ('decoding', 'cleverhans')
# The norms of an attack's ball (apgd).
NORMS = ('linf', 'l2')
# Where cw_l2_distance measures its distances: the head's outputs or the
# pre-activations (the paper's "logits").
SPACES = ('outputs', 'logits')


def check_values(**params) -> None:
  """Raises ValueError for any attack parameter outside its allowed values."""
  for name, value in params.items():
    if name == 'loss':
      check_loss(value)
    elif name == 'semantics':
      if value not in SEMANTICS:
        raise ValueError(f'unknown semantics {value!r}; choose one of '
                         f'{list(SEMANTICS)}')
    elif name == 'space':
      if value not in SPACES:
        raise ValueError(f'unknown space {value!r}; choose one of '
                         f'{list(SPACES)}')
    elif name == 'norm':
      if value not in NORMS:
        raise ValueError(f'unknown norm {value!r}; choose one of '
                         f'{list(NORMS)}')
    elif name in PARAM_RULES:
      check_param(name, value, **PARAM_RULES[name])


def check_loss(name: str):
  if name not in ATTACK_LOSSES:
    raise ValueError(f'unknown attack loss {name!r}; choose one of '
                     f'{list(ATTACK_LOSSES)}')


def example_keys(rng: jax.Array, x: np.ndarray) -> jax.Array:
  """One key per example [B], from `rng` and the example's own pixels.

  An example's randomness (e.g. PGD's random start) thus depends on neither
  its position nor the other images of its call.
  """
  flat = np.ascontiguousarray(x).reshape(len(x), -1)
  seeds = np.array([int.from_bytes(
      hashlib.blake2b(row.tobytes(), digest_size=4).digest(), 'little')
                    for row in flat], np.uint32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, seeds)


def run_batched(fn: Callable, clf, x: np.ndarray, y: np.ndarray, *,
                batch_size: int | None, targeted: bool, rng: jax.Array,
                extra: np.ndarray | None = None,
                **kwargs) -> AttackResult:
  """Runs the jitted `fn(clf, x, y, keys, **kwargs) -> adv` over batches.

  `keys` [b] are the examples' own keys (`example_keys`); with `extra` (one
  more per-example array), `fn(clf, x, y, keys, extra, **kwargs)`. Each
  batch's
  adversarial images are copied to the host before the next batch starts, so
  memory is bounded by one batch.
  """
  n = len(x)
  batch_size = batch_size or max(n, 1)
  check_values(batch_size=batch_size)
  mesh = sharding.current()
  ndev = mesh.devices.size
  if ndev > 1:  # Examples split across the devices, the model on each.
    clf = sharding.replicate(clf, mesh)
  outs = []
  for start in range(0, n, batch_size):
    xb_host = x[start:start + batch_size]
    parts = [xb_host, y[start:start + batch_size]]
    if extra is not None:
      parts.append(extra[start:start + batch_size])
    real = len(xb_host)
    if ndev > 1:  # Padding repeats an example: it changes no other result.
      parts = [sharding.pad(np.asarray(a), ndev) for a in parts]
    keys = example_keys(rng, parts[0])
    arrays = [jnp.asarray(a) for a in parts] + [keys]
    if ndev > 1:
      arrays = sharding.shard(arrays, mesh)
    xb, yb, *rest = arrays
    *extra_b, keys = rest
    adv, pred = fn(clf, xb, yb, keys, *extra_b, **kwargs)
    outs.append([a[:real] for a in jax.device_get(
        _outcome(adv, xb, pred, yb, targeted))])
  if not outs:
    empty = np.zeros((0,), np.float32)
    return AttackResult(x.copy(), empty.astype(bool), empty, empty,
                        empty.astype(np.int32))
  return AttackResult(*(np.concatenate(parts) for parts in zip(*outs)))


def keep_closest(success, candidate, l2, best_l2, best_adv):
  """Takes the candidate where it succeeds closer than the best so far.

  Returns (best_l2, best_adv); `l2` is the candidate's squared distance [B].
  """
  better = success & (l2 < best_l2)
  mask = better.reshape((better.shape[0],) + (1,) * (candidate.ndim - 1))
  return jnp.where(better, l2, best_l2), jnp.where(mask, candidate, best_adv)


def next_const(found, const, lower, upper):
  """(const, lower, upper) after a round of the search over c: success
  lowers the upper end; failure raises the lower end, or multiplies c by 10
  while no success bounds it (as in cleverhans)."""
  upper = jnp.where(found, jnp.minimum(upper, const), upper)
  lower = jnp.where(found, lower, jnp.maximum(lower, const))
  const = jnp.where(upper < 1e9, (lower + upper) / 2.0, const * 10.0)
  return const, lower, upper


def search_over_c(round_fn: Callable, initial_const, x: jax.Array,
                  binary_search_steps: int) -> jax.Array:
  """Binary search over the constant c, per example (Carlini & Wagner 2017).

  `round_fn(const [B], best_l2 [B], best_adv) -> (found [B] bool, best_l2,
  best_adv)` runs one round of the attack at c = const and keeps the closest
  success (with `keep_closest`). After each round, as in cleverhans: success
  lowers the upper end of c's interval; failure raises the lower end, or
  multiplies c by 10 while no success bounds it. Returns the closest
  successful images (x where none succeeded).
  """
  b = x.shape[0]

  def body(_, carry):
    const, lower, upper, best_l2, best_adv = carry
    found, best_l2, best_adv = round_fn(const, best_l2, best_adv)
    const, lower, upper = next_const(found, const, lower, upper)
    return const, lower, upper, best_l2, best_adv

  init = (jnp.full((b,), initial_const, x.dtype), jnp.zeros((b,), x.dtype),
          jnp.full((b,), 1e10, x.dtype), jnp.full((b,), jnp.inf, x.dtype), x)
  *_, best_adv = jax.lax.fori_loop(0, binary_search_steps, body, init)
  return best_adv


@functools.partial(jax.jit, static_argnums=(4,))
def _outcome(adv, x, pred, y, targeted):
  l2, linf = per_example_norms(adv - x)
  return adv, is_success(pred, y, targeted), l2, linf, pred


def random_targets(key: jax.Array, labels, num_classes: int) -> np.ndarray:
  """One random target per example, different from its label (seeded)."""
  labels = jnp.asarray(labels)
  shift = jax.random.randint(key, labels.shape, 1, num_classes)
  return np.asarray((labels + shift) % num_classes, np.int32)


def default_rng(rng):
  return jax.random.key(0) if rng is None else rng
