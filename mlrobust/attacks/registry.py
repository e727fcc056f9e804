"""Attacks by name, their parameters, and per-attack result summaries.

`get(name)` looks an attack up; `check_direction` says whether it runs
targeted or untargeted; `params_from_config(config.attack)` turns the attack
fields of a config into keyword arguments (rejecting any the attack does not
take); `effective_params` adds the attack's defaults, so a result file
records every parameter that produced it; `summarize` reduces an
AttackResult to the numbers result files and tables hold.
"""

import inspect

import numpy as np

from mlrobust.attacks import core
from mlrobust.attacks.auto_pgd import apgd
from mlrobust.attacks.core import AttackResult
from mlrobust.attacks.cw import cw_l2
from mlrobust.attacks.cw import cw_l2_distance
from mlrobust.attacks.deepfool import deepfool
from mlrobust.attacks.gradient import bim
from mlrobust.attacks.gradient import fgsm
from mlrobust.attacks.gradient import mim
from mlrobust.attacks.gradient import pgd
from mlrobust.attacks.hop_skip_jump import hop_skip_jump
from mlrobust.attacks.lbfgs import lbfgs
from mlrobust.attacks.square import P_INIT as SQUARE_P_INIT
from mlrobust.attacks.square import square

ATTACKS = {
    'fgsm': fgsm, 'bim': bim, 'mim': mim, 'pgd': pgd, 'lbfgs': lbfgs,
    'deepfool': deepfool, 'cw_l2': cw_l2, 'cw_l2_distance': cw_l2_distance,
    'apgd': apgd, 'square': square, 'hop_skip_jump': hop_skip_jump,
}
# Which attacks can run targeted / untargeted (Saito & Roy Section 2.3).
TARGETED_ONLY = ('lbfgs',)
UNTARGETED_ONLY = ('deepfool', 'square', 'hop_skip_jump')
# The attack parameters a config or a grid may set (config.attack.<field>).
PARAM_FIELDS = ('loss', 'eps', 'eps_iter', 'nb_iter', 'decay', 'initial_const',
                'binary_search_steps', 'max_iterations', 'learning_rate',
                'confidence', 'max_iter', 'nb_candidate', 'overshoot',
                'semantics', 'n_iter', 'rho', 'n_queries', 'p_init', 'norm',
                'space')
INT_PARAMS = ('nb_iter', 'binary_search_steps', 'max_iterations', 'max_iter',
              'nb_candidate', 'n_iter', 'n_queries')


def get(name: str):
  """The attack function `name`; raises ValueError listing valid names."""
  try:
    return ATTACKS[name]
  except KeyError:
    raise ValueError(f'unknown attack {name!r}; choose one of '
                     f'{sorted(ATTACKS)}') from None


def check_direction(name: str, targeted: bool) -> None:
  """Raises ValueError if `name` cannot run (un)targeted."""
  get(name)
  if targeted and name in UNTARGETED_ONLY:
    raise ValueError(f'{name} is untargeted only; run it with targeted=False')
  if not targeted and name in TARGETED_ONLY:
    raise ValueError(f'{name} is targeted only; run it with targeted=True')


def accepted_params(name: str) -> list[str]:
  """The PARAM_FIELDS that attack `name` takes."""
  accepted = set(inspect.signature(get(name)).parameters)
  return [f for f in PARAM_FIELDS if f in accepted]


def check_params(name: str, params) -> None:
  """Raises ValueError naming any parameter attack `name` does not take."""
  accepted = accepted_params(name)
  for field in params:
    if field not in accepted:
      raise ValueError(f'attack {name!r} does not take {field!r}; it takes '
                       f'{sorted(accepted)}')


def params_from_config(attack_config) -> dict:
  """The attack's keyword arguments from `config.attack` (unset: defaults).

  Raises:
    ValueError: unknown attack, a parameter the attack does not take, or a
      targeted/untargeted setting the attack does not support.
  """
  name = attack_config.name
  params = {f: attack_config[f] for f in PARAM_FIELDS
            if attack_config[f] is not None}
  try:
    check_params(name, params)
    check_direction(name, attack_config.targeted)
    core.check_values(**params)
  except ValueError as e:
    raise ValueError(f'config.attack: {e}') from None
  return params


def effective_params(name: str, params: dict) -> dict:
  """The given parameters plus the attack's defaults for the others."""
  signature = inspect.signature(get(name))
  out = {k: p.default for k, p in signature.parameters.items()
         if k in PARAM_FIELDS}
  out.update(params)
  if name == 'square' and out['p_init'] is None:  # Its default is per norm.
    out['p_init'] = SQUARE_P_INIT.get(out['norm'])
  return out


def summarize(result: AttackResult, labels, targeted: bool) -> dict:
  """Images, success rate, accuracy and perturbation sizes of successes."""
  success = result.success
  summary = {
      'num_examples': int(len(labels)),
      'success_rate': float(success.mean()),
      'accuracy': float(np.mean(result.prediction == labels)),
  }
  for norm, values in (('l2', result.l2), ('linf', result.linf)):
    hit = values[success]
    summary[f'mean_{norm}_successful'] = float(hit.mean()) if hit.size else None
    summary[f'median_{norm}_successful'] = (float(np.median(hit)) if hit.size
                                            else None)
  summary['metric'] = 'success_rate' if targeted else 'accuracy'
  return summary
