"""Adversarial attacks written in JAX against the generic distance decoding.

Every attack takes a `mlrobust.classifier.Classifier`, images and labels:

  result = attacks.pgd(clf, x, y, eps=0.3)                  # untargeted
  result = attacks.get('mim')(clf, x, t, targeted=True, eps=0.1)

and returns an `AttackResult(adv, success, l2, linf, prediction)` of numpy
arrays. `x` is [B, H, W, C] float in [0, 1] and is never modified; `y` holds the
true labels (untargeted: success = prediction != y) or the target classes
(targeted: success = prediction == y). The box [0, 1] is always respected and
the Linf attacks stay inside their eps ball.

A runnable example on a linear model with a random codebook:

  import jax, jax.numpy as jnp
  from mlrobust import attacks, classifier, heads
  w = jax.random.normal(jax.random.key(0), (4, 8))
  clf = classifier.from_function(
      lambda x: x.reshape(len(x), -1) @ w,
      heads.make_codebook(jax.random.key(1), 3, 8), activation='tanh')
  x = jax.random.uniform(jax.random.key(2), (5, 2, 2, 1))
  y = clf.predict(x)
  print(attacks.fgsm(clf, x, y, eps=0.1).success)
  t = attacks.random_targets(jax.random.key(3), y, 3)
  print(attacks.cw_l2_distance(clf, x, t, targeted=True).l2)

Attacks: fgsm, bim, mim, pgd (Linf, gradient family), lbfgs (targeted only),
deepfool (untargeted only), cw_l2 and cw_l2_distance (L2). Parameter defaults
are cleverhans v2.1's, as Saito & Roy used them (their Table 2). Not in the
paper: apgd (Auto-PGD, Croce & Hein 2020; Linf, or L2 with norm='l2') and
square (Linf, or L2 with norm='l2', the score-based Square Attack,
Andriushchenko et al. 2020;
untargeted only; it queries the class scores and never a gradient) and
hop_skip_jump (Linf or L2, HopSkipJump, Chen et al. 2020; untargeted only;
decision-based: it sees only the predicted class, as when the codebook is
secret). The
registry (`get`, `check_direction`, `params_from_config`, `effective_params`,
`summarize`) is in `registry.py`.
"""

from mlrobust.attacks.auto_pgd import apgd
from mlrobust.attacks.core import ATTACK_LOSSES
from mlrobust.attacks.core import AttackResult
from mlrobust.attacks.core import check_values
from mlrobust.attacks.core import random_targets
from mlrobust.attacks.cw import cw_l2
from mlrobust.attacks.cw import cw_l2_distance
from mlrobust.attacks.deepfool import deepfool
from mlrobust.attacks.gradient import bim
from mlrobust.attacks.gradient import fgsm
from mlrobust.attacks.gradient import mim
from mlrobust.attacks.gradient import pgd
from mlrobust.attacks.hop_skip_jump import hop_skip_jump
from mlrobust.attacks.lbfgs import lbfgs
from mlrobust.attacks.registry import accepted_params
from mlrobust.attacks.registry import ATTACKS
from mlrobust.attacks.registry import check_direction
from mlrobust.attacks.registry import check_params
from mlrobust.attacks.registry import effective_params
from mlrobust.attacks.registry import get
from mlrobust.attacks.registry import INT_PARAMS
from mlrobust.attacks.registry import PARAM_FIELDS
from mlrobust.attacks.registry import params_from_config
from mlrobust.attacks.registry import summarize
from mlrobust.attacks.registry import TARGETED_ONLY
from mlrobust.attacks.registry import UNTARGETED_ONLY
from mlrobust.attacks.square import square
