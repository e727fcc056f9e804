"""Runs, or reuses, the evaluation cells of one trained run.

A cell (`mlrobust.grids.Cell`) is one attack run at one value on the first n
test images; its result is the file `<workdir>/eval/<cell id>.json`. Both
`--mode=evaluate` (the paper's grids) and `--mode=sweep` (one parameter over
several runs) compute cells through `Runner`, so they reuse each other's
results, and refuse stale ones, in the same way.
"""

import dataclasses
import inspect
import os
import socket
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


def _examples(x, adv, labels, goal, pred, k):
  return dict(clean=x[:k], adv=adv[:k], label=labels[:k], goal=goal[:k],
              prediction=pred[:k])


def load_proxy(config, workdir):
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


class Runner:
  """Runs, or reuses, the evaluation cells of one trained workdir.

  Holds the model, the first `num_images` test images (0 = all), the targets
  of targeted cells (drawn from `config.eval.seed`: the same for every model
  of a dataset) and the optional transfer proxy. `run(cell)` writes
  `<workdir>/eval/<cell id>.json` (and `.npz` examples) under the cell's lock
  (`workdir_lib.cell_lock`), so evaluations and sweeps that share a workdir
  compute each cell once and reuse each other's cells.
  """

  def __init__(self, config, workdir: str, num_images: int, proxy=None):
    self.config, self.workdir, self.proxy = config, workdir, proxy
    self.clf, self.provenance = workdir_lib.load_trained(config, workdir)
    self.dataset, self.x, self.labels = data.load_test(config.data,
                                                       num_images)
    target_key, self.attack_key = jax.random.split(
        jax.random.key(config.eval.seed))
    self.goals = attacks.random_targets(target_key, self.labels,
                                        self.clf.num_classes)
    self.out_dir = workdir_lib.results_dir(workdir, 'eval')
    workdir_lib.check_writable(self.out_dir)
    self.meta = {'dataset': self.dataset,
                 'preset': workdir_lib.run_label(config),
                 'size': config.size, 'model': models.label(config.model),
                 'seed': config.eval.seed, **self.provenance}
    self.clean_pred = classifier.predict_batched(self.clf, self.x,
                                                 config.eval.batch_size)

  def path(self, cell: grids.Cell) -> str:
    return os.path.join(self.out_dir, cell.id + '.json')

  def _identity(self, cell, n):
    x, labels = self.x[:n], self.labels[:n]
    identity = {'model_fingerprint': self.provenance['model_fingerprint'],
                'step': self.provenance['step'], 'dataset': self.dataset,
                'test_images': workdir_lib.images_digest(x, labels)}
    if cell.targeted:
      identity['targets'] = workdir_lib.images_digest(self.goals[:n], labels)
    if self.proxy and cell.transfer_from:
      identity['proxy_fingerprint'] = self.proxy[3]['model_fingerprint']
    return identity

  def finished(self, cell: grids.Cell) -> dict | None:
    """The cell's result if it is done on this model and these images."""
    done = workdir_lib.read_cell(self.path(cell))
    if done is None:
      return None
    n = min(cell.num_examples, len(self.x))
    reason = workdir_lib.stale_reason(done, self._identity(cell, n))
    if reason is None:
      return done
    logging.warning('%s was computed on another model or images (%s); moving '
                    'it to .stale and running the cell again',
                    self.path(cell), reason)
    for suffix in ('.json', '.npz'):
      old = os.path.join(self.out_dir, cell.id + suffix)
      if os.path.exists(old):
        os.replace(old, old + '.stale')
    return None

  def run(self, cell: grids.Cell, *,
          wait: bool = True) -> tuple[dict | None, bool]:
    """(result, ran): the cell's result and whether this call computed it.

    With `wait=False`, a cell another process is computing is skipped at
    once: (None, False).
    """
    if cell.num_examples > len(self.x):
      raise ValueError(f'cell {cell.id} needs {cell.num_examples} test '
                       f'images; {len(self.x)} were loaded')
    with workdir_lib.cell_lock(self.path(cell), blocking=wait) as held:
      if not held:
        return None, False
      done = self.finished(cell)
      if done is not None:
        return done, False
      return self._compute(cell), True

  def _compute(self, cell):
    config, n = self.config, cell.num_examples
    x, labels = self.x[:n], self.labels[:n]
    goal = self.goals[:n] if cell.targeted else labels
    batch_size = config.attack.batch_size
    rng = jax.random.fold_in(self.attack_key, grids.ORDER.index(cell.attack))
    record = {**self.meta, **self._identity(cell, n), 'attack': cell.attack,
              'targeted': cell.targeted, 'param': cell.param,
              'value': cell.value, 'fixed': dict(cell.fixed),
              'params': attacks.effective_params(cell.attack, cell.params),
              'clean_accuracy': float(np.mean(self.clean_pred[:n] == labels)),
              'computed_by': f'{socket.gethostname()}:{os.getpid()}'}
    if cell.transfer_from:
      _, proxy_dir, proxy_clf, proxy_provenance = self.proxy
      adv, craft_s, proxy_acc = _crafted(
          proxy_dir, proxy_clf, proxy_provenance['model_fingerprint'], cell,
          x, labels, batch_size, rng)
      start = time.time()
      # The target only classifies the proxy's images.
      pred = classifier.predict_batched(self.clf, adv, config.eval.batch_size)
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
      result = fn(self.clf, x, goal, targeted=cell.targeted, rng=rng,
                  batch_size=batch_size, **cell.params, **extra)
      wall = time.time() - start
    record.update(attacks.summarize(result, labels, cell.targeted))
    record['success_rate'] = float(np.mean(result.success))
    record['wall_s'] = wall
    k = config.eval.save_examples
    if k:
      workdir_lib.write_npz(
          os.path.join(self.out_dir, cell.id + '.npz'),
          **_examples(x, result.adv, labels, goal, result.prediction, k))
    workdir_lib.write_json(self.path(cell), record)  # Last: cell finished.
    return record
