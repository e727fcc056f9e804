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

import time

from absl import logging
import numpy as np

from mlrobust import attacks
from mlrobust import grids
from mlrobust import runner as runner_lib
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
  proxy = runner_lib.load_proxy(config, workdir)
  # As many test images as the largest cell needs (0 = all of them).
  runner = runner_lib.Runner(config, workdir, grids.max_images(config.eval),
                             proxy)
  cells, ladders = grids.plan(config.eval, len(runner.x),
                              proxy_name=proxy and proxy[0])
  results = []
  progress = _Progress(cells)
  for i, cell in enumerate(cells):
    record, ran = runner.run(cell)
    progress.done(i, cell, record, ran)
    results.append(record)
  for ladder in ladders:
    for cell in ladder:
      record, _ = runner.run(cell)
      results.append(record)
      logging.info('Ladder: %s %s %s=%g success %.4f', cell.attack,
                   'targeted' if cell.targeted else 'untargeted', cell.param,
                   cell.value, record['success_rate'])
      if record['success_rate'] >= 1.0:
        break
  return {'workdir': workdir, 'dataset': runner.dataset,
          'preset': workdir_lib.run_label(config),
          'cells': results, 'path': runner.out_dir}


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
