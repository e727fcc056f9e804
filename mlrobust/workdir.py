"""The run on disk: everything a workdir holds, read and written in one place.

  <workdir>/
    config.json       the config with secrets redacted, written once
    targets.npy       [K, d] target representation (the codebook of a codeword
                      head: needed to decode, secret like its key)
    metrics.jsonl     one JSON object per log line and per evaluation
    checkpoints/      orbax checkpoints (`mlrobust.checkpoints`)
    attacks/*.json    --mode=attack results
    eval/*.json|npz   --mode=evaluate cells and their example images
    lipschitz.json    --mode=lipschitz bounds

Every mode reads and writes a run only through this module: the config check
that keeps a workdir to one run, the targets, the trained classifier (only its
parameters and BatchNorm statistics are restored), and result files, which
are written atomically (a temporary file renamed into place), so a killed
process never leaves a half-written result behind.
"""

import json
import os
import secrets
from typing import Any

from absl import logging
import jax
from ml_collections import config_dict
import numpy as np

from mlrobust import checkpoints
from mlrobust import classifier as classifier_lib
from mlrobust import config_lib
from mlrobust import data
from mlrobust import heads
from mlrobust import models

# Fields that define a run: a workdir's checkpoint only continues a run with
# the same values. The rest (paths, logging, evaluation) may change on resume.
RUN_FIELDS = ('seed', 'data.name', 'data.num_train', 'model', 'head', 'loss',
              'optimizer', 'train.batch_size', 'train.num_epochs',
              'train.augment')


# Result files.


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any, *, indent: int = 2,
               sort_keys: bool = True) -> None:
  """Writes `obj` as JSON to `path` atomically."""
  write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def write_npz(path: str, **arrays) -> None:
  """Writes compressed arrays to `path` (ending in .npz) atomically."""
  tmp = f'{path}.tmp.npz'
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def write_npy(path: str, array: np.ndarray) -> None:
  """Writes one array to `path` (ending in .npy) atomically."""
  tmp = f'{path}.tmp.npy'
  np.save(tmp, array)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


# The config.


def _field(d: dict, dotted: str):
  for part in dotted.split('.'):
    d = d[part]
  return d


def check_or_write_config(config, workdir: str) -> None:
  """Writes config.json, or checks that the run's fields match the old one.

  Raises:
    checkpoints.CheckpointError: config.json is unreadable or holds a run with
      other RUN_FIELDS (nothing is changed).
  """
  path = os.path.join(workdir, 'config.json')
  public = config_lib.public_dict(config)
  if not os.path.exists(path):
    write_json(path, public)
    return
  try:
    # The codebook key is checked against targets.npy instead (a run's
    # codebook needs no key once made).
    old = config_lib.without_secrets(read_json(path))
    new = config_lib.without_secrets(public)
    diffs = [f for f in RUN_FIELDS if _field(old, f) != _field(new, f)]
  except (ValueError, KeyError, TypeError) as e:
    raise checkpoints.CheckpointError(
        f'{path} is unreadable or from another version ({e}); use a new '
        f'--workdir') from e
  if diffs:
    raise checkpoints.CheckpointError(
        f'workdir {workdir} holds a run with a different config; fields '
        f'that differ: {diffs}. Use a new --workdir (nothing was changed).')


def saved_config(workdir: str) -> config_dict.ConfigDict:
  """The config a workdir was trained with (its config.json; secrets absent).

  Raises:
    FileNotFoundError: the workdir holds no config.json.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: {workdir} holds no trained '
                            'run')
  return config_dict.ConfigDict(config_lib.without_secrets(read_json(path)))


# The targets.


def load_or_make_targets(config, workdir: str,
                         num_classes: int) -> np.ndarray:
  """The run's target representation, made once and kept in the workdir.

  One-hot targets, or a codebook drawn from the secret key (config or
  $MLROBUST_CODEBOOK_KEY); with no key, from a random key that is forgotten.

  Raises:
    checkpoints.CheckpointError: targets.npy unreadable, of the wrong shape,
      or not the codebook of the given key.
  """
  path = os.path.join(workdir, 'targets.npy')
  key = config_lib.codebook_key(config)
  expected = None
  if config.head.targets == 'onehot' or key is not None:
    expected = np.asarray(heads.make_targets(
        config.head.targets, num_classes, config.head.dim,
        jax.random.key(key if key is not None else 0)))
  if os.path.exists(path):
    try:
      targets = np.load(path)
    except (ValueError, OSError) as e:
      raise checkpoints.CheckpointError(f'{path} is unreadable ({e})') from e
    if targets.shape != (num_classes, config.head.dim):
      raise checkpoints.CheckpointError(
          f'{path} has shape {targets.shape}, but this config needs '
          f'({num_classes}, {config.head.dim}); use a new --workdir')
    if expected is not None and not np.array_equal(targets, expected):
      raise checkpoints.CheckpointError(
          f'{path} does not match the configured target representation (a '
          f'different codebook key?); use a new --workdir')
    return targets
  if expected is None:
    # No key given: draw a secret one; only the codebook is kept.
    expected = np.asarray(heads.make_codebook(
        jax.random.key(secrets.randbits(63)), num_classes, config.head.dim))
  write_npy(path, expected)
  return expected


# The trained classifier.


def load_classifier(config, workdir: str,
                    step: int | None = None) -> classifier_lib.Classifier:
  """The trained model of `workdir` as a Classifier (for attacks, analyses).

  Restores only the parameters and BatchNorm statistics of checkpoint `step`
  (default: the latest); the optimizer state is not read.

  Raises:
    ValueError: an invalid config.
    checkpoints.CheckpointError: no trained run, another run's config, or a
      checkpoint that cannot be read into this config's model.
  """
  config_lib.validate(config)
  image_shape, num_classes = data.info(config.data.name)
  if not os.path.exists(os.path.join(workdir, 'targets.npy')):
    raise checkpoints.CheckpointError(
        f'{workdir} holds no trained run (no targets.npy); train first with '
        f'--mode=train --workdir={workdir}')
  check_or_write_config(config, workdir)
  targets = load_or_make_targets(config, workdir, num_classes)
  model = models.make(config.model, config.head.dim)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         jax.numpy.zeros((1, *image_shape), np.float32)))
  target = {'params': abstract['params'],
            'batch_stats': abstract.get('batch_stats', {})}
  manager = checkpoints.make_manager(workdir, read_only=True)
  variables = checkpoints.restore(manager, target, step, partial=True)
  return classifier_lib.from_model(model, variables, targets,
                                   activation=config.head.activation,
                                   loss=config.loss)


def load_run(workdir: str):
  """(config, classifier) of a trained workdir, from its own config.json."""
  config = saved_config(workdir)
  return config, load_classifier(config, workdir)


# Metrics and results.


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, 'metrics.jsonl')


def read_metrics(workdir: str) -> list[dict]:
  """The records of metrics.jsonl; a line cut by a kill is skipped."""
  path = metrics_path(workdir)
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          continue
  return records


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops metrics logged after `step` (a resumed run logs them again)."""
  path = metrics_path(workdir)
  if not os.path.exists(path):
    return
  kept = [json.dumps(r) + '\n' for r in read_metrics(workdir)
          if r.get('step', step + 1) <= step]
  write_text(path, ''.join(kept))


def append_metrics(workdir: str, record: dict) -> None:
  with open(metrics_path(workdir), 'a') as f:
    f.write(json.dumps(record) + '\n')


def clean_test_accuracy(workdir: str) -> float | None:
  """The last test accuracy logged in metrics.jsonl, or None."""
  accuracy = None
  for record in read_metrics(workdir):
    if 'test_accuracy' in record:
      accuracy = record['test_accuracy']
  return accuracy


def results_dir(workdir: str, kind: str) -> str:
  """<workdir>/<kind> ('attacks' or 'eval'), created if missing."""
  path = os.path.join(workdir, kind)
  os.makedirs(path, exist_ok=True)
  return path


def read_cell(path: str) -> dict | None:
  """A finished evaluation cell, or None; an unparsable file is moved aside."""
  if not os.path.exists(path):
    return None
  try:
    result = read_json(path)
    result['metric']  # pylint: disable=pointless-statement
    return result
  except (ValueError, KeyError, TypeError):
    logging.warning('%s does not parse as a cell result; moving it to '
                    '%s.corrupt and running the cell again', path, path)
    os.replace(path, path + '.corrupt')
    return None


def cell_results(workdir: str) -> list[dict]:
  """Every finished evaluation cell of `workdir`, with its 'id'."""
  out_dir = os.path.join(workdir, 'eval')
  if not os.path.isdir(out_dir):
    return []
  results = []
  for name in sorted(os.listdir(out_dir)):
    if name.endswith('.json'):
      r = read_json(os.path.join(out_dir, name))
      r['id'] = name[:-len('.json')]
      results.append(r)
  return results
