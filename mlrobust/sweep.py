r"""`--mode=sweep`: one attack parameter swept over several trained runs.

  python launch.py --mode=sweep --workdirs=W1,W2,W3 --attack=pgd --param=eps \
      --values=0,0.02,...,0.3 --out=DIR

attacks the first `--images` test images of each run (default: the run's
`config.eval.images.<family>` budget) at every value and writes to DIR
  sweep.json  the sweep's spec and one row per (run, value): accuracy
              (untargeted) or success rate (targeted) with its 95% Wilson
              interval, clean accuracy, median and mean L2/Linf of the
              successful examples, images, wall time, the cell file;
  sweep.csv   the same rows;
  sweep.md    a table: one row per value, one column per run;
  sweep.png   the metric against the swept value, one line per run with its
              95% band (one panel per dataset), and for the minimum-norm
              attacks (CW, CW-distance, L-BFGS, DeepFool) a second row of
              panels: the median L2 of the successful examples.

Every point is an evaluation cell of its run (`mlrobust.evaluate.Runner`):
the file `<run>/eval/<cell id>.json` that `--mode=evaluate` would write for
the same attack, value, parameters and images. A sweep therefore resumes
where it stopped, reuses cells an evaluation already computed (and the other
way round), and refuses stale cells (another model or other images) by
running them again. Values are traced arguments of the compiled attacks, so a
sweep compiles each attack once per architecture and image count.

`--values` takes numbers separated by commas, and `a,b,...,z` for the
arithmetic progression a, b, ... up to z. `--targeted` runs the targeted
attack (targets from each run's `config.eval.seed`, as in evaluations);
`--fixed=name=value,...` sets other attack parameters (part of the cell ids).
The swept parameter may be any numeric parameter the attack takes (eps,
initial_const, max_iter, nb_iter, max_iterations, ...). Runs keep the
iteration budget of their own config (`config.eval.max_iterations`) unless
`--fixed` overrides it, so sweep cells are the evaluation's cells.

Several processes (one per GPU, or one per host of a cluster) may run the
same command on the same runs at once: each takes the next point no other
process holds (an OS lock per cell, `workdir_lib.cell_lock`), waits at the
end for the points others are computing, and writes the same outputs. Every
point is computed once. The runs' folders must be on a file system with
working `flock` locks (local disks, NFSv4, Lustre mounted with `-o flock`).
"""

import contextlib
import csv
import dataclasses
import io
import math
import os
import time

from absl import logging
import numpy as np

from mlrobust import attacks
from mlrobust import grids
from mlrobust import plots
from mlrobust import runner as runner_lib
from mlrobust import stats
from mlrobust import workdir as workdir_lib

# Attacks that look for the smallest perturbation: their sweep also reports
# the median L2 of successful examples.
MIN_NORM_ATTACKS = ('cw_l2', 'cw_l2_distance', 'lbfgs', 'deepfool')
# Parameters that are not numbers, so cannot be swept.
NOT_NUMERIC = ('loss', 'semantics', 'norm')


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a sweep runs: an attack, a parameter and its values."""
  attack: str
  param: str
  values: tuple
  targeted: bool = False
  images: int | None = None  # None: each run's config.eval.images budget.
  fixed: tuple = ()  # ((name, value), ...) other attack parameters.

  def to_dict(self) -> dict:
    return {'attack': self.attack, 'param': self.param,
            'values': list(self.values), 'targeted': self.targeted,
            'images': self.images, 'fixed': dict(self.fixed)}


def _number(text: str, what: str):
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f'{what}: {text!r} is not a number') from None
  if not math.isfinite(value):
    raise ValueError(f'{what}: {text!r} is not a finite number')
  return int(value) if value.is_integer() and '.' not in text and (
      'e' not in text.lower()) else value


def parse_values(text: str) -> tuple:
  """'0,0.1,0.3' -> (0, 0.1, 0.3); 'a,b,...,z' -> a, b, a + 2(b - a), ... z."""
  parts = [p.strip() for p in text.split(',') if p.strip()]
  if not parts:
    raise ValueError('--values is empty; give numbers separated by commas, '
                     'e.g. 0,0.02,...,0.3')
  if '...' in parts:
    i = parts.index('...')
    if i != 2 or len(parts) != 4:
      raise ValueError(f'--values {text!r}: write a progression as '
                       'first,second,...,last (e.g. 0,0.02,...,0.3)')
    a, b, z = (_number(p, '--values') for p in (parts[0], parts[1],
                                                 parts[3]))
    step = b - a
    if step == 0 or (z - a) / step < 0:
      raise ValueError(f'--values {text!r}: {a}, {b} does not progress '
                       f'towards {z}')
    count = (z - a) / step
    if abs(count - round(count)) > 1e-6 or round(count) > 10_000:
      raise ValueError(f'--values {text!r}: {z} is not reached from {a} in '
                       f'steps of {step:g}')
    values = [a + k * step for k in range(round(count) + 1)]
    # Rounded to the steps' precision, so 0.1 + 0.2 is written 0.3.
    digits = max(len(p.split('.')[1]) if '.' in p else 0
                 for p in (parts[0], parts[1], parts[3]))
    return tuple(round(v, digits) if isinstance(step, float) else v
                 for v in values)
  values = tuple(_number(p, '--values') for p in parts)
  if len(set(values)) != len(values):
    raise ValueError(f'--values {text!r} repeats a value')
  return values


def parse_fixed(items) -> tuple:
  """['nb_iter=100', 'semantics=cleverhans'] -> (('nb_iter', 100), ...)."""
  out = []
  for item in items or ():
    name, sep, value = item.partition('=')
    if not sep or not name:
      raise ValueError(f'--fixed {item!r}: write name=value')
    name = name.strip()
    value = value.strip()
    if name in NOT_NUMERIC:
      out.append((name, value))
    elif value.lower() in ('true', 'false'):
      out.append((name, value.lower() == 'true'))
    else:
      out.append((name, _number(value, f'--fixed {name}')))
  return tuple(sorted(out))


def check(spec: Spec) -> None:
  """Raises ValueError (saying what is allowed) for a sweep that cannot run."""
  attacks.check_direction(spec.attack, spec.targeted)
  accepted = attacks.accepted_params(spec.attack)
  numeric = [p for p in accepted if p not in NOT_NUMERIC]
  if spec.param not in numeric:
    raise ValueError(f'--param {spec.param!r} cannot be swept for '
                     f'{spec.attack}; its numeric parameters are {numeric}')
  names = [k for k, _ in spec.fixed]
  if spec.param in names:
    raise ValueError(f'--fixed sets {spec.param!r}, the swept parameter')
  attacks.check_params(spec.attack, dict(spec.fixed))
  if not spec.values:
    raise ValueError('a sweep needs at least one value')
  for v in spec.values:
    if spec.param in attacks.INT_PARAMS and float(v) != int(v):
      raise ValueError(f'{spec.param} takes whole numbers; --values has {v}')
    attacks.core.check_values(**{spec.param: _cast(spec.param, v)})
  attacks.core.check_values(**dict(spec.fixed))
  if spec.images is not None and spec.images < 0:
    raise ValueError(f'--images {spec.images}: give a count >= 1, or 0 for '
                     'the whole test split')


def cells(spec: Spec, eval_config, num_test: int) -> list[grids.Cell]:
  """The sweep's cells for a run whose eval config is `eval_config`."""
  e = grids.entry('sweep', spec.attack, targeted=spec.targeted,
                  param=spec.param, param_values=spec.values,
                  images=spec.images)
  n = grids.num_images(eval_config, e, num_test)
  fixed = dict(grids.fixed_params(eval_config, spec.attack))
  fixed.pop(spec.param, None)
  fixed.update(dict(spec.fixed))
  for name, default in (('semantics', 'decoding'), ('norm', 'linf')):
    if fixed.get(name) == default:  # The default: not in the ids.
      del fixed[name]
  fixed = tuple(sorted(fixed.items()))
  return [grids.Cell(spec.attack, spec.targeted, spec.param,
                     _cast(spec.param, v), n, fixed) for v in spec.values]


def _cast(param: str, value):
  """int for the iteration counts, else float (one dtype: one compile)."""
  return int(value) if param in attacks.INT_PARAMS else float(value)


def _labels(workdirs, configs) -> list[str]:
  """A short, unique line label per run: its preset (and dataset, folder)."""
  base = [workdir_lib.run_label(c) for c in configs]
  datasets = {c.data.name for c in configs}
  if len(datasets) > 1:
    base = [f'{c.data.name} {b}' for c, b in zip(configs, base)]
  counts = {b: base.count(b) for b in base}
  return [b if counts[b] == 1 else
          f'{b} ({os.path.basename(os.path.normpath(w))})'
          for b, w in zip(base, workdirs)]


def _row(label, workdir, cell, record) -> dict:
  metric = record['metric']
  n = record['num_examples']
  low, high = stats.rate_interval(record[metric], n)
  return {
      'run': label, 'workdir': workdir,
      'dataset': record['dataset'], 'preset': record['preset'],
      'model': record.get('model'), 'attack': cell.attack,
      'targeted': cell.targeted, 'param': cell.param, 'value': cell.value,
      'num_examples': n, 'metric': metric, 'rate': record[metric],
      'ci_low': low, 'ci_high': high,
      'clean_accuracy': record['clean_accuracy'],
      'median_l2_successful': record['median_l2_successful'],
      'mean_l2_successful': record['mean_l2_successful'],
      'median_linf_successful': record['median_linf_successful'],
      'wall_s': record['wall_s'], 'model_fingerprint':
          record.get('model_fingerprint'), 'step': record.get('step'),
      'cell': os.path.join(workdir, 'eval', cell.id + '.json'),
  }


class _Eta:
  """Progress of the points this process computes, with an estimate."""

  def __init__(self, total):
    self.total, self.done, self.start, self.seconds = total, 0, time.time(), []

  def log(self, label, cell, record, how):
    self.done += 1
    if how == 'ran':
      self.seconds.append(record['wall_s'])
    left = self.total - self.done
    eta = (f'{np.mean(self.seconds) * left / 60:.1f} min' if self.seconds
           else 'unknown until a point has run')
    logging.info('[%d/%d] %s %s=%g: %s %.4f (%s); elapsed %.1f min, ETA %s '
                 '(at most, if no other process helps)', self.done,
                 self.total, label, cell.param, cell.value, record['metric'],
                 record[record['metric']], how,
                 (time.time() - self.start) / 60, eta)


def run_sweep(workdirs, spec: Spec, out_dir: str) -> dict:
  """Runs (or resumes, or joins) the sweep; returns its table and files.

  Raises:
    ValueError: a bad spec, or `out_dir` holds another sweep.
    FileNotFoundError, CheckpointError, WorkdirError: a run cannot be loaded.
  """
  check(spec)
  if not workdirs:
    raise ValueError('a sweep needs at least one trained run (--workdirs)')
  if len(set(map(os.path.realpath, workdirs))) != len(workdirs):
    raise ValueError(f'--workdirs names a run twice: {workdirs}')
  _check_out(out_dir, spec)
  configs = [workdir_lib.saved_config(w) for w in workdirs]
  labels = _labels(workdirs, configs)
  with contextlib.ExitStack() as stack:
    for w in workdirs:  # Shared: training/evaluation may not run meanwhile.
      stack.enter_context(workdir_lib.lock(w, shared=True))
    runners, plans = [], []
    for w, c in zip(workdirs, configs):
      n = cells(spec, c.eval, 10**9)[0].num_examples
      runners.append(runner_lib.Runner(c, w, 0 if n == 10**9 else n))
      plans.append(cells(spec, c.eval, len(runners[-1].x)))
    points = [(i, cell) for i, plan in enumerate(plans) for cell in plan]
    progress = _Eta(len(points))
    records, waiting, ran_here = {}, [], 0
    for i, cell in points:  # First pass: the points no one else holds.
      record, ran = runners[i].run(cell, wait=False)
      if record is None:
        waiting.append((i, cell))
        continue
      records[i, cell] = record
      ran_here += ran
      progress.log(labels[i], cell, record, 'ran' if ran else 'reused')
    for i, cell in waiting:  # Then wait for the points others computed.
      logging.info('Waiting for %s %s=%g (another process holds it)',
                   labels[i], cell.param, cell.value)
      record, ran = runners[i].run(cell)
      records[i, cell] = record
      ran_here += ran
      progress.log(labels[i], cell, record,
                   'ran' if ran else 'computed by another process')
  rows = [_row(labels[i], workdirs[i], cell, records[i, cell])
          for i, cell in points]
  files = write_outputs(out_dir, spec, rows)
  return {'spec': spec.to_dict(), 'rows': rows, 'files': files,
          'ran': ran_here}


def _check_out(out_dir: str, spec: Spec) -> None:
  path = os.path.join(out_dir, 'sweep.json')
  if os.path.exists(path):
    try:
      old = workdir_lib.read_json(path)['spec']
    except (ValueError, KeyError, TypeError):
      old = None
    if old is not None and old != spec.to_dict():
      raise ValueError(f'{out_dir} holds another sweep ({old}); choose '
                       'another --out (nothing was changed)')
  os.makedirs(out_dir, exist_ok=True)
  workdir_lib.check_writable(out_dir)


def write_outputs(out_dir: str, spec: Spec, rows: list[dict]) -> list[str]:
  """sweep.json, sweep.csv, sweep.md and sweep.png in `out_dir`."""
  paths = [os.path.join(out_dir, f'sweep.{ext}')
           for ext in ('json', 'csv', 'md', 'png')]
  workdir_lib.write_json(paths[0], {'spec': spec.to_dict(), 'rows': rows})
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  workdir_lib.write_text(paths[1], buf.getvalue())
  workdir_lib.write_text(paths[2], markdown(spec, rows))
  workdir_lib.write_text(paths[3], plots.png_bytes(figure(spec, rows)))
  return paths


def load(out_dir: str) -> tuple[Spec, list[dict]]:
  """(spec, rows) of the sweep written to `out_dir`.

  Raises:
    FileNotFoundError: `out_dir` holds no sweep.json (named in the message).
  """
  path = os.path.join(out_dir, 'sweep.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: no sweep was written to '
                            f'{out_dir}; run python launch.py --mode=sweep '
                            f'... --out={out_dir}')
  table = workdir_lib.read_json(path)
  d = table['spec']
  spec = Spec(attack=d['attack'], param=d['param'],
              values=tuple(d['values']), targeted=d['targeted'],
              images=d['images'], fixed=tuple(sorted(d['fixed'].items())))
  return spec, table['rows']


def _title(spec: Spec) -> str:
  fixed = ', '.join(f'{k}={v}' for k, v in spec.fixed)
  return (f'{"targeted" if spec.targeted else "untargeted"} {spec.attack}'
          + (f' ({fixed})' if fixed else ''))


def markdown(spec: Spec, rows: list[dict]) -> str:
  """One row per value, one column per run: rate [95% interval]."""
  runs = list(dict.fromkeys(r['run'] for r in rows))
  metric = rows[0]['metric'].replace('_', ' ')
  n = sorted({r['num_examples'] for r in rows})
  lines = [f'{metric} of {_title(spec)} against {spec.param} '
           f'({"/".join(map(str, n))} test images per point; 95% Wilson '
           'intervals)', '',
           '| ' + spec.param + ' | ' + ' | '.join(runs) + ' |',
           '|---' * (len(runs) + 1) + '|']
  by = {(r['run'], r['value']): r for r in rows}
  for v in spec.values:
    cells_ = []
    for run in runs:
      r = by[run, v]
      cell = f'{r["rate"]:.3f} [{r["ci_low"]:.3f}, {r["ci_high"]:.3f}]'
      if spec.attack in MIN_NORM_ATTACKS and r['median_l2_successful']:
        cell += f', L2 {r["median_l2_successful"]:.2f}'
      cells_.append(cell)
    lines.append(f'| {v:g} | ' + ' | '.join(cells_) + ' |')
  if spec.attack in MIN_NORM_ATTACKS:
    lines += ['', 'L2: median L2 norm of the successful examples.']
  return '\n'.join(lines) + '\n'


def figure(spec: Spec, rows: list[dict]):
  """The metric (and median L2) against the swept value, one line per run."""
  plt = plots.pyplot()
  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  norm_row = spec.attack in MIN_NORM_ATTACKS
  nrows = 2 if norm_row else 1
  fig, axes = plt.subplots(nrows, len(datasets),
                           figsize=(5 * len(datasets), 3.6 * nrows),
                           squeeze=False)
  log_x = spec.param == 'initial_const' and min(spec.values) > 0
  for j, dataset in enumerate(datasets):
    ax = axes[0, j]
    for run in dict.fromkeys(r['run'] for r in rows
                             if r['dataset'] == dataset):
      rs = sorted((r for r in rows if r['run'] == run),
                  key=lambda r: r['value'])
      xs = [r['value'] for r in rs]
      line, = ax.plot(xs, [r['rate'] for r in rs], marker='o', ms=3,
                      label=run)
      ax.fill_between(xs, [r['ci_low'] for r in rs],
                      [r['ci_high'] for r in rs], alpha=0.2,
                      color=line.get_color(), lw=0)
      if norm_row:
        l2 = [np.nan if r['median_l2_successful'] is None
              else r['median_l2_successful'] for r in rs]
        axes[1, j].plot(xs, l2, marker='o', ms=3, color=line.get_color(),
                        label=run)
    n = sorted({r['num_examples'] for r in rows if r['dataset'] == dataset})
    ax.set_title(f'{dataset}: {_title(spec)}\n'
                 f'{"/".join(map(str, n))} test images per point, 95% bands',
                 fontsize=9)
    ax.set_ylabel(rows[0]['metric'].replace('_', ' '))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for a in axes[:, j]:
      a.set_xlabel(spec.param)
      if log_x:
        a.set_xscale('log')
    if norm_row:
      axes[1, j].set_ylabel('median L2 of successful examples')
      axes[1, j].grid(alpha=0.3)
  fig.tight_layout()
  return fig


def describe(result: dict) -> str:
  """One line for the command line."""
  return (f'{len(result["rows"])} points ({result["ran"]} computed by this '
          f'process): ' + ', '.join(result['files']))
