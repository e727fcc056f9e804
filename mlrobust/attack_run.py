"""`--mode=attack`: attack a trained workdir's model on test images.

  python launch.py --config=configs/mnist.py:tanh_mse,cpu --workdir=W \
      --mode=attack --config.attack.name=pgd --config.attack.eps=0.3

loads the checkpoint in W, attacks the first `config.eval.num_examples` test
images, and writes `W/attacks/<name>_<targeted|untargeted>_<params>.json` with
the clean accuracy, the accuracy under attack (untargeted) or success rate
(targeted), the perturbation sizes and the exact parameters used.
"""

import inspect
import json
import os
import time

from absl import logging
import jax
import numpy as np

from mlrobust import attacks
from mlrobust import classifier
from mlrobust import data
from mlrobust import train

PARAM_FIELDS = ('loss', 'eps', 'eps_iter', 'nb_iter', 'decay', 'initial_const',
                'binary_search_steps', 'max_iterations', 'learning_rate',
                'confidence', 'max_iter', 'nb_candidate', 'overshoot')


def attack_params(attack_config) -> dict:
  """The attack's keyword arguments from `config.attack`.

  Raises:
    ValueError: unknown attack, a parameter the attack does not take, or a
      targeted/untargeted setting the attack does not support.
  """
  name = attack_config.name
  fn = attacks.get(name)
  accepted = set(inspect.signature(fn).parameters)
  params = {}
  for field in PARAM_FIELDS:
    value = attack_config[field]
    if value is None:
      continue
    if field not in accepted:
      allowed = sorted(accepted & set(PARAM_FIELDS))
      raise ValueError(f'attack {name!r} does not take config.attack.{field}; '
                       f'it takes {allowed}')
    params[field] = value
  if attack_config.targeted and name in attacks.UNTARGETED_ONLY:
    raise ValueError(f'{name} is untargeted only; set '
                     f'config.attack.targeted=False')
  if not attack_config.targeted and name in attacks.TARGETED_ONLY:
    raise ValueError(f'{name} is targeted only; set '
                     f'config.attack.targeted=True')
  return params


def effective_params(name: str, params: dict) -> dict:
  """The given parameters plus the attack's defaults for the others."""
  signature = inspect.signature(attacks.get(name))
  out = {k: p.default for k, p in signature.parameters.items()
         if k in PARAM_FIELDS}
  out.update(params)
  return out


def summarize(result: attacks.AttackResult, labels, targeted) -> dict:
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


def _result_name(name, targeted, params):
  parts = [name, 'targeted' if targeted else 'untargeted']
  parts += [f'{k}={params[k]:g}' if isinstance(params[k], float) else
            f'{k}={params[k]}' for k in sorted(params)]
  return '_'.join(parts) + '.json'


def run_attack(config, workdir: str) -> dict:
  """Attacks the trained model of `workdir`; returns and writes the summary."""
  a = config.attack
  params = attack_params(a)
  clf = train.load_classifier(config, workdir)
  dataset_name, x, labels = data.load_test(config.data,
                                           config.eval.num_examples)
  rng = jax.random.key(a.seed)
  target_key, attack_key = jax.random.split(rng)
  clean_pred = classifier.predict_batched(clf, x, a.batch_size)
  goal = (attacks.random_targets(target_key, labels, clf.num_classes)
          if a.targeted else labels)
  logging.info('Attacking %d %s test images with %s (%s) %s', len(x),
               dataset_name, a.name, 'targeted' if a.targeted else
               'untargeted', params)
  start = time.time()
  result = attacks.get(a.name)(clf, x, goal, targeted=a.targeted,
                               rng=attack_key, batch_size=a.batch_size,
                               **params)
  wall = time.time() - start
  summary = {
      'dataset': dataset_name, 'preset': config.preset,
      'model': f'densenet-{config.model.depth}-k{config.model.growth_rate}',
      'attack': a.name, 'targeted': bool(a.targeted),
      'params': effective_params(a.name, params), 'seed': a.seed,
      'clean_accuracy': float(np.mean(clean_pred == labels)),
      **summarize(result, labels, a.targeted),
      'wall_s': wall,
  }
  out_dir = os.path.join(workdir, 'attacks')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, _result_name(a.name, a.targeted, params))
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  summary['path'] = path
  return summary
