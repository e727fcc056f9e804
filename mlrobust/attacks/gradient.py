"""The gradient family: FGSM, BIM, MIM and PGD (Linf), from shared parts.

All four ascend (untargeted) or descend (targeted) an attack loss with signed
gradient steps, projected onto the eps ball around x and onto [0, 1]:
  FGSM (Goodfellow et al., 2015): one step of size eps.
  BIM (Kurakin et al., 2016): nb_iter steps of eps_iter from x.
  MIM (Dong et al., 2018): BIM with a momentum of L1-normalised gradients.
  PGD (Madry et al., 2018): BIM from a uniform random start in the ball.
Defaults are those of cleverhans v2.1, which Saito & Roy used (Table 2).
eps and eps_iter are traced, so a sweep over eps reuses one compilation; the
iterations run in `jax.lax.fori_loop`.
"""

import functools

import jax
import jax.numpy as jnp

from mlrobust.attacks import core


def _loss_grad(clf, x, y, *, targeted, loss):
  """Gradient of the summed attack loss, signed so that ascent attacks."""
  sign = -1.0 if targeted else 1.0
  fn = lambda x: sign * jnp.sum(core.attack_loss(clf, x, y, loss))
  return jax.grad(fn)(x)


def _project(x_adv, x, eps):
  """Onto the Linf ball of radius eps around x, then into [0, 1]."""
  return jnp.clip(x + jnp.clip(x_adv - x, -eps, eps), 0.0, 1.0)


def _l1_normalise(g):
  norm = jnp.sum(jnp.abs(g), axis=tuple(range(1, g.ndim)), keepdims=True)
  return g / jnp.maximum(norm, 1e-12)


# XLA:CPU runs a convolution inside a while loop about 4x slower than the
# same convolution in straight-line code (measured: benchmarks/attacks.py and
# BENCHMARKS.md), so on the CPU the loop is unrolled when it is short enough
# to compile in seconds. It is still one compiled program.
_CPU_UNROLL_LIMIT = 64


def _unroll(nb_iter: int) -> bool:
  # True, not nb_iter: an integer unroll keeps a (one-trip) while loop.
  return jax.default_backend() == 'cpu' and nb_iter <= _CPU_UNROLL_LIMIT


@functools.partial(jax.jit, static_argnames=('targeted', 'loss', 'nb_iter',
                                             'rand_init', 'momentum',
                                             'unroll'))
def _iterative(clf, x, y, rng, eps, eps_iter, decay, *, targeted, loss,
               nb_iter, rand_init, momentum, unroll=False):
  """The shared loop; returns (adversarial images, their predictions)."""
  eps = jnp.asarray(eps, x.dtype)
  eps_iter = jnp.asarray(eps_iter, x.dtype)
  if rand_init:  # rng: one key per example (core.example_keys).
    noise = jax.vmap(lambda k: jax.random.uniform(
        k, x.shape[1:], x.dtype, -eps, eps))(rng)
    start = x + noise
    x_adv = jnp.clip(start, 0.0, 1.0)
  else:
    x_adv = x

  def body(_, carry):
    x_adv, velocity = carry
    g = _loss_grad(clf, x_adv, y, targeted=targeted, loss=loss)
    if momentum:
      velocity = decay * velocity + _l1_normalise(g)
      g = velocity
    x_adv = _project(x_adv + eps_iter * jnp.sign(g), x, eps)
    return x_adv, velocity

  carry = (x_adv, jnp.zeros_like(x))
  if unroll:
    # Unrolled while tracing: still one compiled program, without XLA's
    # while loop (see _CPU_UNROLL_LIMIT).
    for i in range(nb_iter):
      carry = body(i, carry)
  else:
    carry = jax.lax.fori_loop(0, nb_iter, body, carry)
  x_adv, _ = carry
  x_adv = jax.lax.stop_gradient(x_adv)
  return x_adv, clf.predict(x_adv)


def _attack(clf, x, y, *, targeted, rng, eps, eps_iter, nb_iter, loss,
            rand_init, momentum, decay, batch_size):
  core.check_values(eps=eps, eps_iter=eps_iter, nb_iter=nb_iter, loss=loss)
  x, y = core.check_inputs(clf, x, y, targeted=targeted)
  fn = functools.partial(_iterative, targeted=targeted, loss=loss,
                         nb_iter=nb_iter, rand_init=rand_init,
                         momentum=momentum, unroll=_unroll(nb_iter))
  return core.run_batched(
      lambda clf, x, y, key: fn(clf, x, y, key, eps, eps_iter, decay), clf, x,
      y, batch_size=batch_size, targeted=targeted, rng=core.default_rng(rng))


def fgsm(clf, x, y, *, targeted=False, rng=None, eps=0.3, loss='train',
         batch_size=None) -> core.AttackResult:
  """Fast gradient sign method: x + eps * sign(grad), clipped to [0, 1].

  Args:
    clf: a `mlrobust.classifier.Classifier`.
    x: [B, H, W, C] float images in [0, 1] (not modified).
    y: [B] true labels (untargeted) or target classes (targeted).
    targeted: move towards y instead of away from it.
    rng: unused (FGSM is deterministic); accepted for a uniform signature.
    eps: Linf size of the step (>= 0).
    loss: attack loss, one of core.ATTACK_LOSSES.
    batch_size: examples per compiled call (None: all at once).

  Returns:
    An AttackResult.
  """
  return _attack(clf, x, y, targeted=targeted, rng=rng, eps=eps,
                 eps_iter=eps, nb_iter=1, loss=loss, rand_init=False,
                 momentum=False, decay=0.0, batch_size=batch_size)


def bim(clf, x, y, *, targeted=False, rng=None, eps=0.3, eps_iter=0.05,
        nb_iter=10, loss='train', batch_size=None) -> core.AttackResult:
  """Basic iterative method: nb_iter projected signed steps of eps_iter."""
  return _attack(clf, x, y, targeted=targeted, rng=rng, eps=eps,
                 eps_iter=eps_iter, nb_iter=nb_iter, loss=loss,
                 rand_init=False, momentum=False, decay=0.0,
                 batch_size=batch_size)


def mim(clf, x, y, *, targeted=False, rng=None, eps=0.3, eps_iter=0.06,
        nb_iter=10, decay=1.0, loss='train',
        batch_size=None) -> core.AttackResult:
  """Momentum iterative method: g <- decay g + grad / ||grad||_1 per example."""
  core.check_values(decay=decay)
  return _attack(clf, x, y, targeted=targeted, rng=rng, eps=eps,
                 eps_iter=eps_iter, nb_iter=nb_iter, loss=loss,
                 rand_init=False, momentum=True, decay=decay,
                 batch_size=batch_size)


def pgd(clf, x, y, *, targeted=False, rng=None, eps=0.3, eps_iter=0.01,
        nb_iter=40, loss='train', batch_size=None) -> core.AttackResult:
  """Madry et al. PGD: uniform random start in the eps ball, then BIM steps."""
  return _attack(clf, x, y, targeted=targeted, rng=rng, eps=eps,
                 eps_iter=eps_iter, nb_iter=nb_iter, loss=loss,
                 rand_init=True, momentum=False, decay=0.0,
                 batch_size=batch_size)
