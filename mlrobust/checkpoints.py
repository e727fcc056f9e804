"""Orbax checkpoints of the training state, with clear errors.

A checkpoint is the pytree {'step', 'params', 'batch_stats', 'opt_state'} saved
by `orbax.checkpoint.CheckpointManager` under `<workdir>/checkpoints/<step>`.
Orbax writes each step to a temporary folder and renames it when complete, so a
run killed while saving leaves the previous checkpoint intact. A checkpoint
that cannot be read, or that does not match the model being built, raises
`CheckpointError`; nothing is deleted or overwritten.
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp


class _QuietOrbax:
  """Drops orbax's per-save INFO chatter from the absl log."""

  def filter(self, record):
    return record.levelno > 20 or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_QuietOrbax())


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable or does not match the config."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, *, max_to_keep: int = 2,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager for `<workdir>/checkpoints`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=False, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  logging.info('Saved checkpoint at step %d in %s', step, manager.directory)


def restore(manager: ocp.CheckpointManager, target: Any,
            step: Optional[int] = None, *, partial: bool = False) -> Any:
  """Restores `step` (default: latest) into the structure of `target`.

  With `partial`, `target` may name a subset of the saved top-level entries
  (e.g. only params and batch_stats); the rest is not read.

  Raises:
    CheckpointError: no checkpoint, or one that cannot be read into `target`.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(
        f'no checkpoint in {manager.directory}; train first with '
        f'--mode=train and the same --workdir')
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
        f'checkpoint {os.path.join(str(manager.directory), str(step))} '
        f'cannot be restored for this config ({type(e).__name__}: '
        f'{str(e)[:500]}). It is left untouched. If it was written by a '
        f'different config, use a new --workdir; if it is corrupt, move that '
        f'step folder away to resume from an earlier one (steps: '
        f'{list(manager.all_steps())}).') from e
  _check_structure(target, restored, manager.directory, step)
  return restored


def _check_structure(target, restored, directory, step):
  t_leaves, t_def = jax.tree.flatten(target)
  r_leaves, r_def = jax.tree.flatten(restored)
  mismatch = t_def != r_def or any(
      a.shape != b.shape for a, b in zip(t_leaves, r_leaves))
  if mismatch:
    raise CheckpointError(
        f'checkpoint {directory}/{step} does not match the model of this '
        f'config (different parameter shapes or optimizer); it is left '
        f'untouched. Use a new --workdir for a different config.')
