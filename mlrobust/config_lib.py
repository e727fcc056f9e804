"""Config helpers: preset words after the colon, validation and redaction.

`parse_arg('tanh_mse,cpu', presets=..., sizes=...)` splits the text after the
colon of `--config=configs/mnist.py:tanh_mse,cpu` and rejects unknown words;
`validate(config)` checks values before any work starts.

Secrets (the codebook key) are handled here and only here: `codebook_key`
reads the key from the config or the environment, `public_dict` is the config
with secrets redacted as written to config.json, and `without_secrets` blanks
them in a config read back (or before two configs are compared).
"""

import copy
import os
from typing import Sequence

from ml_collections import config_dict

from mlrobust import data
from mlrobust import heads
from mlrobust import losses
from mlrobust import models

CODEBOOK_KEY_ENV = 'MLROBUST_CODEBOOK_KEY'
SECRET_FIELDS = (('head', 'codebook_key'),)
OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'piecewise')
AUGMENTATIONS = ('none', 'flip_crop', 'crop')
# Outputs of the head; a codebook of K x dim floats is held in memory.
MAX_HEAD_DIM = 65536


def parse_arg(arg: str | None, *, presets: Sequence[str],
              sizes: Sequence[str], default_preset: str,
              default_size: str) -> tuple[str, str]:
  """(preset, size) from a comma-separated config argument.

  Raises:
    ValueError: an unknown word, or two presets or sizes.
  """
  preset, size = None, None
  for word in filter(None, (w.strip() for w in (arg or '').split(','))):
    if word in presets and preset is None:
      preset = word
    elif word in sizes and size is None:
      size = word
    else:
      raise ValueError(
          f'config argument {word!r} is unknown or repeated in {arg!r}; give '
          f'at most one preset from {list(presets)} and one size from '
          f'{list(sizes)}, e.g. "tanh_mse,cpu"')
  return preset or default_preset, size or default_size


def _check(ok, message):
  if not ok:
    raise ValueError(f'invalid config: {message}')


def validate(config: config_dict.ConfigDict) -> None:
  """Checks a full config; raises ValueError saying what is allowed."""
  _, num_classes = data.info(config.data.name)
  _check(config.data.num_train >= 0, 'data.num_train must be >= 0 (0 = all)')
  _check(config.data.num_test >= 0, 'data.num_test must be >= 0 (0 = all)')
  _check(config.model.name in models.MODELS,
         f'model.name {config.model.name!r}; allowed: {sorted(models.MODELS)}')
  models.validate(config.model)
  h = config.head
  _check(h.activation in heads.ACTIVATIONS and h.activation != 'identity',
         f'head.activation {h.activation!r}; allowed: softmax, tanh')
  _check(h.targets in heads.TARGETS,
         f'head.targets {h.targets!r}; allowed: {list(heads.TARGETS)}')
  _check(1 <= h.dim <= MAX_HEAD_DIM,
         f'head.dim must be in [1, {MAX_HEAD_DIM}], got {h.dim}')
  if h.targets == 'onehot':
    _check(h.dim == num_classes,
           f'one-hot targets need head.dim == {num_classes} (the number of '
           f'classes of {config.data.name}), got {h.dim}')
  else:
    _check(h.activation == 'tanh',
           'codebook targets lie in (-1, 1)^d and need head.activation='
           "'tanh'")
  _check(config.loss in losses.LOSSES,
         f'loss {config.loss!r}; allowed: {sorted(losses.LOSSES)}')
  if config.loss == 'ce':
    _check(h.activation == 'softmax' and h.targets == 'onehot',
           "loss 'ce' needs head.activation='softmax' and "
           "head.targets='onehot'")
  # Runs saved before meshes existed have no mesh field: all devices.
  shape = tuple(config.get('mesh', {}).get('shape', (-1,)))
  _check(len(shape) == 1 and isinstance(shape[0], int) and
         (shape[0] == -1 or shape[0] >= 1),
         f'mesh.shape {shape}: (-1,) for all devices or (n,) with n >= 1 '
         "(one 'data' axis; parameters are replicated)")
  o = config.optimizer
  _check(o.name in OPTIMIZERS,
         f'optimizer.name {o.name!r}; allowed: {list(OPTIMIZERS)}')
  _check(o.learning_rate > 0, 'optimizer.learning_rate must be > 0, got '
         f'{o.learning_rate}')
  _check(o.schedule in SCHEDULES,
         f'optimizer.schedule {o.schedule!r}; allowed: {list(SCHEDULES)}')
  _check(o.weight_decay >= 0, 'optimizer.weight_decay must be >= 0')
  _check(0 <= o.momentum < 1, 'optimizer.momentum must be in [0, 1)')
  _check(o.warmup_epochs >= 0, 'optimizer.warmup_epochs must be >= 0')
  t = config.train
  _check(t.batch_size >= 1, f'train.batch_size must be >= 1, got '
         f'{t.batch_size}')
  _check(t.num_epochs >= 1, 'train.num_epochs must be >= 1')
  _check(t.log_every_steps >= 1, 'train.log_every_steps must be >= 1')
  _check(t.checkpoint_every_steps >= 0,
         'train.checkpoint_every_steps must be >= 0 (0 = once per epoch)')
  _check(t.augment in AUGMENTATIONS,
         f'train.augment {t.augment!r}; allowed: {list(AUGMENTATIONS)}')
  _check(config.eval.batch_size >= 1, 'eval.batch_size must be >= 1')
  _check(config.eval.num_examples >= 0,
         'eval.num_examples must be >= 0 (0 = the whole test split), got '
         f'{config.eval.num_examples}')
  _check(config.attack.batch_size >= 1,
         f'attack.batch_size must be >= 1, got {config.attack.batch_size}')
  if config.data.num_train:
    _check(config.data.num_train >= t.batch_size,
           'data.num_train must be at least train.batch_size')
  codebook_key(config)  # Validates the key if one is given.


def codebook_key(config) -> int | None:
  """The secret codebook key from the config or $MLROBUST_CODEBOOK_KEY."""
  key = config.head.codebook_key
  if key is None and os.environ.get(CODEBOOK_KEY_ENV):
    raw = os.environ[CODEBOOK_KEY_ENV]
    try:
      key = int(raw, 0)
    except ValueError:
      raise ValueError(f'${CODEBOOK_KEY_ENV} must be an integer') from None
  if key is not None and not 0 <= key < 2**63:
    raise ValueError('the codebook key must be an integer in [0, 2**63)')
  return key


def _set_secrets(d: dict, value, *, only_if_set: bool) -> dict:
  d = copy.deepcopy(d)
  for *parents, leaf in SECRET_FIELDS:
    node = d
    for part in parents:
      node = node[part]
    if not only_if_set or node.get(leaf) is not None:
      node[leaf] = value
  return d


def public_dict(config: config_dict.ConfigDict) -> dict:
  """The config as a plain dict with the secrets that are set redacted."""
  return _set_secrets(config.to_dict(), '<redacted>', only_if_set=True)


def without_secrets(d: dict) -> dict:
  """A copy of a config dict with every secret field None."""
  return _set_secrets(d, None, only_if_set=False)
