"""The run on disk: everything a workdir holds, read and written in one place.

  <workdir>/
    config.json       the config with secrets redacted, written once
    manifest.json     the run's identity: SHA-256 of targets.npy, total steps
    targets.npy       [K, d] target representation (the codebook of a codeword
                      head: needed to decode, secret like its key; owner-only)
    .lock             held by the one process writing to the run (or shared
                      by sweep processes that only add cells)
    metrics.jsonl     one JSON object per log line and per evaluation
    checkpoints/      orbax checkpoints (`mlrobust.checkpoints`)
    attacks/*.json    --mode=attack results
    eval/*.json|npz   --mode=evaluate and --mode=sweep cells and their
                      example images; eval/.locks/ holds one lock per cell
    lipschitz.json    --mode=lipschitz bounds

Every mode reads and writes a run only through this module: the config check
that keeps a workdir to one run (only training writes config.json), the
verified targets, the trained classifier (only its parameters and BatchNorm
statistics are restored, checked against their fingerprint) with its
provenance (checkpoint step, model fingerprint), the lock that keeps one
writer per workdir, and result files, which are written atomically (a
temporary file renamed into place), so a killed process never leaves a
half-written result behind, and to a fallback file named in the error when
the destination cannot be written.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import socket
import tempfile
import time
from typing import Any, NamedTuple

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
from mlrobust import paper_tables

# Fields that define a run: a workdir's checkpoint only continues a run with
# the same values. The rest (paths, logging, evaluation) may change on resume.
RUN_FIELDS = ('preset', 'seed', 'data.name', 'data.num_train', 'model', 'head',
              'loss', 'optimizer', 'train.batch_size', 'train.num_epochs',
              'train.augment')


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as asked (busy, unwritable, inconsistent)."""


def run_label(config) -> str:
  """The paper model a run is, from its actual head, targets and loss.

  'softmax_ce', 'softmax_mse' or 'tanh_mse' (see `paper_tables.HEADS`), or
  'custom' for any other combination. Results are labelled with this, never
  with the config's `preset` field alone.
  """
  head = (config['head']['activation'], config['head']['targets'],
          config['loss'])
  for preset, spec in paper_tables.HEADS.items():
    if spec == head:
      return preset
  return 'custom'


# Result files.


def _fallback(path: str, error: OSError, save) -> None:
  """Saves what could not be written to `path` elsewhere and raises."""
  folder = os.path.join(tempfile.gettempdir(), 'mlrobust-unsaved')
  os.makedirs(folder, exist_ok=True)
  fallback = os.path.join(
      folder, f'{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}-'
      f'{os.path.basename(path)}')
  save(fallback)
  raise WorkdirError(f'cannot write {path} ({error}); the result was saved '
                     f'to {fallback} instead') from error


def _tmp(path: str) -> str:
  """The temporary name of `path` while this process writes it (renamed into
  place when complete; per process, so concurrent writers never share one)."""
  return f'{path}.{os.getpid()}.tmp'


def write_text(path: str, text: str | bytes) -> None:
  """Writes `text` (or bytes, e.g. a PNG) to `path` atomically.

  Raises:
    WorkdirError: `path` cannot be written; the text went to a fallback file
      that the message names.
  """
  tmp = _tmp(path)
  mode = 'wb' if isinstance(text, bytes) else 'w'
  try:
    with open(tmp, mode) as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)

    def save(fallback):
      with open(fallback, mode) as f:
        f.write(text)
    _fallback(path, e, save)


def to_json(obj: Any, *, indent: int = 2, sort_keys: bool = True) -> str:
  """Strict JSON: NaN and infinities become null (JSON has no NaN)."""
  def strict(o):
    if isinstance(o, float) and not np.isfinite(o):
      return None
    if isinstance(o, dict):
      return {k: strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
      return [strict(v) for v in o]
    return o
  return json.dumps(strict(obj), indent=indent, sort_keys=sort_keys,
                    allow_nan=False)


def write_json(path: str, obj: Any, *, indent: int = 2,
               sort_keys: bool = True) -> None:
  """Writes `obj` as strict JSON to `path` atomically (see `write_text`)."""
  write_text(path, to_json(obj, indent=indent, sort_keys=sort_keys))


def write_npz(path: str, **arrays) -> None:
  """Writes compressed arrays to `path` (ending in .npz) atomically."""
  tmp = _tmp(path) + '.npz'
  try:
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    _fallback(path, e, lambda f: np.savez_compressed(f, **arrays))


def write_npy(path: str, array: np.ndarray) -> None:
  """Writes one array to `path` (ending in .npy) atomically."""
  tmp = _tmp(path) + '.npy'
  np.save(tmp, array)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  """The JSON in `path`; ValueError naming the file if it does not parse."""
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f'{path} is not valid JSON ({e})') from None


def check_writable(folder: str) -> None:
  """Creates `folder` if needed and checks a file can be written in it.

  Raises:
    WorkdirError: saying why not (a file in the way, read-only, too long).
  """
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.write-test-'):
      pass
  except OSError as e:
    raise WorkdirError(f'cannot write in {folder}: {e.strerror or e}. Choose '
                       'a writable --workdir.') from None


@contextlib.contextmanager
def lock(workdir: str, *, shared: bool = False):
  """Holds `<workdir>/.lock`: one writing process per workdir.

  The lock is an OS file lock (released when its process ends, however it
  ends), so a stale lock of a dead process never blocks; the file holds the
  holder's pid and host for the error message. `shared=True` is for processes
  that only add result cells (sweeps): any number of them may hold it
  together, each cell guarded by `cell_lock`, but not while a process holds
  the lock exclusively (training, evaluation).

  Raises:
    WorkdirError: another process holds the lock (named in the message).
  """
  check_writable(workdir)
  path = os.path.join(workdir, '.lock')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
  try:
    try:
      fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                  | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors='replace').strip() or 'unknown'
      raise WorkdirError(
          f'{workdir} is in use by another process ({holder}); wait for it '
          'to finish or use another --workdir') from None
    if not shared:
      os.ftruncate(fd, 0)
      os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}'.encode())
    yield
  finally:
    os.close(fd)  # Releases the lock.


@contextlib.contextmanager
def cell_lock(cell_path: str, *, blocking: bool = True):
  """Holds the lock of one result cell; yields whether it is held.

  Processes that share a results folder (several sweep processes, one per
  device or host) take a cell only while holding its lock, so every cell is
  computed once. Locks live in a `.locks/` folder beside the cell; like
  `lock`, they are OS locks that die with their process. With
  `blocking=False` the block runs at once with False if another process
  holds the cell.
  """
  folder = os.path.join(os.path.dirname(cell_path), '.locks')
  os.makedirs(folder, exist_ok=True)
  fd = os.open(os.path.join(folder, os.path.basename(cell_path) + '.lock'),
               os.O_RDWR | os.O_CREAT, 0o600)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
      held = True
    except BlockingIOError:
      held = False
    yield held
  finally:
    os.close(fd)


# The config.


def _field(d: dict, dotted: str):
  for part in dotted.split('.'):
    d = d[part]
  return d


def check_or_write_config(config, workdir: str) -> None:
  """Writes config.json (training), or checks it like `check_config`."""
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    write_json(os.path.join(workdir, 'config.json'),
               config_lib.public_dict(config))
    return
  check_config(config, workdir)


def check_config(config, workdir: str) -> None:
  """Checks that the run in `workdir` has this config's RUN_FIELDS.

  Readers (attacks, evaluations) never write config.json: a workdir's
  identity is written by its training only.

  Raises:
    checkpoints.CheckpointError: config.json is missing, unreadable or holds
      a run with other RUN_FIELDS (nothing is changed).
  """
  path = os.path.join(workdir, 'config.json')
  public = config_lib.public_dict(config)
  if not os.path.exists(path):
    raise checkpoints.CheckpointError(
        f'{path} is missing, so what was trained in {workdir} is unknown; '
        'nothing was written. Retrain into a new --workdir.')
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


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def read_manifest(workdir: str) -> dict:
  """manifest.json of a run ({} for a run from before manifests)."""
  path = os.path.join(workdir, 'manifest.json')
  if not os.path.exists(path):
    return {}
  try:
    manifest = read_json(path)
    manifest['targets_sha256']  # pylint: disable=pointless-statement
    return manifest
  except (ValueError, KeyError, TypeError) as e:
    raise checkpoints.CheckpointError(f'{path} is unreadable ({e})') from None


def write_manifest(workdir: str, *, total_steps: int) -> None:
  """Records the run's identity when training starts (targets made)."""
  path = os.path.join(workdir, 'targets.npy')
  write_json(os.path.join(workdir, 'manifest.json'),
             {'targets_sha256': _sha256(path), 'total_steps': total_steps})


def load_or_make_targets(config, workdir: str,
                         num_classes: int) -> np.ndarray:
  """The run's target representation, made once and kept in the workdir.

  One-hot targets, or a codebook drawn from the secret key (config or
  $MLROBUST_CODEBOOK_KEY); with no key, from a random key that is forgotten.
  A codebook is written owner-only (0600), in an owner-only workdir.

  Raises:
    checkpoints.CheckpointError: targets.npy unreadable, of the wrong shape,
      not finite, not the file recorded in manifest.json, or not the codebook
      of the given key.
  """
  path = os.path.join(workdir, 'targets.npy')
  key = config_lib.codebook_key(config)
  expected = None
  if config.head.targets == 'onehot' or key is not None:
    expected = np.asarray(heads.make_targets(
        config.head.targets, num_classes, config.head.dim,
        jax.random.key(key if key is not None else 0)))
  if os.path.exists(path):
    recorded = read_manifest(workdir).get('targets_sha256')
    if recorded is not None and recorded != _sha256(path):
      raise checkpoints.CheckpointError(
          f'{path} is not the file this run was trained with (its SHA-256 '
          'differs from manifest.json): it was changed or is corrupt. Restore '
          'it, or retrain into a new --workdir.')
    try:
      targets = np.load(path)
    except (ValueError, OSError) as e:
      raise checkpoints.CheckpointError(f'{path} is unreadable ({e})') from e
    if targets.shape != (num_classes, config.head.dim):
      raise checkpoints.CheckpointError(
          f'{path} has shape {targets.shape}, but this config needs '
          f'({num_classes}, {config.head.dim}); use a new --workdir')
    if not np.all(np.isfinite(targets)):
      raise checkpoints.CheckpointError(f'{path} holds NaN or infinite '
                                        'values: it is corrupt')
    if expected is not None and not np.array_equal(targets, expected):
      raise checkpoints.CheckpointError(
          f'{path} does not match the configured target representation (a '
          f'different codebook key?); use a new --workdir')
    return targets
  if expected is None:
    # No key given: draw a secret one; only the codebook is kept.
    expected = np.asarray(heads.make_codebook(
        jax.random.key(secrets.randbits(63)), num_classes, config.head.dim))
  if config.head.targets == 'codebook':
    os.chmod(workdir, 0o700)  # The codebook is secret.
  write_npy(path, expected)
  if config.head.targets == 'codebook':
    os.chmod(path, 0o600)
  return expected


# The trained classifier.


class Trained(NamedTuple):
  classifier: classifier_lib.Classifier
  provenance: dict  # What results record: see `load_trained`.


def load_trained(config, workdir: str, step: int | None = None) -> Trained:
  """The trained model of `workdir` and what identifies it.

  Restores only the parameters and BatchNorm statistics of checkpoint `step`
  (default: the latest), checked against the fingerprint written when it was
  saved; the optimizer state is not read. Never writes to the workdir.

  Returns:
    Trained(classifier, provenance) with provenance {'step', 'final_step'
    (the run's last step, None if unknown), 'model_fingerprint' (a digest of
    the variables and the targets: equal iff the model is), 'verified'
    (whether the checkpoint matched its recorded fingerprint)}.

  Raises:
    ValueError: an invalid config.
    checkpoints.CheckpointError: no trained run, another run's config, or a
      checkpoint that cannot be read into this config's model or is corrupt.
  """
  config_lib.validate(config)
  image_shape, num_classes = data.info(config.data.name)
  if not os.path.exists(os.path.join(workdir, 'targets.npy')):
    raise checkpoints.CheckpointError(
        f'{workdir} holds no trained run (no targets.npy); train first with '
        f'--mode=train --workdir={workdir}')
  check_config(config, workdir)
  targets = load_or_make_targets(config, workdir, num_classes)
  model = models.make(config.model, config.head.dim)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         jax.numpy.zeros((1, *image_shape), np.float32)))
  target = {'params': abstract['params'],
            'batch_stats': abstract.get('batch_stats', {})}
  manager = checkpoints.make_manager(workdir, read_only=True)
  restored = checkpoints.restore_checked(manager, target, step, partial=True)
  final_step = read_manifest(workdir).get('total_steps')
  if final_step is not None and restored.step != final_step:
    logging.warning('%s: using checkpoint step %d, not the run\'s final step '
                    '%d (unfinished training, or later steps removed)',
                    workdir, restored.step, final_step)
  targets_digest = hashlib.sha256(np.ascontiguousarray(targets).tobytes())
  fingerprint = hashlib.sha256(
      (restored.digest + targets_digest.hexdigest()).encode()).hexdigest()
  clf = classifier_lib.from_model(model, restored.tree, targets,
                                  activation=config.head.activation,
                                  loss=config.loss)
  return Trained(clf, {'step': restored.step, 'final_step': final_step,
                       'model_fingerprint': fingerprint[:16],
                       'verified': restored.verified})


def load_classifier(config, workdir: str,
                    step: int | None = None) -> classifier_lib.Classifier:
  """The classifier of `load_trained` (same checks)."""
  return load_trained(config, workdir, step).classifier


def images_digest(x: np.ndarray, labels: np.ndarray) -> str:
  """A short digest of test images and labels (which images a result used)."""
  h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
  h.update(np.ascontiguousarray(labels).tobytes())
  return h.hexdigest()[:16]


def stale_reason(record: dict, expected: dict) -> str | None:
  """Why a result `record` was not computed on `expected`, or None.

  `expected` holds the fields that identify what a result is about
  (model_fingerprint, step, test_images, ...); a record lacking one of them
  (written by an older mlrobust) is stale too.
  """
  for key, value in expected.items():
    if record.get(key) != value:
      return f'{key} {record.get(key)!r} != {value!r}'
  return None


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
      if not isinstance(r, dict):
        raise ValueError(f'{os.path.join(out_dir, name)} is not a cell result')
      r['id'] = name[:-len('.json')]
      results.append(r)
  return results
