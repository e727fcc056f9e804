"""Many devices through jax.sharding: a mesh, sharded batches, replicas.

One `Mesh` over the local devices with a single 'data' axis (the default: all
devices, `config.mesh.shape = (-1,)`). Training shards each batch across it
and replicates parameters, BatchNorm statistics and optimizer state; attacks
and evaluation shard their examples. jit partitions the computation from the
shardings of its inputs (no pmap), so a program written for one device runs on
N, and its results equal the one-device results to float tolerance (tested on
4 simulated CPU devices in tests/test_sharding.py).

Attacks take the mesh of `use(mesh)` (a context), or all local devices.
Their batches are padded to a multiple of the device count by repeating the
last example; every example is attacked independently of the others in its
batch (tested), so padding changes no result and is dropped. Training needs a
batch size divisible by the device count and says so before any work.

Multi-host: `maybe_initialize_distributed()` (called by launch.py) starts
`jax.distributed` when the environment describes a multi-process job (see
README: several hosts).
"""

import contextlib
import os

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXES = ('data',)
_current = []  # The mesh of the innermost `use`.


def make_mesh(shape=(-1,), devices=None) -> Mesh:
  """A mesh of `devices` (default: all) with one 'data' axis.

  Raises:
    ValueError: a shape that is not (n,) with n = -1 (all devices) or a
      count of the available devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(shape)
  if len(shape) != len(AXES):
    raise ValueError(f'mesh.shape {shape}: one entry per axis {AXES} (only '
                     "data parallelism: parameters are replicated), e.g. "
                     '(-1,) for all devices')
  n = len(devices) if shape[0] == -1 else shape[0]
  if not 1 <= n <= len(devices):
    raise ValueError(f'mesh.shape {shape}: between 1 and {len(devices)} '
                     'devices (or -1 for all) are available')
  return Mesh(np.array(devices[:n]), AXES)


def current() -> Mesh:
  """The mesh of the innermost `use`, else one over all local devices."""
  return _current[-1] if _current else make_mesh()


@contextlib.contextmanager
def use(mesh: Mesh):
  """Attacks and evaluations inside the block run on `mesh`."""
  _current.append(mesh)
  try:
    yield mesh
  finally:
    _current.pop()


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split across the 'data' axis."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
  """Raises ValueError if `batch_size` does not split over the mesh."""
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f'{what} {batch_size} is not divisible by the {n} '
                     f'devices of the mesh; use a multiple of {n} (or set '
                     'mesh.shape to fewer devices)')


def shard(tree, mesh: Mesh):
  """Puts every array of `tree` on the mesh, split along its first axis."""
  return jax.device_put(tree, batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
  """Puts a full copy of every array of `tree` on each device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def pad(x: np.ndarray, multiple: int) -> np.ndarray:
  """x with its last example repeated up to a multiple of `multiple`."""
  extra = -len(x) % multiple
  if not extra or not len(x):
    return x
  return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])


def maybe_initialize_distributed() -> bool:
  """Starts jax.distributed for a multi-process job; True if it did.

  A job is multi-process when JAX_COORDINATOR_ADDRESS is set (with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID), or when a cluster environment jax
  recognises (SLURM, Open MPI, ...) describes more than one task
  (MLROBUST_DISTRIBUTED=1 asks for that detection).
  """
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
    return True
  if os.environ.get('MLROBUST_DISTRIBUTED') == '1':
    jax.distributed.initialize()  # Auto-detected cluster environment.
    return True
  return False
