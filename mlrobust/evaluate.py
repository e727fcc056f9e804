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
  reaches 100% success (`config.eval.figure1_eps`).
Swept and constant parameters are the paper's Tables 1-2 (the attacks'
defaults). `config.eval.grid` replaces all of that by the user's own grid.

Every cell is written, when it finishes, as one JSON file
`W/eval/<cell id>.json` (atomically: a temporary file renamed into place),
with the first `config.eval.save_examples` clean and adversarial images in
`W/eval/<cell id>.npz`. A killed evaluation restarts and skips the cells whose
file exists; a cell file that does not parse is moved aside to `.corrupt` and
the cell is run again. The cell id contains the attack, targeted or not, the
swept value, every parameter that differs from the paper's and the number of
images, so cells run under other settings never overwrite each other.

Images per cell are set per attack family (`config.eval.num_examples_linf`,
`_deepfool`, `_cw`, `_lbfgs`; 0 = the whole test split). Targets of targeted
attacks are drawn once per evaluation from `config.eval.seed` (the same
targets for every model of a dataset).

The metric is the accuracy (untargeted: fraction of the cell's images still
classified as their label) or the success rate (targeted: fraction classified
as the target), by the model's own decoding.
"""

import dataclasses
import json
import os
import time

from absl import logging
import jax
import numpy as np

from mlrobust import attack_run
from mlrobust import attacks
from mlrobust import classifier
from mlrobust import data
from mlrobust import paper_tables
from mlrobust import train

FAMILIES = {'fgsm': 'linf', 'bim': 'linf', 'mim': 'linf', 'pgd': 'linf',
            'deepfool': 'deepfool', 'cw_l2': 'cw', 'cw_l2_distance': 'cw',
            'lbfgs': 'lbfgs'}
# The order in which a grid's attacks run: fast ones first.
_ORDER = ('fgsm', 'bim', 'mim', 'pgd', 'deepfool', 'cw_l2', 'cw_l2_distance',
          'lbfgs')
TABLES = ('table3', 'table5', 'table6', 'table7', 'figure1')


@dataclasses.dataclass(frozen=True)
class Cell:
  """One attack run: an attack, a swept value and the images it uses."""
  attack: str
  targeted: bool
  param: str            # The swept parameter.
  value: float | int
  num_examples: int
  fixed: tuple = ()     # ((name, value), ...) parameters not the paper's.
  transfer_from: str | None = None  # Proxy run name (Table 6), else None.

  @property
  def params(self) -> dict:
    return {self.param: self.value, **dict(self.fixed)}

  @property
  def id(self) -> str:
    parts = []
    if self.transfer_from:
      parts.append(f'transfer-from-{self.transfer_from}')
    parts += [self.attack, 'targeted' if self.targeted else 'untargeted',
              f'{self.param}={self.value:g}']
    parts += [f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}'
              for k, v in self.fixed]
    parts.append(f'n={self.num_examples}')
    return '_'.join(parts)


def paper_grid(table: str):
  """[(attack, targeted, param, values)] of a paper table."""
  if table == 'table3':
    return [(a, False, paper_tables.SWEPT[a], tuple(g['mnist']['softmax_ce']))
            for a, g in paper_tables.TABLE3.items()]
  if table == 'table5':
    return [(a, True, paper_tables.SWEPT[a], tuple(g['mnist']['softmax_ce']))
            for a, g in paper_tables.TABLE5.items()]
  if table == 'table7':
    return [(a, True, 'initial_const', paper_tables.TABLE7_CONSTS)
            for a in ('cw_l2', 'cw_l2_distance')]
  if table == 'table6':
    return [(a, False, paper_tables.SWEPT[a], (v,))
            for a, v in paper_tables.TABLE6_ATTACKS]
  raise ValueError(f'unknown table {table!r}; choose from {TABLES}')


def parse_grid(spec: str):
  """The user's grid: '[targeted:]attack:param=v1,v2;...' -> grid entries.

  Example: 'pgd:eps=0.01,0.03;targeted:cw_l2_distance:initial_const=0.1'.
  """
  grid = []
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    words = part.split(':')
    targeted = words[0] == 'targeted'
    if words[0] in ('targeted', 'untargeted'):
      words = words[1:]
    if len(words) != 2 or '=' not in words[1]:
      raise ValueError(f'bad grid entry {part!r}; expected '
                       "'[targeted:]attack:param=v1,v2,...'")
    attack, assignment = words
    attacks.get(attack)
    param, values = assignment.split('=', 1)
    if param not in attack_run.PARAM_FIELDS:
      raise ValueError(f'grid entry {part!r}: unknown parameter {param!r}; '
                       f'choose from {list(attack_run.PARAM_FIELDS)}')
    try:
      vals = tuple(int(v) if param in _INT_PARAMS else float(v)
                   for v in values.split(','))
    except ValueError:
      raise ValueError(f'grid entry {part!r}: values must be numbers') from None
    _check_direction(attack, targeted)
    grid.append((attack, targeted, param, vals))
  if not grid:
    raise ValueError(f'empty grid {spec!r}')
  return grid


_INT_PARAMS = ('nb_iter', 'binary_search_steps', 'max_iterations', 'max_iter',
               'nb_candidate')


def _check_direction(attack, targeted):
  if targeted and attack in attacks.UNTARGETED_ONLY:
    raise ValueError(f'{attack} is untargeted only')
  if not targeted and attack in attacks.TARGETED_ONLY:
    raise ValueError(f'{attack} is targeted only; write targeted:{attack}')


def check_config(config) -> None:
  """Validates config.eval for --mode=evaluate; raises ValueError."""
  e = config.eval
  for family in ('linf', 'deepfool', 'cw', 'lbfgs'):
    n = e[f'num_examples_{family}']
    if n is not None and n < 0:
      raise ValueError(f'eval.num_examples_{family} must be >= 0 (0 = the '
                       f'whole test split), got {n}')
  tables = [t.strip() for t in e.tables.split(',') if t.strip()]
  unknown = sorted(set(tables) - set(TABLES))
  if unknown or not tables:
    raise ValueError(f'eval.tables {e.tables!r}: unknown {unknown}; choose '
                     f'from {list(TABLES)}')
  if e.grid:
    parse_grid(e.grid)
  for name in ('cw_max_iterations', 'lbfgs_max_iterations'):
    if e[name] is not None and e[name] < 1:
      raise ValueError(f'eval.{name} must be >= 1, got {e[name]}')
  if e.save_examples < 0:
    raise ValueError('eval.save_examples must be >= 0')


def _num_examples(config, attack: str, num_test: int) -> int:
  n = config.eval[f'num_examples_{FAMILIES[attack]}']
  if n is None:
    n = config.eval.num_examples
  return num_test if n == 0 else int(min(n, num_test))


def _fixed(config, attack: str) -> tuple:
  """Parameters that differ from the paper's for `attack` (CPU budgets)."""
  e = config.eval
  if attack in ('cw_l2', 'cw_l2_distance') and e.cw_max_iterations:
    return (('max_iterations', int(e.cw_max_iterations)),)
  if attack == 'lbfgs' and e.lbfgs_max_iterations:
    return (('max_iterations', int(e.lbfgs_max_iterations)),)
  return ()


def plan(config, num_test: int, *, proxy_name: str | None = None):
  """The cells of the evaluation config.eval asks for, fast attacks first."""
  if config.eval.grid:
    entries = [('grid', e) for e in parse_grid(config.eval.grid)]
  else:
    tables = [t.strip() for t in config.eval.tables.split(',') if t.strip()]
    entries = []
    for t in tables:
      if t == 'figure1':
        continue
      if t == 'table7' and config.preset not in ('softmax_ce', 'tanh_mse'):
        continue  # The paper's Table 7 has these two models only.
      if t == 'table6' and proxy_name is None:
        continue
      entries += [(t, e) for e in paper_grid(t)]
  cells = []
  for table, (attack, targeted, param, values) in entries:
    n = _num_examples(config, attack, num_test)
    for v in values:
      cell = Cell(attack, targeted, param, v, n, _fixed(config, attack),
                  proxy_name if table == 'table6' else None)
      if cell not in cells:
        cells.append(cell)
  cells.sort(key=lambda c: (c.transfer_from is not None,
                            _ORDER.index(c.attack)))
  return cells


def _atomic_json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _atomic_npz(path: str, **arrays) -> None:
  tmp = path + '.tmp.npz'
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def read_cell(path: str) -> dict | None:
  """A finished cell's result, or None; an unparsable file is moved aside."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      result = json.load(f)
    result['metric']  # pylint: disable=pointless-statement
    return result
  except (ValueError, KeyError, TypeError):
    logging.warning('%s does not parse as a cell result; moving it to '
                    '%s.corrupt and running the cell again', path, path)
    os.replace(path, path + '.corrupt')
    return None


def load_run(workdir: str):
  """(config, classifier) of a trained workdir, from its own config.json."""
  config = train.saved_config(workdir)
  return config, train.load_classifier(config, workdir)


class _Progress:
  """Logs each finished cell with the elapsed time and an estimate of the rest."""

  def __init__(self, cells):
    self.cells = cells
    self.start = time.time()
    self.times = {}  # family -> [seconds per image]

  def done(self, i, cell, result, ran: bool):
    if ran:
      self.times.setdefault(FAMILIES[cell.attack], []).append(
          result['wall_s'] / max(cell.num_examples, 1))
    left, untimed = 0.0, set()
    for c in self.cells[i + 1:]:
      ts = self.times.get(FAMILIES[c.attack])
      if ts:
        left += np.mean(ts) * c.num_examples
      else:
        untimed.add(FAMILIES[c.attack])
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
  proxy_config, proxy_clf = load_run(proxy_dir)
  if proxy_config.data.name != config.data.name:
    raise ValueError(f'eval.proxy_workdir {proxy_dir} was trained on '
                     f'{proxy_config.data.name}, this run on '
                     f'{config.data.name}; transfer needs the same dataset')
  if proxy_config.preset != 'softmax_ce':
    logging.warning('Table 6 crafts on a softmax_ce proxy; %s is %s',
                    proxy_dir, proxy_config.preset)
  name = f'{proxy_config.preset}-{os.path.basename(os.path.normpath(proxy_dir))}'
  return name, proxy_dir, proxy_clf


def _crafted(proxy_dir, proxy_clf, cell, x, labels, batch_size, rng):
  """The proxy's adversarial examples for a transfer cell (cached, atomic)."""
  out_dir = os.path.join(proxy_dir, 'eval', 'crafted')
  os.makedirs(out_dir, exist_ok=True)
  own = dataclasses.replace(cell, transfer_from=None)
  path = os.path.join(out_dir, own.id + '.npz')
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        if f['adv'].shape == x.shape and np.array_equal(f['label'], labels):
          return f['adv'], float(f['wall_s']), float(f['proxy_accuracy'])
    except (ValueError, KeyError, OSError):
      pass
    logging.warning('%s does not match these images; crafting again', path)
  start = time.time()
  result = attacks.get(cell.attack)(proxy_clf, x, labels, targeted=False,
                                    rng=rng, batch_size=batch_size,
                                    **cell.params)
  wall = time.time() - start
  acc = float(np.mean(result.prediction == labels))
  _atomic_npz(path, adv=result.adv, label=labels, wall_s=wall,
              proxy_accuracy=acc)
  return result.adv, wall, acc


def run_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the evaluation of `workdir`; returns the cell results."""
  check_config(config)
  clf = train.load_classifier(config, workdir)
  proxy = _proxy(config, workdir)
  # Load as many test images as the largest cell needs (0 = all of them).
  wanted = [_num_examples(config, a, np.inf) for a in FAMILIES]
  dataset_name, x_all, labels_all = data.load_test(
      config.data, 0 if np.inf in wanted else int(max(wanted)))
  num_test = len(x_all)
  cells = plan(config, num_test, proxy_name=proxy and proxy[0])
  tables = [t.strip() for t in config.eval.tables.split(',')]
  figure1 = 'figure1' in tables and not config.eval.grid
  n_figure1 = _num_examples(config, 'pgd', num_test)
  if config.eval.num_examples_figure1:
    n_figure1 = min(n_figure1, config.eval.num_examples_figure1)
  key = jax.random.key(config.eval.seed)
  target_key, attack_key = jax.random.split(key)
  goals_all = attacks.random_targets(target_key, labels_all, clf.num_classes)
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  batch_size = config.attack.batch_size
  meta = {'dataset': dataset_name, 'preset': config.preset,
          'size': config.size,
          'model': f'densenet-{config.model.depth}-k{config.model.growth_rate}',
          'seed': config.eval.seed}
  clean_pred_all = classifier.predict_batched(clf, x_all, config.eval.batch_size)

  def run_cell(cell: Cell) -> tuple[dict, bool]:
    path = os.path.join(out_dir, cell.id + '.json')
    done = read_cell(path)
    if done is not None:
      return done, False
    n = cell.num_examples
    x, labels = x_all[:n], labels_all[:n]
    goal = goals_all[:n] if cell.targeted else labels
    rng = jax.random.fold_in(attack_key, _ORDER.index(cell.attack))
    record = {**meta, 'attack': cell.attack, 'targeted': cell.targeted,
              'param': cell.param, 'value': cell.value,
              'fixed': dict(cell.fixed),
              'params': attack_run.effective_params(cell.attack, cell.params),
              'clean_accuracy': float(np.mean(clean_pred_all[:n] == labels))}
    if cell.transfer_from:
      _, proxy_dir, proxy_clf = proxy
      adv, craft_s, proxy_acc = _crafted(proxy_dir, proxy_clf, cell, x,
                                         labels, batch_size, rng)
      start = time.time()
      pred = classifier.predict_batched(clf, adv, config.eval.batch_size)  # Labels only.
      wall = time.time() - start + craft_s
      flat = (adv - x).reshape(n, -1)
      l2, linf = np.linalg.norm(flat, axis=1), np.abs(flat).max(axis=1)
      result = attacks.AttackResult(adv, pred != labels, l2, linf, pred)
      record.update(transfer_from=cell.transfer_from,
                    proxy_workdir=os.path.abspath(proxy_dir),
                    proxy_accuracy=proxy_acc)
    else:
      start = time.time()
      result = attacks.get(cell.attack)(clf, x, goal, targeted=cell.targeted,
                                        rng=rng, batch_size=batch_size,
                                        **cell.params)
      wall = time.time() - start
    record.update(attack_run.summarize(result, labels, cell.targeted))
    record['success_rate'] = float(np.mean(result.success))
    record['wall_s'] = wall
    k = config.eval.save_examples
    if k:
      _atomic_npz(os.path.join(out_dir, cell.id + '.npz'),
                  **_examples(x, result.adv, labels, goal, result.prediction,
                              k))
    _atomic_json(path, record)  # Last: the JSON marks the cell finished.
    return record, True

  results = []
  progress = _Progress(cells)
  for i, cell in enumerate(cells):
    record, ran = run_cell(cell)
    progress.done(i, cell, record, ran)
    results.append(record)
  if figure1:
    for eps in config.eval.figure1_eps:
      cell = Cell('pgd', True, 'eps', float(eps), n_figure1)
      record, _ = run_cell(cell)
      results.append(record)
      logging.info('Figure 1 ladder: targeted pgd eps=%g success %.4f', eps,
                   record['success_rate'])
      if record['success_rate'] >= 1.0:
        break
  return {'workdir': workdir, 'dataset': dataset_name, 'preset': config.preset,
          'cells': results, 'path': out_dir}


def sweep(clf, x, y, attack: str, param: str, values, *, targeted=False,
          batch_size=None, rng=None, **fixed) -> list[dict]:
  """Runs `attack` at each value of `param`; one compilation for the sweep.

  For sweep scripts: eps, c (initial_const), DeepFool's max_iter and the
  step sizes are traced arguments of the compiled attacks, so a sweep over
  them, and over several models of the same architecture, reuses one
  compiled program per attack and batch shape. Returns one summary per value
  (`attack_run.summarize` plus the parameters).
  """
  _check_direction(attack, targeted)
  fn = attacks.get(attack)
  y = np.asarray(y)
  out = []
  for v in values:
    start = time.time()
    result = fn(clf, x, y, targeted=targeted, rng=rng, batch_size=batch_size,
                **{param: v}, **fixed)
    out.append({'attack': attack, 'targeted': targeted, 'param': param,
                'value': v, **fixed,
                **attack_run.summarize(result, y, targeted),
                'wall_s': time.time() - start})
  return out


def cell_results(workdir: str) -> list[dict]:
  """Every finished cell of `workdir` (for reports)."""
  out_dir = os.path.join(workdir, 'eval')
  if not os.path.isdir(out_dir):
    return []
  results = []
  for name in sorted(os.listdir(out_dir)):
    if name.endswith('.json'):
      with open(os.path.join(out_dir, name)) as f:
        r = json.load(f)
      r['id'] = name[:-len('.json')]
      results.append(r)
  return results
