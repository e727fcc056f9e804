r"""Renders evaluation results next to the paper's: markdown tables and plots.

  python launch.py --mode=report --workdirs=W1,W2,... --out=DIR \
      [--splice=DOC.md]

reads the cell files of `--mode=evaluate` (W/eval/*.json) and the clean test
accuracy (W/metrics.jsonl) of each workdir (or copy of one: only those files
and the saved example images are read), and writes
- DIR/report.md: Tables 3-7 laid out like the paper's, each cell "ours
  [95% Wilson interval] (paper)", with the images per cell and any parameter
  that differs from the paper's;
- DIR/<dataset>_table3.png, _table5.png: accuracy / success rate against the
  swept parameter, one line per model, the paper's values dashed;
- DIR/<dataset>_figure1.png, _figure2.png, _figure3.png: clean images above
  their adversarial versions (Figures 1-3 of the paper);
- for workdirs with results of `--mode=adaptive` (W/adaptive/*.json), a
  section "Adaptive evaluation" after Table 7 (robust accuracy against eps
  under the paper-style PGD, FGSM, APGD-CE, random noise and the ensemble,
  and the masking checklist) and DIR/<dataset>_adaptive.png
  (`mlrobust.adaptive_report`).
With --splice, the tables also replace the text between the
`<!-- report:begin -->` and `<!-- report:end -->` lines of DOC.md (how
REPRODUCTION.md is kept in step with its result files).
Our datasets are matched to the paper's by `paper_tables.paper_dataset`
(`cifar10_jpeg` is compared with the paper's CIFAR-10 and says so).
"""

import os

import numpy as np

from mlrobust import adaptive_report
from mlrobust import models
from mlrobust import paper_tables
from mlrobust import plots
from mlrobust import stats
from mlrobust import workdir as workdir_lib

PRESETS = paper_tables.PRESETS
_PARAM_LABEL = {'eps': 'eps', 'initial_const': 'c', 'max_iter': 'm'}
_ATTACK_LABEL = {'cw_l2': 'CWL2', 'mim': 'MIM', 'deepfool': 'DeepFool',
                 'bim': 'BIM', 'fgsm': 'FGSM', 'pgd': 'Madry et al. (PGD)',
                 'lbfgs': 'L-BFGS',
                 'cw_l2_distance': 'CWL2-distance (the paper\'s)'}


class Run:
  """The results of one workdir."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    config = workdir_lib.saved_config(workdir)
    self.dataset = config['data']['name']
    # The label comes from what the run is, not from what it says it is.
    self.preset = workdir_lib.run_label(config)
    if self.preset == 'custom':
      raise ValueError(
          f"{workdir} is none of the paper's models (head "
          f"{config['head']['activation']}, targets "
          f"{config['head']['targets']}, loss {config['loss']}); the report "
          "compares softmax_ce, softmax_mse and tanh_mse runs")
    if config.get('preset') != self.preset:
      raise ValueError(
          f"{workdir}/config.json says preset {config.get('preset')!r}, but "
          f'its head, targets and loss are those of {self.preset!r}; refusing '
          'to report it under either name')
    self.model = models.label(config['model'])
    self.cells = workdir_lib.cell_results(workdir)
    self._check_cells()
    self.adaptive = adaptive_report.read(
        workdir, (self.dataset, self.preset, self.model),
        {c['model_fingerprint'] for c in self.cells
         if c.get('model_fingerprint')})
    self.size = config.get('size')
    self.seed = config.get('seed')
    self.clean_accuracy = workdir_lib.clean_test_accuracy(workdir)
    self.num_test = config['data'].get('num_test') or 'all'

  def fingerprint(self):
    """The model fingerprint of the run's results (None if it has none)."""
    for c in self.cells:
      if c.get('model_fingerprint'):
        return c['model_fingerprint']
    if self.adaptive:
      return self.adaptive['ensemble'][0]['model_fingerprint']
    return None

  def _check_cells(self):
    """Refuses cells of another dataset, model or training of the run."""
    fingerprints = {}
    for c in self.cells:
      where = os.path.join(self.workdir, 'eval', c['id'] + '.json')
      try:
        found = (c['dataset'], c['preset'], c['model'])
        _ = (c['attack'], c['targeted'], c['value'], c[c['metric']])
      except (KeyError, TypeError) as e:
        raise ValueError(
            f'{where} is not an evaluation cell (no {e})') from None
      if found != (self.dataset, self.preset, self.model):
        raise ValueError(
            f'{where} is a result of {found}, but {self.workdir} is '
            f'{(self.dataset, self.preset, self.model)}; remove it')
      if c.get('model_fingerprint'):
        fingerprints.setdefault(c['model_fingerprint'], []).append(c['id'])
    if len(fingerprints) > 1:
      raise ValueError(
          f'{self.workdir}/eval holds cells of {len(fingerprints)} different '
          f'trainings ({sorted(fingerprints)}); run --mode=evaluate again '
          '(it sets the stale ones aside) or remove them')

  def cell(self, attack, targeted, value, *, transfer=False, n=None,
           semantics='decoding'):
    """The finished cell with the most images (or exactly n), else None."""
    found = [c for c in self.cells
             if c['attack'] == attack and c['targeted'] == targeted and
             np.isclose(c['value'], value) and
             bool(c.get('transfer_from')) == transfer and
             _semantics(c) == semantics and
             (n is None or c['num_examples'] == n)]
    return max(found, key=lambda c: c['num_examples']) if found else None

  def has_cleverhans(self, attack) -> bool:
    return any(c['attack'] == attack and _semantics(c) == 'cleverhans'
               for c in self.cells)


def _semantics(cell) -> str:
  return cell.get('fixed', {}).get('semantics', 'decoding')


def _row_label(preset, semantics):
  name = paper_tables.PAPER_NAMES[preset]
  return name if semantics == 'decoding' else f'{name}, cleverhans semantics'



def _fmt(x, digits=3):
  return '–' if x is None else f'{x:.{digits}f}'


def _ours(cell, key=None) -> str:
  """A cell's rate with its 95% Wilson interval over its images."""
  if cell is None:
    return '–'
  rate = cell[key or cell['metric']]
  low, high = stats.rate_interval(rate, cell['num_examples'])
  return f'{rate:.3f} [{low:.2f}, {high:.2f}]'


def _group(runs):
  """({dataset: {preset: Run}}, {(dataset, preset): [Run, ...]}).

  The first run of a dataset and preset goes into the paper's tables; other
  trainings of the same dataset and preset (another seed or codebook key:
  another model fingerprint) are repeats, which the adaptive section
  compares with it. The same training twice is an error.
  """
  out, repeats = {}, {}
  for r in runs:
    by_preset = out.setdefault(r.dataset, {})
    if r.preset in by_preset:
      seen = repeats.setdefault((r.dataset, r.preset), [by_preset[r.preset]])
      fingerprint = r.fingerprint()
      if fingerprint is None or fingerprint in {
          o.fingerprint() for o in seen}:
        raise ValueError(
            f'two {r.preset} runs of {r.dataset} of the same training (or '
            f'with no result to tell): {seen[0].workdir} and {r.workdir}')
      seen.append(r)
      continue
    by_preset[r.preset] = r
  return out, repeats


def _paper_value(table, dataset, preset, attack, value):
  ds = paper_tables.paper_dataset(dataset)
  try:
    return table[attack][ds][preset][value]
  except KeyError:
    return None


def _setting_note(cells):
  """'n' and the parameters that differ from the paper's, per attack."""
  notes = {}
  for c in cells:
    if c is None:
      continue
    key = c['attack']
    fixed = ', '.join(f'{k}={v}' for k, v in sorted(c.get('fixed', {}).items()))
    note = f"{c['num_examples']} images" + (f', {fixed}' if fixed else '')
    notes.setdefault(key, set()).add(note)
  return '; '.join(f'{_ATTACK_LABEL[k]}: {" / ".join(sorted(v))}'
                   for k, v in notes.items())


def _wall_note(cells) -> str:
  """Attack wall time summed over the cells, per dataset and model."""
  total = {}
  for c in cells:
    if c is not None:
      key = (c['dataset'], c['preset'])
      total[key] = total.get(key, 0.0) + c.get('wall_s', 0.0)
  return ', '.join(f'{ds} {paper_tables.PAPER_NAMES.get(p, p)} {t / 60:.1f} min'
                   for (ds, p), t in total.items())


def grid_table(groups, table_name: str) -> list[str]:
  """Markdown lines of Table 3 or 5 (one block per attack)."""
  table = getattr(paper_tables, table_name.upper())
  targeted = table_name == 'table5'
  metric = 'success rate' if targeted else 'accuracy'
  lines = []
  for attack, grid in table.items():
    values = list(grid['mnist']['softmax_ce'])
    param = _PARAM_LABEL[paper_tables.SWEPT[attack]]
    lines.append(f'**{_ATTACK_LABEL[attack]}** ({metric}, ours (paper), '
                 f'by {param})\n')
    lines.append('| dataset | model | ' +
                 ' | '.join(f'{param} = {v:g}' for v in values) + ' |')
    lines.append('|---|---|' + '---|' * len(values))
    used = []
    for dataset, runs in groups.items():
      for preset in PRESETS:
        if preset not in runs:
          continue
        semantics = ['decoding']
        if runs[preset].has_cleverhans(attack):
          semantics.append('cleverhans')
        for sem in semantics:
          row = []
          for v in values:
            c = runs[preset].cell(attack, targeted, v, semantics=sem)
            used.append(c)
            paper = _paper_value(table, dataset, preset, attack, v)
            row.append(f'{_ours(c)} ({_fmt(paper)})')
          lines.append(f'| {dataset} | {_row_label(preset, sem)} | ' +
                       ' | '.join(row) + ' |')
    lines.append(f'\nPer cell: {_setting_note(used) or "no results"}. '
                 f'Wall time: {_wall_note(used) or "–"}.\n')
  return lines


def table4(groups) -> list[str]:
  lines = ['| dataset | model | ours | paper | test images |',
           '|---|---|---|---|---|']
  for dataset, runs in groups.items():
    for preset in PRESETS:
      if preset in runs:
        r = runs[preset]
        paper = paper_tables.TABLE4.get(
            paper_tables.paper_dataset(dataset), {}).get(preset)
        lines.append(f'| {dataset} | {paper_tables.PAPER_NAMES[preset]} | '
                     f'{_fmt(r.clean_accuracy, 4)} | {_fmt(paper)} | '
                     f'{r.num_test} |')
  return lines


def table6(groups) -> list[str]:
  heads = [f'{_ATTACK_LABEL[a]} {_PARAM_LABEL[paper_tables.SWEPT[a]]} = {v:g}'
           for a, v in paper_tables.TABLE6_ATTACKS]
  lines = ['| dataset | model | ' + ' | '.join(heads) + ' |',
           '|---|---|' + '---|' * len(heads)]
  used = []
  for dataset, runs in groups.items():
    for preset in ('softmax_mse', 'tanh_mse'):
      if preset not in runs:
        continue
      row = []
      paper = paper_tables.TABLE6.get(paper_tables.paper_dataset(dataset),
                                      {}).get(preset, (None,) * 3)
      for (attack, v), p in zip(paper_tables.TABLE6_ATTACKS, paper):
        c = runs[preset].cell(attack, False, v, transfer=True)
        used.append(c)
        row.append(f'{_ours(c, "accuracy")} ({_fmt(p)})')
      lines.append(f'| {dataset} | {paper_tables.PAPER_NAMES[preset]} | ' +
                   ' | '.join(row) + ' |')
  proxies = sorted({c['proxy_workdir'] for c in used if c})
  lines.append(f'\nPer cell: {_setting_note(used) or "no results"}. '
               f'Crafted on: {", ".join(proxies) or "–"} (softmax_ce). '
               f'Wall time (crafting included): {_wall_note(used) or "–"}.\n')
  return lines


def table7(groups) -> list[str]:
  cs = paper_tables.TABLE7_CONSTS
  heads = [f'{_ATTACK_LABEL[a]} c = {c:g}' for a in ('cw_l2', 'cw_l2_distance')
           for c in cs]
  lines = ['| dataset | model | ' + ' | '.join(heads) + ' |',
           '|---|---|' + '---|' * len(heads)]
  used = []
  for dataset, runs in groups.items():
    for preset in ('softmax_ce', 'tanh_mse'):
      if preset not in runs:
        continue
      paper = paper_tables.TABLE7.get(paper_tables.paper_dataset(dataset),
                                      {}).get(preset, {})
      semantics = ['decoding']
      if runs[preset].has_cleverhans('cw_l2'):
        semantics.append('cleverhans')
      for sem in semantics:
        row = []
        for attack in ('cw_l2', 'cw_l2_distance'):
          for i, c in enumerate(cs):
            cell = runs[preset].cell(attack, True, c, semantics=sem)
            used.append(cell)
            p = paper.get(attack, (None, None))[i]
            row.append(f'{_ours(cell, "success_rate")} ({_fmt(p)})')
        lines.append(f'| {dataset} | {_row_label(preset, sem)} | ' +
                     ' | '.join(row) + ' |')
  lines.append(f'\nPer cell: {_setting_note(used) or "no results"}. '
               f'Wall time: {_wall_note(used) or "–"}.\n')
  return lines


def plot_grid(dataset, runs, table_name, out_path) -> bool:
  """Metric against the swept parameter per attack; paper dashed."""
  plt = plots.pyplot()
  table = getattr(paper_tables, table_name.upper())
  targeted = table_name == 'table5'
  attacks = list(table)
  cols = 3
  rows = -(-len(attacks) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows + 0.4),
                           squeeze=False)
  axes = axes.ravel()
  colors = dict(zip(PRESETS, ('tab:red', 'tab:blue', 'tab:green')))
  drawn = False
  for ax, attack in zip(axes, attacks):
    values = list(table[attack]['mnist']['softmax_ce'])
    for preset in PRESETS:
      if preset not in runs:
        continue
      cells = [runs[preset].cell(attack, targeted, v) for v in values]
      pts = [(v, c[c['metric']]) for v, c in zip(values, cells) if c]
      if pts:
        drawn = True
        ax.plot(*zip(*pts), 'o-', color=colors[preset],
                label=f'{paper_tables.PAPER_NAMES[preset]} ours')
      paper = [_paper_value(table, dataset, preset, attack, v) for v in values]
      if all(p is not None for p in paper):
        ax.plot(values, paper, 's--', color=colors[preset], alpha=0.5,
                label=f'{paper_tables.PAPER_NAMES[preset]} paper')
    ax.set_xscale('log' if attack in ('cw_l2', 'lbfgs') else 'linear')
    ax.set_xlabel(_PARAM_LABEL[paper_tables.SWEPT[attack]])
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(_ATTACK_LABEL[attack], fontsize=9)
  for ax in axes[::cols]:
    ax.set_ylabel('success rate (targeted)' if targeted else
                  'accuracy (untargeted)')
  for ax in axes[len(attacks):]:
    ax.axis('off')
  axes[len(attacks) - 1].legend(fontsize=6)
  fig.suptitle(f'{dataset}: {"Table 5" if targeted else "Table 3"} grids',
               fontsize=10)
  fig.tight_layout()
  if drawn:
    fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return drawn


def _load_examples(run, cell):
  path = os.path.join(run.workdir, 'eval', cell['id'] + '.npz')
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def figure1_cell(run):
  """The targeted PGD cell of the smallest eps reaching 100% success.

  Among the Figure 1 ladder cells (targeted pgd, the ladder's image count);
  if none reaches 100%, the largest eps tried.
  """
  ladder = [c for c in run.cells if c['attack'] == 'pgd' and c['targeted'] and
            not c.get('transfer_from')]
  if not ladder:
    return None
  n = min(c['num_examples'] for c in ladder)
  ladder = sorted((c for c in ladder if c['num_examples'] == n),
                  key=lambda c: c['value'])
  for c in ladder:
    if c['success_rate'] >= 1.0:
      return c
  return ladder[-1]


def plot_examples(rows, out_path, title, k=8) -> bool:
  """rows: [(label, examples dict, caption)]; clean above adversarial."""
  fig = plots.examples_figure(rows, title, k)
  if fig is None:
    return False
  workdir_lib.write_text(out_path, plots.png_bytes(fig))
  return True


def _caption(c):
  what = 'success' if c['targeted'] else 'accuracy'
  size = (f"L2 median {_fmt(c['median_l2_successful'], 2)}"
          if c['param'] == 'initial_const' else f"eps = {c['value']:g}")
  return (f"{size}, {what} {_fmt(c[c['metric']])} on {c['num_examples']} "
          f'images')


def figures(dataset, runs, out_dir) -> list[str]:
  """Figures 1-3 for one dataset; returns the files written."""
  written = []
  rows = []
  for preset in PRESETS:
    if preset in runs and (c := figure1_cell(runs[preset])):
      caption = _caption(c)
      if c['success_rate'] < 1.0:
        caption += ' (no eps of the ladder reached 100%: the largest shown)'
      rows.append((paper_tables.PAPER_NAMES[preset],
                   _load_examples(runs[preset], c), caption))
  path = os.path.join(out_dir, f'{dataset}_figure1.png')
  if plot_examples(rows, path, f'{dataset}: targeted PGD at the smallest eps '
                   'of the ladder reaching 100% success (Figure 1)'):
    written.append(path)
  rows = []
  for preset in PRESETS:
    if preset in runs and (c := runs[preset].cell('mim', True, 0.1)):
      rows.append((paper_tables.PAPER_NAMES[preset],
                   _load_examples(runs[preset], c), _caption(c)))
  path = os.path.join(out_dir, f'{dataset}_figure2.png')
  if plot_examples(rows, path, f'{dataset}: targeted MIM, eps = 0.1 '
                   '(Figure 2)'):
    written.append(path)
  rows = []
  if 'tanh_mse' in runs and (c := runs['tanh_mse'].cell('cw_l2_distance', True,
                                                        0.1)):
    rows.append(('R:TANH:MSE', _load_examples(runs['tanh_mse'], c),
                 _caption(c)))
  path = os.path.join(out_dir, f'{dataset}_figure3.png')
  if plot_examples(rows, path, f'{dataset}: targeted CWL2-distance, c = 0.1 '
                   '(Figure 3)'):
    written.append(path)
  return written


def render(workdirs, out_dir: str) -> str:
  """Writes report.md and the plots; returns the report's path."""
  runs = [Run(w) for w in workdirs]
  groups, repeats = _group(runs)
  os.makedirs(out_dir, exist_ok=True)
  lines = ['# mlrobust evaluation report', '',
           'Each cell: ours [95% Wilson interval over its images] (paper). '
           'Paper values: Saito & Roy, Tables 3-7 '
           '(`mlrobust/paper_tables.py`). Runs:', '']
  for r in runs:
    adaptive = (f", adaptive evaluation on {r.adaptive['num_examples']} "
                'images' if r.adaptive else '')
    repeat = ('; a repeat training (seed '
              f"{r.seed}), in the adaptive section's comparison only"
              if groups[r.dataset][r.preset] is not r else '')
    lines.append(f'- {r.dataset} {r.preset} ({r.model}, size {r.size}): '
                 f'`{r.workdir}`, {len(r.cells)} cells{adaptive}{repeat}')
  if any(d == 'cifar10_jpeg' for d in groups):
    lines.append('\n`cifar10_jpeg` (a JPEG copy of CIFAR-10) is compared with '
                 "the paper's CIFAR-10 numbers.")
  lines += ['', '## Table 3: untargeted white-box attacks (accuracy)', '']
  lines += grid_table(groups, 'table3')
  lines += ['## Table 4: clean test accuracy', ''] + table4(groups)
  lines += ['', '## Table 5: targeted white-box attacks (success rate)', '']
  lines += grid_table(groups, 'table5')
  lines += ['## Table 6: transfer from O:SOFTMAX:CE (accuracy)', '']
  lines += table6(groups)
  lines += ['## Table 7: targeted CWL2 vs CWL2-distance (success rate)', '']
  lines += table7(groups)
  lines += adaptive_report.section(groups)
  lines += adaptive_report.repeats_section(repeats)
  lines += ['## Plots', '']
  for dataset, by_preset in groups.items():
    for t in ('table3', 'table5'):
      name = f'{dataset}_{t}.png'
      if plot_grid(dataset, by_preset, t, os.path.join(out_dir, name)):
        lines.append(f'![{dataset} {t}]({name})')
    for path in figures(dataset, by_preset, out_dir):
      name = os.path.basename(path)
      lines.append(f'![{name}]({name})')
    name = f'{dataset}_adaptive.png'
    if adaptive_report.plot(dataset, by_preset, os.path.join(out_dir, name)):
      lines.append(f'![{dataset} adaptive]({name})')
  path = os.path.join(out_dir, 'report.md')
  workdir_lib.write_text(path, '\n'.join(lines) + '\n')
  return path


BEGIN, END = '<!-- report:begin -->', '<!-- report:end -->'


def splice(report_path: str, doc_path: str) -> None:
  """Replaces the text between the report markers of doc_path by the tables.

  Image links are made relative to the document's folder.
  """
  with open(report_path) as f:
    text = f.read()
  body = text[text.index('## Table 3'):text.index('## Plots')]
  with open(doc_path) as f:
    doc = f.read()
  if BEGIN not in doc or END not in doc:
    raise ValueError(f'{doc_path} has no {BEGIN} ... {END} markers')
  head, rest = doc.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  body = body.replace('## ', '### ')
  workdir_lib.write_text(doc_path, f'{head}{BEGIN}\n{body}{END}{tail}')


def write_report(workdirs, out_dir: str, *,
                 splice_into: str | None = None) -> list[str]:
  """The report of `workdirs` in out_dir (and spliced into a document).

  Returns the files written: report.md (and the document).
  """
  if not workdirs:
    raise ValueError('the report needs at least one workdir')
  path = render(workdirs, out_dir)
  if splice_into:
    splice(path, splice_into)
    return [path, splice_into]
  return [path]
