r"""The one entry point of mlrobust: `python launch.py --mode=M ...`.

Modes on one run (need --config and --workdir):
  train      train or resume the run in the workdir, print its clean test
             accuracy (mlrobust/train.py);
  attack     attack the trained model with config.attack on
             config.eval.num_examples test images, print and save the result
             in <workdir>/attacks/ (mlrobust/attack_run.py);
  evaluate   the attack grids of config.eval (by default the paper's Tables
             3, 5-7 and the Figure 1 ladder), one resumable JSON file per cell
             in <workdir>/eval/ (mlrobust/evaluate.py);
  lipschitz  per-layer Lipschitz bounds and certified accuracy, written to
             <workdir>/lipschitz.json (mlrobust/lipschitz_run.py);
  adaptive   the adaptive attack ensemble along config.adaptive.eps and the
             gradient-masking checklist, in <workdir>/adaptive/
             (mlrobust/adaptive_run.py).
Modes on several trained runs (need --workdirs and --out; each run's own
config.json is used, so --config is not needed):
  report     tables next to the paper's, plots and Figures 1-3 in the --out
             folder, and the adaptive evaluation of runs that have one;
             --splice=DOC.md also replaces DOC.md's report section
             (mlrobust/report.py);
  figure4    Figure 4 (--out=F.png) and its per-layer tables (F.md),
             computing lipschitz.json where missing (or all, --recompute);
  sweep      one attack parameter over several runs (--attack, --param,
             --values, [--targeted, --images, --fixed]): one resumable cell
             per run and value in <run>/eval/, and a table and figure in the
             --out folder (mlrobust/sweep.py). Several processes may run the
             same sweep at once (one per device): each point runs once.

  python launch.py --config=configs/mnist.py:tanh_mse,cpu --workdir=W
  python launch.py --mode=report --workdirs=W1,W2,W3 --out=report
  python launch.py --mode=sweep --workdirs=W1,W2,W3 --attack=pgd --param=eps \
      --values=0,0.02,...,0.3 --out=sweeps/pgd_eps

Every config field can be overridden with --config.a.b=value; see
configs/common.py for the fields.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mlrobust import adaptive_run
from mlrobust import attack_run
from mlrobust import attacks
from mlrobust import checkpoints
from mlrobust import config_lib
from mlrobust import evaluate
from mlrobust import grids
from mlrobust import lipschitz_run
from mlrobust import report
from mlrobust import sharding
from mlrobust import sweep
from mlrobust import train
from mlrobust import workdir

RUN_MODES = {
    # mode: (run(config, workdir) -> result, describe(result) -> str)
    'train': (train.train_and_evaluate, train.describe),
    'attack': (attack_run.run_attack, attack_run.describe),
    'evaluate': (evaluate.run_evaluate, evaluate.describe),
    'lipschitz': (lipschitz_run.run_lipschitz, lipschitz_run.describe),
    'adaptive': (adaptive_run.run_adaptive, adaptive_run.describe),
}
MULTI_MODES = ('report', 'figure4', 'sweep')

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/mnist.py:tanh_mse,cpu.',
    lock_config=True)
_MODE = flags.DEFINE_enum('mode', 'train',
                          sorted(RUN_MODES) + list(MULTI_MODES),
                          'What to run.')
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory of the run (train, attack, '
                               'evaluate, lipschitz).')
_WORKDIRS = flags.DEFINE_list('workdirs', None,
                              'Trained runs, comma-separated (report, '
                              'figure4, sweep).')
_OUT = flags.DEFINE_string('out', None,
                           'Output: a folder (report, sweep) or a .png '
                           '(figure4).')
_SPLICE = flags.DEFINE_string('splice', None,
                              'report: also replace the report section of '
                              'this markdown file.')
_RECOMPUTE = flags.DEFINE_bool('recompute', False,
                               'figure4: recompute every lipschitz.json.')
_ATTACK = flags.DEFINE_string('attack', None, 'sweep: the attack, e.g. pgd.')
_PARAM = flags.DEFINE_string('param', None,
                             'sweep: the swept parameter, e.g. eps.')
_VALUES = flags.DEFINE_string('values', None,
                              'sweep: values, e.g. 0,0.1,0.3 or '
                              '0,0.02,...,0.3.')
_TARGETED = flags.DEFINE_bool('targeted', False,
                              'sweep: run the targeted attack.')
_IMAGES = flags.DEFINE_integer('images', None,
                               'sweep: test images per point (default: each '
                               'run\'s config.eval.images budget; 0 = all).')
_FIXED = flags.DEFINE_list('fixed', [],
                           'sweep: other attack parameters, name=value,...')

# Errors that are the user's to fix: printed as one line, no traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, checkpoints.CheckpointError,
                workdir.WorkdirError, train.NonFiniteLossError)


def _check_run_mode(mode, config) -> None:
  if config is None or not _WORKDIR.value:
    raise app.UsageError(f'--mode={mode} needs --config and --workdir')
  config_lib.validate(config)
  if mode == 'attack':
    attacks.params_from_config(config.attack)
  if mode == 'evaluate':
    grids.check(config.eval)
  if mode == 'adaptive':
    adaptive_run.check_config(config.adaptive)


def _sweep_spec() -> sweep.Spec:
  missing = [f'--{f.name}' for f in (_ATTACK, _PARAM, _VALUES) if not f.value]
  if missing:
    raise app.UsageError(f'--mode=sweep needs {", ".join(missing)}')
  return sweep.Spec(attack=_ATTACK.value, param=_PARAM.value,
                    values=sweep.parse_values(_VALUES.value),
                    targeted=_TARGETED.value, images=_IMAGES.value,
                    fixed=sweep.parse_fixed(_FIXED.value))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if sharding.maybe_initialize_distributed():
    logging.info('jax.distributed: process %d of %d, %d devices in all',
                 jax.process_index(), jax.process_count(), jax.device_count())
  mode, config = _MODE.value, _CONFIG.value
  if mode in MULTI_MODES:
    if not _WORKDIRS.value or not _OUT.value:
      raise app.UsageError(f'--mode={mode} needs --workdirs and --out')
    try:
      if mode == 'report':
        written = report.write_report(_WORKDIRS.value, _OUT.value,
                                      splice_into=_SPLICE.value)
      elif mode == 'figure4':
        written = lipschitz_run.figure4(_WORKDIRS.value, _OUT.value,
                                        recompute=_RECOMPUTE.value)
      else:
        written = [sweep.describe(sweep.run_sweep(
            _WORKDIRS.value, _sweep_spec(), _OUT.value))]
    except _USER_ERRORS as e:
      sys.exit(f'error: {e}')
    print('\n'.join(written))
    return
  try:
    _check_run_mode(mode, config)
  except ValueError as e:
    sys.exit(f'error: {e}')
  logging.info('Config (secrets redacted):\n%s',
               json.dumps(config_lib.public_dict(config), indent=2))
  run, describe = RUN_MODES[mode]
  try:
    result = run(config, _WORKDIR.value)
  except _USER_ERRORS as e:
    sys.exit(f'error: {e}')
  print(describe(result))


if __name__ == '__main__':
  app.run(main)
