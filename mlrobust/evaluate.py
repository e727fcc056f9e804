r"""`--mode=evaluate`: the paper's attack grids on a trained workdir.

  python launch.py --config=configs/mnist.py:tanh_mse,cpu --workdir=W \
      --mode=evaluate --config.eval.proxy_workdir=W_CE

runs, on the model of W, every cell of
- Table 3: six untargeted white-box grids (CWL2 over c, MIM, BIM, FGSM and
  Madry et al./PGD over eps, DeepFool over its iteration count m; L-BFGS is
  targeted only, so the paper's Table 3 has six grids);
- Table 5: six targeted grids (L-BFGS, BIM, PGD, CWL2, MIM, FGSM);
- Table 6 (if `config.eval.proxy_workdir` names a different, trained
  `softmax_ce` run of the same dataset): untargeted CWL2 (c = 0.01), DeepFool
  (m = 10) and MIM (eps = 0.01) examples crafted on the proxy, then only
  *classified* by the target (the target's parameters and codebook are never
  used to craft them);
- Table 7 (softmax_ce and tanh_mse): targeted `cw_l2` and `cw_l2_distance` at
  c in {0.1, 1.0};
- Figure 1: targeted PGD on a ladder of eps values, up to the first that
  reaches 100% success.
Swept and constant parameters are the paper's Tables 1-2 (the attacks'
defaults). These are the structured entries of `config.eval.grids`, selected
by `config.eval.tables` (see `mlrobust.grids`); the user's own entries, or the
one-line shorthand `config.eval.grid`, run the same way.

Every cell is written, when it finishes, as one JSON file
`W/eval/<cell id>.json` (atomically: a temporary file renamed into place),
with the first `config.eval.save_examples` clean and adversarial images in
`W/eval/<cell id>.npz`. A killed evaluation restarts and skips the cells whose
file exists; a cell file that does not parse is moved aside to `.corrupt` and
the cell is run again. The cell id contains the attack, targeted or not, the
swept value, every parameter that differs from the paper's and the number of
images, so cells run under other settings never overwrite each other.

Images per cell are set per entry, or per attack family
(`config.eval.images.linf`, `.deepfool`, `.cw`, `.lbfgs`; 0 = the whole test
split). Targets of targeted attacks are drawn once per evaluation from
`config.eval.seed` (the same targets for every model of a dataset).

The metric is the accuracy (untargeted: fraction of the cell's images still
classified as their label) or the success rate (targeted: fraction classified
as the target), by the model's own decoding.
"""

import dataclasses
import inspect
import os
import time

from absl import logging
import jax
import numpy as np

from mlrobust import attacks
from mlrobust import classifier
from mlrobust import data
from mlrobust import grids
from mlrobust import models
from mlrobust import workdir as workdir_lib


class _Progress:
  """Logs each finished cell, the elapsed time and an estimate of the rest."""

  def __init__(self, cells):
    self.cells = cells
    self.start = time.time()
    self.times = {}  # family -> [seconds per image]

  def done(self, i, cell, result, ran: bool):
    if ran:
      self.times.setdefault(grids.FAMILIES[cell.attack], []).append(
          result['wall_s'] / max(cell.num_examples, 1))
    left, untimed = 0.0, set()
    for c in self.cells[i + 1:]:
      ts = self.times.get(grids.FAMILIES[c.attack])
      if ts:
        left += np.mean(ts) * c.num_examples
      else:
        untimed.add(grids.FAMILIES[c.attack])
    eta = f'{left / 60:.1f} min'
    if untimed:
      eta += f' + the {", ".join(sorted(untimed))} cells (not timed yet)'
    logging.info('[%d/%d] %s: %s %.4f (%s, %.0f s); elapsed %.1f min, '
                 'ETA %s', i + 1, len(self.cells), cell.id, result['metric'],
                 result[result['metric']],
                 'ran' if ran else 'already done', result.get('wall_s', 0),
                 (time.time() - self.start) / 60, eta)


def _examples(x, adv, labels, goal, pred, k):
  return dict(clean=x[:k], adv=adv[:k], label=labels[:k], goal=goal[:k],
              prediction=pred[:k])


def _proxy(config, workdir):
  """(name, config, classifier) of config.eval.proxy_workdir, checked."""
  proxy_dir = config.eval.proxy_workdir
  if not proxy_dir:
    return None
  if os.path.realpath(proxy_dir) == os.path.realpath(workdir):
    logging.info('Table 6: this run is the proxy itself; no transfer cells')
    return None
  proxy_config = workdir_lib.saved_config(proxy_dir)
  proxy_clf, provenance = workdir_lib.load_trained(proxy_config, proxy_dir)
  if proxy_config.data.name != config.data.name:
    raise ValueError(f'eval.proxy_workdir {proxy_dir} was trained on '
                     f'{proxy_config.data.name}, this run on '
                     f'{config.data.name}; transfer needs the same dataset')
  label = workdir_lib.run_label(proxy_config)
  if label != 'softmax_ce':
    logging.warning('Table 6 crafts on a softmax_ce proxy; %s is %s',
                    proxy_dir, label)
  base = os.path.basename(os.path.normpath(proxy_dir))
  return f'{label}-{base}', proxy_dir, proxy_clf, provenance


def _crafted(proxy_dir, proxy_clf, fingerprint, cell, x, labels, batch_size,
             rng):
  """The proxy's adversarial examples for a transfer cell (cached, atomic).

  The cache is used only if it was crafted by the same proxy model
  (`fingerprint`) on the same images.
  """
  out_dir = os.path.join(workdir_lib.results_dir(proxy_dir, 'eval'),
                         'crafted')
  os.makedirs(out_dir, exist_ok=True)
  own = dataclasses.replace(cell, transfer_from=None)
  path = os.path.join(out_dir, own.id + '.npz')
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        if (f['adv'].shape == x.shape and np.array_equal(f['label'], labels)
            and str(f['model_fingerprint']) == fingerprint):
          return f['adv'], float(f['wall_s']), float(f['proxy_accuracy'])
    except (ValueError, KeyError, OSError):
      pass
    logging.warning('%s was not crafted by this proxy model on these '
                    'images; crafting again', path)
  start = time.time()
  result = attacks.get(cell.attack)(proxy_clf, x, labels, targeted=False,
                                    rng=rng, batch_size=batch_size,
                                    **cell.params)
  wall = time.time() - start
  acc = float(np.mean(result.prediction == labels))
  workdir_lib.write_npz(path, adv=result.adv, label=labels, wall_s=wall,
                        proxy_accuracy=acc, model_fingerprint=fingerprint)
  return result.adv, wall, acc


def run_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the evaluation of `workdir`; returns the cell results.

  A finished cell is reused only if it was computed on this model (its
  fingerprint and checkpoint step) and these test images; otherwise it is
  moved aside to `.stale` and run again.
  """
  grids.check(config.eval)
  with workdir_lib.lock(workdir):
    return _run_evaluate(config, workdir)


def _run_evaluate(config, workdir):
  clf, provenance = workdir_lib.load_trained(config, workdir)
  proxy = _proxy(config, workdir)
  # As many test images as the largest cell needs (0 = all of them).
  dataset_name, x_all, labels_all = data.load_test(
      config.data, grids.max_images(config.eval))
  cells, ladders = grids.plan(config.eval, len(x_all),
                              proxy_name=proxy and proxy[0])
  key = jax.random.key(config.eval.seed)
  target_key, attack_key = jax.random.split(key)
  goals_all = attacks.random_targets(target_key, labels_all, clf.num_classes)
  out_dir = workdir_lib.results_dir(workdir, 'eval')
  workdir_lib.check_writable(out_dir)
  batch_size = config.attack.batch_size
  meta = {'dataset': dataset_name, 'preset': workdir_lib.run_label(config),
          'size': config.size, 'model': models.label(config.model),
          'seed': config.eval.seed, **provenance}
  clean_pred_all = classifier.predict_batched(clf, x_all,
                                              config.eval.batch_size)

  def run_cell(cell: grids.Cell) -> tuple[dict, bool]:
    path = os.path.join(out_dir, cell.id + '.json')
    n = cell.num_examples
    x, labels = x_all[:n], labels_all[:n]
    identity = {'model_fingerprint': provenance['model_fingerprint'],
                'step': provenance['step'], 'dataset': dataset_name,
                'test_images': workdir_lib.images_digest(x, labels)}
    if proxy and cell.transfer_from:
      identity['proxy_fingerprint'] = proxy[3]['model_fingerprint']
    done = workdir_lib.read_cell(path)
    if done is not None:
      reason = workdir_lib.stale_reason(done, identity)
      if reason is None:
        return done, False
      logging.warning('%s was computed on another model or images (%s); '
                      'moving it to .stale and running the cell again', path,
                      reason)
      for suffix in ('.json', '.npz'):
        old = os.path.join(out_dir, cell.id + suffix)
        if os.path.exists(old):
          os.replace(old, old + '.stale')
    goal = goals_all[:n] if cell.targeted else labels
    rng = jax.random.fold_in(attack_key, grids.ORDER.index(cell.attack))
    record = {**meta, **identity, 'attack': cell.attack,
              'targeted': cell.targeted, 'param': cell.param,
              'value': cell.value,
              'fixed': dict(cell.fixed),
              'params': attacks.effective_params(cell.attack, cell.params),
              'clean_accuracy': float(np.mean(clean_pred_all[:n] == labels))}
    if cell.transfer_from:
      _, proxy_dir, proxy_clf, proxy_provenance = proxy
      adv, craft_s, proxy_acc = _crafted(
          proxy_dir, proxy_clf, proxy_provenance['model_fingerprint'], cell,
          x, labels, batch_size, rng)
      start = time.time()
      # The target only classifies the proxy's images.
      pred = classifier.predict_batched(clf, adv, config.eval.batch_size)
      wall = time.time() - start + craft_s
      flat = (adv - x).reshape(n, -1)
      l2, linf = np.linalg.norm(flat, axis=1), np.abs(flat).max(axis=1)
      result = attacks.AttackResult(adv, pred != labels, l2, linf, pred)
      record.update(transfer_from=cell.transfer_from,
                    proxy_workdir=os.path.abspath(proxy_dir),
                    proxy_accuracy=proxy_acc)
    else:
      start = time.time()
      fn = attacks.get(cell.attack)
      extra = ({'labels': labels} if cell.targeted and
               'labels' in inspect.signature(fn).parameters else {})
      result = fn(clf, x, goal, targeted=cell.targeted, rng=rng,
                  batch_size=batch_size, **cell.params, **extra)
      wall = time.time() - start
    record.update(attacks.summarize(result, labels, cell.targeted))
    record['success_rate'] = float(np.mean(result.success))
    record['wall_s'] = wall
    k = config.eval.save_examples
    if k:
      workdir_lib.write_npz(
          os.path.join(out_dir, cell.id + '.npz'),
          **_examples(x, result.adv, labels, goal, result.prediction, k))
    workdir_lib.write_json(path, record)  # Last: marks the cell finished.
    return record, True

  results = []
  progress = _Progress(cells)
  for i, cell in enumerate(cells):
    record, ran = run_cell(cell)
    progress.done(i, cell, record, ran)
    results.append(record)
  for ladder in ladders:
    for cell in ladder:
      record, _ = run_cell(cell)
      results.append(record)
      logging.info('Ladder: %s %s %s=%g success %.4f', cell.attack,
                   'targeted' if cell.targeted else 'untargeted', cell.param,
                   cell.value, record['success_rate'])
      if record['success_rate'] >= 1.0:
        break
  return {'workdir': workdir, 'dataset': dataset_name,
          'preset': workdir_lib.run_label(config),
          'cells': results, 'path': out_dir}


def describe(result: dict) -> str:
  """One line for the command line."""
  return (f'{len(result["cells"])} cells of {result["preset"]} on '
          f'{result["dataset"]} in {result["path"]}; render them with '
          f'python launch.py --mode=report --workdirs=...')


def sweep(clf, x, y, attack: str, param: str, values, *, targeted=False,
          batch_size=None, rng=None, **fixed) -> list[dict]:
  """Runs `attack` at each value of `param`; one compilation for the sweep.

  For sweep scripts: eps, c (initial_const), DeepFool's max_iter and the
  step sizes are traced arguments of the compiled attacks, so a sweep over
  them, and over several models of the same architecture, reuses one
  compiled program per attack and batch shape. Returns one summary per value
  (`attacks.summarize` plus the parameters).
  """
  attacks.check_direction(attack, targeted)
  fn = attacks.get(attack)
  y = np.asarray(y)
  out = []
  for v in values:
    start = time.time()
    result = fn(clf, x, y, targeted=targeted, rng=rng, batch_size=batch_size,
                **{param: v}, **fixed)
    out.append({'attack': attack, 'targeted': targeted, 'param': param,
                'value': v, **fixed,
                **attacks.summarize(result, y, targeted),
                'wall_s': time.time() - start})
  return out
