r"""`--mode=adaptive`: the adaptive ensemble along an eps grid, and the
masking checklist, on a trained workdir.

  python launch.py --config=configs/mnist.py:tanh_mse,cpu --workdir=W \
      --mode=adaptive

attacks the first `config.adaptive.num_examples` test images with the
ensemble of `config.adaptive.members` (see `mlrobust.adaptive`) at each Linf
eps of `config.adaptive.eps`, one resumable file per eps
(`W/adaptive/ensemble_eps=<eps>_n=<n>.json`, reused only if computed on the
same model and images), then runs the checklist (given
`config.eval.proxy_workdir`, a trained softmax_ce run of the same dataset,
also white-box against transfer from it) and writes
`W/adaptive/checklist_n=<n>.json`. Each file records what produced it (model
fingerprint, checkpoint step, image digest, members). The folder is
`config.adaptive.folder` ('adaptive', which the report reads): results of
another member list are never overwritten; such a run is refused and asked
for its own folder.
"""

import os
import re
import time

from absl import logging
import jax

from mlrobust import adaptive
from mlrobust import data
from mlrobust import models
from mlrobust import runner as runner_lib
from mlrobust import workdir as workdir_lib


def check_config(adaptive_config) -> None:
  """Raises ValueError for a bad `config.adaptive`."""
  a = adaptive_config
  if a.num_examples < 0:
    raise ValueError('adaptive.num_examples must be >= 0 (0 = the whole test '
                     f'split), got {a.num_examples}')
  if not a.eps or any(e < 0 for e in a.eps) or list(a.eps) != sorted(a.eps):
    raise ValueError(f'adaptive.eps must be ascending values >= 0, got '
                     f'{a.eps}')
  if (not isinstance(a.folder, str) or not re.fullmatch(r'[\w.-]+', a.folder)
      or a.folder in ('.', '..', 'eval', 'attacks', 'checkpoints')):
    raise ValueError(f'adaptive.folder {a.folder!r} must be a plain folder '
                     "name (letters, digits, '_', '-', '.'), not 'eval', "
                     "'attacks' or 'checkpoints'")
  unknown = sorted(set(a.members) - set(adaptive.MEMBERS))
  if unknown or not a.members:
    raise ValueError(f'adaptive.members {tuple(a.members)}: unknown '
                     f'{unknown}; choose from {sorted(adaptive.MEMBERS)}')


def run_adaptive(config, workdir: str) -> dict:
  """Runs (or resumes) the adaptive evaluation of `workdir`."""
  check_config(config.adaptive)
  with workdir_lib.lock(workdir):
    return _run(config, workdir)


def _run(config, workdir):
  a = config.adaptive
  clf, provenance = workdir_lib.load_trained(config, workdir)
  out_dir = workdir_lib.results_dir(workdir, a.folder)
  workdir_lib.check_writable(out_dir)
  dataset_name, x, y = data.load_test(config.data, a.num_examples)
  n = len(x)
  identity = {'model_fingerprint': provenance['model_fingerprint'],
              'step': provenance['step'], 'dataset': dataset_name,
              'test_images': workdir_lib.images_digest(x, y),
              'members': list(a.members), 'seed': a.seed}
  meta = {**identity, 'preset': workdir_lib.run_label(config),
          'model': models.label(config.model),
          'final_step': provenance['final_step'],
          'verified': provenance['verified'], 'num_examples': n}
  proxy = runner_lib.load_proxy(config, workdir)
  if proxy is not None:
    meta['proxy_workdir'] = proxy[1]
    meta['proxy_fingerprint'] = proxy[3]['model_fingerprint']
  rng = jax.random.key(a.seed)
  cells = []
  for i, eps in enumerate(a.eps):
    path = os.path.join(out_dir, f'ensemble_eps={eps:g}_n={n}.json')
    done = workdir_lib.read_cell(path) if os.path.exists(path) else None
    if done is not None and workdir_lib.stale_reason(done, identity) is None:
      cells.append(done)
      continue
    if done is not None and done.get('members') != identity['members']:
      raise ValueError(
          f'{path} holds the ensemble of {done.get("members")}, not of '
          f'{identity["members"]}; it is kept: give this member list its '
          'own folder with --config.adaptive.folder=<name>')
    start = time.time()
    result = adaptive.ensemble(clf, x, y, eps, members=tuple(a.members),
                               rng=jax.random.fold_in(rng, i))
    record = {**meta, 'eps': eps, 'metric': 'robust_accuracy',
              'wall_s': time.time() - start,
              **{k: v for k, v in result.items() if k != 'adv'}}
    workdir_lib.write_json(path, record)
    logging.info('adaptive eps=%g: robust accuracy %.4f [%.3f, %.3f] on %d '
                 'images (%.0f s)', eps, record['robust_accuracy'],
                 *record['interval'], n, record['wall_s'])
    cells.append(record)
  items = adaptive.checklist(
      clf, x, y, eps_grid=tuple(a.eps),
      ensemble_accuracy=[c['robust_accuracy'] for c in cells], rng=rng,
      proxy=proxy and proxy[2])
  checklist_path = os.path.join(out_dir, f'checklist_n={n}.json')
  workdir_lib.write_json(checklist_path, {**meta, 'items': items})
  return {'dataset': dataset_name, 'preset': meta['preset'], 'cells': cells,
          'checklist': items, 'path': out_dir, 'num_examples': n}


def describe(result: dict) -> str:
  """A table for the command line."""
  lines = [f'{result["dataset"]} {result["preset"]}: adaptive ensemble on '
           f'{result["num_examples"]} test images']
  for c in result['cells']:
    low, high = c['interval']
    lines.append(f'  eps {c["eps"]:g}: robust accuracy '
                 f'{c["robust_accuracy"]:.4f} [{low:.3f}, {high:.3f}]')
  for item in result['checklist']:
    mark = {True: 'PASS', False: 'FAIL', None: 'INFO'}[item['pass']]
    lines.append(f'  {mark} {item["check"]}: {item["numbers"]}')
    if item['pass'] is False:
      lines.append(f'       -> {item["if it fails"]}')
  lines.append(result['path'])
  return '\n'.join(lines)

