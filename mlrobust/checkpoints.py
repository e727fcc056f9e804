"""Orbax checkpoints of the training state, verified when read.

A checkpoint is the pytree {'step', 'params', 'batch_stats', 'opt_state'} saved
by `orbax.checkpoint.CheckpointManager` under `<workdir>/checkpoints/<step>`.
Orbax writes each step to a temporary folder and renames it when complete, so a
run killed while saving leaves the previous checkpoint intact.

Orbax does not notice a flipped byte in a chunk file: such a checkpoint loads
with some parameters changed. So every save also writes
`<step>/fingerprint.json`, the SHA-256 of the whole state and of its variables
(params and batch_stats) as they were saved, and every restore recomputes the
digest of what it read and refuses a mismatch, like any non-finite value. A
checkpoint that cannot be read, does not match the model being built, or does
not match its fingerprint raises `CheckpointError`; nothing is deleted or
overwritten.
"""

import hashlib
import json
import os
from typing import Any, NamedTuple, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

FINGERPRINT_FILE = 'fingerprint.json'
VARIABLES = ('params', 'batch_stats')


class _QuietOrbax:
  """Drops orbax's per-save INFO chatter from the absl log."""

  def filter(self, record):
    return record.levelno > 20 or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_QuietOrbax())


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable, corrupt or not of this config."""


class Restored(NamedTuple):
  tree: Any  # The restored pytree, in the structure of the target.
  step: int
  digest: str  # SHA-256 of what was read.
  verified: bool  # Whether a fingerprint recorded at save time matched.


def tree_digest(tree: Any) -> str:
  """SHA-256 of a pytree's leaves: their paths, dtypes, shapes and bytes."""
  h = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in leaves:
    a = np.ascontiguousarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def variables_of(state: dict) -> dict:
  return {k: state[k] for k in VARIABLES}


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, *, max_to_keep: int = 2,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager for `<workdir>/checkpoints`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=False, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _fingerprint_path(manager, step) -> str:
  return os.path.join(str(manager.directory), str(step), FINGERPRINT_FILE)


def save(manager: ocp.CheckpointManager, step: int, state: dict) -> None:
  """Saves `state` at `step` with its fingerprint."""
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  fingerprint = {'state': tree_digest(state),
                 'variables': tree_digest(variables_of(state))}
  path = _fingerprint_path(manager, step)
  with open(path + '.tmp', 'w') as f:
    json.dump(fingerprint, f)
  os.replace(path + '.tmp', path)
  logging.info('Saved checkpoint at step %d in %s', step, manager.directory)


def restore_checked(manager: ocp.CheckpointManager, target: Any,
                    step: Optional[int] = None, *,
                    partial: bool = False) -> Restored:
  """Restores `step` (default: latest) into the structure of `target`.

  With `partial`, `target` names only the variables (params and batch_stats);
  the optimizer state is not read.

  Raises:
    CheckpointError: no checkpoint; one that cannot be read into `target`;
      non-finite values; or values that differ from the fingerprint recorded
      when it was saved (a corrupt file).
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(
        f'no checkpoint in {manager.directory}; train first with '
        f'--mode=train and the same --workdir')
  where = os.path.join(str(manager.directory), str(step))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    if partial:
      args = ocp.args.PyTreeRestore(
          abstract,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)
    else:
      args = ocp.args.StandardRestore(abstract)
    restored = manager.restore(step, args=args)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'checkpoint {where} cannot be restored for this config '
        f'({type(e).__name__}: {str(e)[:500]}). It is left untouched. If it '
        f'was written by a different config, use a new --workdir; if it is '
        f'corrupt, move that step folder away to resume from an earlier one '
        f'(steps: {list(manager.all_steps())}).') from e
  _check_structure(target, restored, where)
  for leaf in jax.tree.leaves(restored):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
      raise CheckpointError(
          f'checkpoint {where} holds NaN or infinite values: it is corrupt. '
          f'It is left untouched; move that step folder away to use an '
          f'earlier one (steps: {list(manager.all_steps())}).')
  digest = tree_digest(restored)
  verified = False
  try:
    with open(_fingerprint_path(manager, step)) as f:
      recorded = json.load(f)['variables' if partial else 'state']
  except FileNotFoundError:
    logging.warning('Checkpoint %s has no %s (saved by an older mlrobust): '
                    'its integrity cannot be verified', where,
                    FINGERPRINT_FILE)
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f'{where}/{FINGERPRINT_FILE} is unreadable ({e}); '
                          'the checkpoint cannot be verified') from e
  else:
    if recorded != digest:
      raise CheckpointError(
          f'checkpoint {where} does not match the fingerprint recorded when '
          f'it was saved: a file of it is corrupt. It is left untouched; '
          f'move that step folder away to use an earlier one (steps: '
          f'{list(manager.all_steps())}).')
    verified = True
  return Restored(restored, int(step), digest, verified)


def restore(manager: ocp.CheckpointManager, target: Any,
            step: Optional[int] = None, *, partial: bool = False) -> Any:
  """The restored tree of `restore_checked` (same checks)."""
  return restore_checked(manager, target, step, partial=partial).tree


def _check_structure(target, restored, where):
  t_leaves, t_def = jax.tree.flatten(target)
  r_leaves, r_def = jax.tree.flatten(restored)
  mismatch = t_def != r_def or any(
      a.shape != b.shape for a, b in zip(t_leaves, r_leaves))
  if mismatch:
    raise CheckpointError(
        f'checkpoint {where} does not match the model of this config '
        f'(different parameter shapes or optimizer); it is left untouched. '
        f'Use a new --workdir for a different config.')
