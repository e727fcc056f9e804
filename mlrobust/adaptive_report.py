"""The adaptive evaluation in the report: robust accuracy against eps per
attack, and the masking checklist, per run.

Reads what `--mode=adaptive` wrote (`mlrobust.adaptive_run`),
W/adaptive/ensemble_eps=<eps>_n=<n>.json (one per eps) and
W/adaptive/checklist_n=<n>.json, for the largest n with ensemble files, and
renders, for `mlrobust.report`:
- per run, one row per eps: the accuracy under the paper-style PGD, FGSM,
  APGD-CE and random sign noise of the same size (the checklist's numbers),
  the ensemble's robust accuracy, each with its 95% Wilson interval, and the
  images each member broke; then the checklist, PASS / FAIL / INFO per item
  with its numbers and, for a FAIL, what it suggests;
- <dataset>_adaptive.png: robust accuracy against eps, one panel per run:
  the ensemble with its 95% band, the paper-style PGD and FGSM.
A file that is not such a result, or is one of another dataset, model or
training than its run (and the run's eval cells), is refused, naming it.
"""

import math
import os
import re

from mlrobust import paper_tables
from mlrobust import plots
from mlrobust import stats
from mlrobust import workdir as workdir_lib

_NAME = re.compile(r'(?:ensemble_eps=(?P<eps>[^_]+)|checklist)_n=(?P<n>\d+)'
                   r'\.json')
# The checklist's per-eps numbers shown as columns: (key, column heading).
_COLUMNS = (('paper-style pgd', 'paper-style PGD'), ('fgsm', 'FGSM'),
            ('apgd-ce', 'APGD-CE'), ('noise', 'random noise'))
_MARK = {True: 'PASS', False: 'FAIL', None: 'INFO'}


def _rate(value, name: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or
      not 0 <= value <= 1):
    raise ValueError(f'{name} {value!r} is not a rate in [0, 1]')
  return value


def eps_label(eps: float) -> str:
  """`eps` as the tables show it: 0.1, or 0.0313725 (8/255) for k/255."""
  k = round(eps * 255)
  if (k and math.isclose(eps * 255, k, rel_tol=1e-5)
      and f'{eps:g}' != f'{eps:.4g}'):
    return f'{eps:g} ({k}/255)'
  return f'{eps:g}'


def _check_common(record, n: int) -> None:
  if not isinstance(record, dict):
    raise TypeError('not a JSON object')
  for key in ('dataset', 'preset', 'model', 'model_fingerprint', 'step',
              'test_images'):
    record[key]  # pylint: disable=pointless-statement
  members = record['members']
  if not isinstance(members, list) or not all(
      isinstance(m, str) for m in members):
    raise ValueError(f'members {members!r} is not a list of names')
  if record['num_examples'] != n:
    raise ValueError(f"num_examples {record['num_examples']!r}, but the file "
                     f'name says n={n}')


def _check_ensemble(record, eps: float, n: int) -> None:
  """Raises KeyError, TypeError or ValueError unless an ensemble result."""
  _check_common(record, n)
  # The file name holds eps to 6 significant digits (`:g`), e.g. 8/255.
  if not math.isclose(record['eps'], eps, rel_tol=1e-5):
    raise ValueError(f"eps {record['eps']!r}, but the file name says {eps:g}")
  accuracy = _rate(record['robust_accuracy'], 'robust_accuracy')
  _rate(record['clean_accuracy'], 'clean_accuracy')
  low, high = (_rate(v, 'interval') for v in record['interval'])
  if not low <= accuracy <= high:
    raise ValueError(f'robust_accuracy {accuracy} is outside its interval '
                     f'[{low}, {high}]')
  if not isinstance(record['per_member'], dict):
    raise ValueError(f"per_member {record['per_member']!r} is not a mapping")
  for member, broken in record['per_member'].items():
    if not isinstance(broken, int) or not 0 <= broken <= n:
      raise ValueError(f'per_member {member!r}: {broken!r} is not a number '
                       f'of images of {n}')
  float(record.get('wall_s', 0.0))


def checklist_grid(record) -> list[float]:
  """The eps grid of a checklist: the keys 'eps=<eps>' of its 'monotone in
  budget' item, ascending like the grid (JSON sorted them as text); [] if
  it has no such item."""
  for item in record['items']:
    if item['check'] == 'monotone in budget':
      return sorted(float(k.removeprefix('eps=')) for k in item['numbers'])
  return []


def _check_checklist(record, n: int) -> None:
  """Raises KeyError, TypeError or ValueError unless a checklist."""
  _check_common(record, n)
  for i, item in enumerate(record['items']):
    if not isinstance(item['check'], str) or not isinstance(
        item['numbers'], dict) or not isinstance(item['if it fails'], str):
      raise ValueError(f'item {i} is not a checklist item')
    if item['pass'] not in (True, False, None):
      raise ValueError(f"item {i}: pass {item['pass']!r} is none of true, "
                       'false, null')
  grid = checklist_grid(record)
  for key, _ in _COLUMNS:
    values = _numbers(record, key)
    if values is not None and grid and len(values) != len(grid):
      raise ValueError(f'{key!r} has {len(values)} values for the '
                       f'{len(grid)} eps of the checklist')
    for v in values or ():
      _rate(v, key)


def _numbers(checklist, key):
  """The per-eps list `key` among the checklist's numbers, or None."""
  for item in checklist['items']:
    values = item['numbers'].get(key)
    if isinstance(values, list):
      return values
  return None


def read(workdir: str, identity: tuple, fingerprints=()) -> dict | None:
  """The adaptive results of `workdir` on the most images, or None.

  Args:
    workdir: the run.
    identity: (dataset, preset, model) of the run; every file must have it.
    fingerprints: the model fingerprints of the run's eval cells; the
      adaptive files must be of the same training.
  Returns:
    None if the run has no ensemble files, else {'num_examples': n,
    'ensemble': [ensemble records, ascending eps], 'checklist': the
    checklist record or None}.
  Raises:
    ValueError: a file that is not an adaptive result or is one of another
      dataset, model or training (named in the message).
  """
  folder = os.path.join(workdir, 'adaptive')
  if not os.path.isdir(folder):
    return None
  ensembles, checklists, trainings = {}, {}, {}
  for name in sorted(os.listdir(folder)):
    match = _NAME.fullmatch(name)
    if not match:
      continue  # Temporary files of a writer, files set aside.
    path = os.path.join(folder, name)
    record = workdir_lib.read_json(path)
    n = int(match['n'])
    kind = 'checklist' if match['eps'] is None else 'ensemble result'
    try:
      if match['eps'] is None:
        _check_checklist(record, n)
        checklists[n] = record
      else:
        _check_ensemble(record, float(match['eps']), n)
        ensembles.setdefault(n, []).append(record)
    except KeyError as e:
      raise ValueError(f'{path} is not an adaptive {kind} (no {e})') from None
    except (TypeError, ValueError) as e:
      raise ValueError(f'{path} is not an adaptive {kind} ({e})') from None
    found = (record['dataset'], record['preset'], record['model'])
    if found != tuple(identity):
      raise ValueError(f'{path} is a result of {found}, but {workdir} is '
                       f'{tuple(identity)}; remove it')
    trainings.setdefault(record['model_fingerprint'], []).append(name)
  if len(trainings) > 1:
    which = '; '.join(f'{fp}: {", ".join(names)}'
                      for fp, names in sorted(trainings.items()))
    raise ValueError(
        f'{folder} holds results of {len(trainings)} different trainings '
        f'({which}); remove the stale ones and run --mode=adaptive again')
  fingerprints = set(fingerprints)
  if trainings and fingerprints and not set(trainings) <= fingerprints:
    raise ValueError(
        f'{folder} holds results of training {sorted(trainings)}, but the '
        f'eval cells of {workdir} are of {sorted(fingerprints)}; remove the '
        'stale ones and evaluate the run again')
  if not ensembles:
    return None
  n = max(ensembles)
  chosen = ensembles[n] + ([checklists[n]] if n in checklists else [])
  images = sorted({r['test_images'] for r in chosen})
  if len(images) > 1:
    raise ValueError(f'{folder} holds results on {n} images of different '
                     f'test images ({images}); remove the stale ones')
  return {'num_examples': n,
          'ensemble': sorted(ensembles[n], key=lambda r: r['eps']),
          'checklist': checklists.get(n)}


def _interval(rate, low, high) -> str:
  return f'{rate:.3f} [{low:.3f}, {high:.3f}]'


def _with_interval(rate, n) -> str:
  """A rate with its 95% Wilson interval over n images ('–' if None)."""
  return '–' if rate is None else _interval(rate, *stats.rate_interval(rate, n))


def _compact(value, nested=False) -> str:
  """Checklist numbers on one line, floats to 3 digits."""
  if isinstance(value, dict):
    text = (', ' if nested else '; ').join(
        f'{k}: {_compact(v, True)}' for k, v in value.items())
    return f'{{{text}}}' if nested else text
  if isinstance(value, list):
    return '[' + ', '.join(_compact(v, True) for v in value) + ']'
  if isinstance(value, float):
    return f'{value:.3f}'
  return '–' if value is None else str(value)


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def _eps_key(eps: float) -> float:
  # The checklist keys its eps as 'eps=<eps:g>' (6 significant digits), the
  # ensemble records hold them in full: 8/255 is one row.
  return float(f'{eps:g}')


def curves(result) -> dict:
  """{eps: {'ensemble': record or None, column key: accuracy or None}}."""
  by_eps = {}
  for r in result['ensemble']:
    by_eps.setdefault(_eps_key(r['eps']), {})['ensemble'] = r
  checklist = result['checklist']
  if checklist is not None:
    grid = checklist_grid(checklist)
    for key, _ in _COLUMNS:
      values = _numbers(checklist, key)
      for eps, v in zip(grid, values or ()):
        by_eps.setdefault(_eps_key(eps), {})[key] = v
  return dict(sorted(by_eps.items()))


def _broken_by(record) -> str:
  n = record['num_examples']
  clean = round((1 - record['clean_accuracy']) * n)
  return ', '.join([f'clean {clean}'] + [
      f'{m} {k}' for m, k in record['per_member'].items()])


def run_lines(run) -> list[str]:
  """Markdown lines of one run's adaptive evaluation (`run.adaptive`)."""
  result = run.adaptive
  n = result['num_examples']
  rows = curves(result)
  columns = [(k, head) for k, head in _COLUMNS
             if any(k in row for row in rows.values())]
  lines = [f'**{run.dataset} {paper_tables.PAPER_NAMES[run.preset]}** '
           f'({run.model}, `{run.workdir}`): accuracy under Linf attacks, '
           'each [95% Wilson interval]\n',
           '| eps | ' + ' | '.join(h for _, h in columns) +
           ' | ensemble (robust accuracy) | broken by |',
           '|---|' + '---|' * (len(columns) + 2)]
  for eps, row in rows.items():
    ens = row.get('ensemble')
    cells = [_with_interval(row.get(k), n) for k, _ in columns]
    cells.append(_interval(ens['robust_accuracy'], *ens['interval'])
                 if ens else '–')
    cells.append(_broken_by(ens) if ens else '–')
    lines.append(f'| {eps_label(eps)} | ' + ' | '.join(cells) + ' |')
  records = result['ensemble']
  members = ' / '.join(dict.fromkeys(', '.join(r['members'])
                                     for r in records))
  wall = sum(r.get('wall_s', 0.0) for r in records)
  lines.append(
      f'\n{n} test images (the first of the test split), clean accuracy '
      f"{records[0]['clean_accuracy']:.3f}. Ensemble members, in order (each "
      f'attacks the images the earlier ones left unbroken): {members}. Wall '
      f'time of the ensemble: {wall / 60:.1f} min. Checkpoint step '
      f"{records[0]['step']}, model fingerprint "
      f"`{records[0]['model_fingerprint']}`.\n")
  checklist = result['checklist']
  if checklist is None:
    lines.append(f'No checklist on these {n} images (`--mode=adaptive` '
                 'writes it after the last eps).\n')
    return lines
  items = checklist['items']
  counts = ', '.join(
      f'{sum(i["pass"] is ok for i in items)} {mark}'
      for ok, mark in _MARK.items())
  lines += [f'Checklist ({counts}):\n',
            '| check | result | numbers | if it fails |', '|---|---|---|---|']
  for i in items:
    hint = i['if it fails'] if i['pass'] is False else ''
    lines.append(f"| {_cell(i['check'])} | {_MARK[i['pass']]} | "
                 f"{_cell(_compact(i['numbers']))} | {_cell(hint)} |")
  lines.append('')
  return lines


def section(groups) -> list[str]:
  """The report's "Adaptive evaluation" section; [] if no run has one.

  Args:
    groups: {dataset: {preset: report.Run}}.
  """
  runs = [runs[p] for runs in groups.values() for p in paper_tables.PRESETS
          if p in runs and runs[p].adaptive]
  if not runs:
    return []
  lines = ['## Adaptive evaluation (accuracy under Linf attacks)', '',
           'From `--mode=adaptive` (`mlrobust/adaptive.py`): the paper-style '
           'PGD (40 steps on the training loss), FGSM, APGD-CE and random '
           'sign noise of the same size are the checklist\'s numbers; the '
           'ensemble counts an image as robust only if no member breaks it. '
           '"broken by": the images each member broke first (clean: '
           'misclassified without an attack).', '']
  for run in runs:
    lines += run_lines(run)
  return lines


def repeats_section(repeats) -> list[str]:
  """Robust accuracy across trainings of one dataset and preset.

  Args:
    repeats: {(dataset, preset): [report.Run, ...]}, several trainings
      (seeds, codebook keys) each; those with an adaptive evaluation count.
  Returns:
    Markdown lines (none if no dataset and preset has two evaluated runs):
    per eps, each training's ensemble robust accuracy with its Wilson
    interval, their mean and range, and the paper-style PGD's mean and range.
  """
  lines = []
  for (dataset, preset), runs in repeats.items():
    runs = [r for r in runs if r.adaptive]
    if len(runs) < 2:
      continue
    tables = [curves(r.adaptive) for r in runs]
    grid = sorted({eps for t in tables for eps in t})
    name = paper_tables.PAPER_NAMES[preset]
    if not lines:
      lines = ['### Across trainings', '',
               'The same model trained again (another seed or codebook key): '
               'the ensemble\'s robust accuracy of each training, and the '
               'spread across trainings next to the sampling interval of '
               'each. "range": the smallest and largest value.', '']
    members = [', '.join(r.adaptive['ensemble'][0]['members']) for r in runs]
    lines += [f'**{dataset} {name}**, {len(runs)} trainings: ' + '; '.join(
        f'{i + 1}: `{r.workdir}` (seed {r.seed}, '
        f"{r.adaptive['num_examples']} images, fingerprint "
        f"`{r.adaptive['ensemble'][0]['model_fingerprint']}`"
        + (f'; members {m}' if len(set(members)) > 1 else '') + ')'
        for i, (r, m) in enumerate(zip(runs, members))) + '\n',
              '| eps | ' + ' | '.join(f'training {i + 1}'
                                      for i in range(len(runs)))
              + ' | ensemble: mean (range) | paper-style PGD: mean (range) |',
              '|---|' + '---|' * (len(runs) + 2)]
    for eps in grid:
      cells, robust, pgd = [], [], []
      for t in tables:
        ens = t.get(eps, {}).get('ensemble')
        cells.append(_interval(ens['robust_accuracy'], *ens['interval'])
                     if ens else '–')
        if ens:
          robust.append(ens['robust_accuracy'])
        if t.get(eps, {}).get('paper-style pgd') is not None:
          pgd.append(t[eps]['paper-style pgd'])
      lines.append(f'| {eps_label(eps)} | ' + ' | '.join(cells) +
                   f' | {_spread(robust)} | {_spread(pgd)} |')
    lines.append('')
  return lines


def _spread(values) -> str:
  if not values:
    return '–'
  mean = sum(values) / len(values)
  return (f'{mean:.3f} ({min(values):.3f}-{max(values):.3f}), '
          f'{len(values)} trainings')


def plot(dataset: str, runs, out_path: str) -> bool:
  """Robust accuracy against eps, one panel per run with adaptive results.

  Args:
    dataset: the dataset's name (the title).
    runs: {preset: report.Run} of the dataset.
    out_path: the PNG to write.
  Returns:
    Whether a figure was written.
  """
  runs = [runs[p] for p in paper_tables.PRESETS
          if p in runs and runs[p].adaptive]
  if not runs:
    return False
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4),
                           squeeze=False)
  for ax, run in zip(axes[0], runs):
    rows = curves(run.adaptive)
    ens = [(eps, row['ensemble']) for eps, row in rows.items()
           if row.get('ensemble')]
    xs = [eps for eps, _ in ens]
    ax.plot(xs, [r['robust_accuracy'] for _, r in ens], 'o-', ms=3,
            color='tab:red', label='ensemble')
    ax.fill_between(xs, [r['interval'][0] for _, r in ens],
                    [r['interval'][1] for _, r in ens], color='tab:red',
                    alpha=0.2, lw=0, label='ensemble 95%')
    for key, style, color in (('paper-style pgd', 's--', 'tab:blue'),
                              ('fgsm', '^:', 'tab:green')):
      pts = [(eps, row[key]) for eps, row in rows.items() if key in row]
      if pts:
        ax.plot(*zip(*pts), style, ms=3, color=color,
                label=dict(_COLUMNS)[key])
    ax.set_title(f'{paper_tables.PAPER_NAMES[run.preset]} '
                 f"({run.adaptive['num_examples']} images)", fontsize=9)
    ax.set_xlabel('Linf eps')
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0, 0].set_ylabel('accuracy (untargeted)')
  fig.suptitle(f'{dataset}: adaptive evaluation', fontsize=10)
  fig.tight_layout()
  workdir_lib.write_text(out_path, plots.png_bytes(fig))
  return True
