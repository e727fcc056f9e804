r"""Entry point: `python launch.py --config=configs/mnist.py:tanh_mse --workdir=W`.

Modes (--mode): train (train or resume the run in the workdir, then print its
clean test accuracy); attack (attack the trained model of the workdir with
config.attack on config.eval.num_examples test images, print and save the
result as JSON in <workdir>/attacks/); lipschitz (per-layer Lipschitz bounds and
certified accuracy, written to <workdir>/lipschitz.json); evaluate (the
paper's attack grids, Tables 3 and 5-7, one JSON file per cell in
<workdir>/eval/, resumable; see mlrobust/evaluate.py). Every config field can be overridden with
--config.a.b=value; see configs/common.py for the fields.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mlrobust import attack_run
from mlrobust import config_lib
from mlrobust import evaluate
from mlrobust import lipschitz_run
from mlrobust import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/mnist.py:tanh_mse,cpu.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for checkpoints and results.')
MODES = {'train': train.train_and_evaluate, 'attack': attack_run.run_attack,
         'lipschitz': lipschitz_run.run_lipschitz,
         'evaluate': evaluate.run_evaluate}
_MODE = flags.DEFINE_enum('mode', 'train', sorted(MODES), 'What to run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    config_lib.validate(config)
    if _MODE.value == 'attack':
      attack_run.attack_params(config.attack)
    if _MODE.value == 'evaluate':
      evaluate.check_config(config)
  except ValueError as e:
    sys.exit(f'error: {e}')
  logging.info('Config (secrets redacted):\n%s',
               json.dumps(config_lib.public_dict(config), indent=2))
  result = MODES[_MODE.value](config, _WORKDIR.value)
  if _MODE.value == 'train':
    print(f'clean test accuracy: {result["test_accuracy"]:.4f} on '
          f'{result["num_test"]} {result["dataset"]} test images '
          f'(step {result["step"]}, {result["wall_s"]:.0f} s)')
  elif _MODE.value == 'attack':
    r = result
    metric = 'success rate' if r['targeted'] else 'accuracy under attack'
    l2, linf = r['median_l2_successful'], r['median_linf_successful']
    print(f'{r["attack"]} ({"targeted" if r["targeted"] else "untargeted"}) '
          f'on {r["num_examples"]} {r["dataset"]} test images, '
          f'{r["preset"]} {r["model"]}: clean accuracy '
          f'{r["clean_accuracy"]:.4f}, {metric} {r[r["metric"]]:.4f}; '
          f'median L2 {l2 if l2 is None else round(l2, 4)}, median Linf '
          f'{linf if linf is None else round(linf, 4)} of successful '
          f'examples ({r["wall_s"]:.0f} s)\n{r["path"]}')
  elif _MODE.value == 'evaluate':
    print(f'{len(result["cells"])} cells of {result["preset"]} on '
          f'{result["dataset"]} in {result["path"]}; render them with '
          f'python -m mlrobust.report')
  else:
    c = result['certificate']
    print(f'{result["dataset"]} {result["preset"]} {result["model"]}: '
          f'network Lipschitz bound {c["lipschitz_bound"]:.4g} (paper\'s '
          f'product of circular norms '
          f'{result["network"]["circular"]["product"]:.4g}); certified '
          f'accuracy at L2 radius {c["certified_accuracy_l2"]} on '
          f'{c["num_examples"]} test images\n{result["path"]}')


if __name__ == '__main__':
  app.run(main)
