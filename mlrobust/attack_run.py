"""`--mode=attack`: attack a trained workdir's model on test images.

  python launch.py --config=configs/mnist.py:tanh_mse,cpu --workdir=W \
      --mode=attack --config.attack.name=pgd --config.attack.eps=0.3

loads the checkpoint in W, attacks the first `config.eval.num_examples` test
images, and writes `W/attacks/<name>_<targeted|untargeted>_<params>_n=<n>.json`
with the clean accuracy, the accuracy under attack (untargeted) or success
rate (targeted), the perturbation sizes, the exact parameters used and what it
was computed on (checkpoint step, model fingerprint, test-image digest).
"""

import inspect
import os
import time

from absl import logging
import jax
import numpy as np

from mlrobust import attacks
from mlrobust import classifier
from mlrobust import data
from mlrobust import models
from mlrobust import workdir as workdir_lib


def _result_name(name, targeted, params, n):
  parts = [name, 'targeted' if targeted else 'untargeted']
  parts += [f'{k}={params[k]:g}' if isinstance(params[k], float) else
            f'{k}={params[k]}' for k in sorted(params)]
  parts.append(f'n={n}')
  return '_'.join(parts) + '.json'


def run_attack(config, workdir: str) -> dict:
  """Attacks the trained model of `workdir`; returns and writes the summary."""
  params = attacks.params_from_config(config.attack)
  with workdir_lib.lock(workdir):
    return _run_attack(config, workdir, params)


def _run_attack(config, workdir, params):
  a = config.attack
  clf, provenance = workdir_lib.load_trained(config, workdir)
  out_dir = workdir_lib.results_dir(workdir, 'attacks')
  workdir_lib.check_writable(out_dir)
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
  fn = attacks.get(a.name)
  extra = ({'labels': labels} if a.targeted and
           'labels' in inspect.signature(fn).parameters else {})
  result = fn(clf, x, goal, targeted=a.targeted, rng=attack_key,
              batch_size=a.batch_size, **params, **extra)
  wall = time.time() - start
  summary = {
      'dataset': dataset_name, 'preset': workdir_lib.run_label(config),
      'model': models.label(config.model), **provenance,
      'test_images': workdir_lib.images_digest(x, labels),
      'attack': a.name, 'targeted': bool(a.targeted),
      'params': attacks.effective_params(a.name, params), 'seed': a.seed,
      'clean_accuracy': float(np.mean(clean_pred == labels)),
      **attacks.summarize(result, labels, a.targeted),
      'wall_s': wall,
  }
  path = os.path.join(out_dir,
                      _result_name(a.name, a.targeted, params, len(x)))
  workdir_lib.write_json(path, summary)
  summary['path'] = path
  return summary


def describe(r: dict) -> str:
  """Two lines for the command line."""
  metric = 'success rate' if r['targeted'] else 'accuracy under attack'
  l2, linf = r['median_l2_successful'], r['median_linf_successful']
  return (f'{r["attack"]} ({"targeted" if r["targeted"] else "untargeted"}) '
          f'on {r["num_examples"]} {r["dataset"]} test images, '
          f'{r["preset"]} {r["model"]}: clean accuracy '
          f'{r["clean_accuracy"]:.4f}, {metric} {r[r["metric"]]:.4f}; '
          f'median L2 {l2 if l2 is None else round(l2, 4)}, median Linf '
          f'{linf if linf is None else round(linf, 4)} of successful '
          f'examples ({r["wall_s"]:.0f} s){_step_note(r)}\n{r["path"]}')


def _step_note(r: dict) -> str:
  if r.get('final_step') is not None and r['step'] != r['final_step']:
    return (f'; on checkpoint step {r["step"]}, not the final step '
            f'{r["final_step"]}')
  return
