"""Training and clean evaluation: `train_and_evaluate(config, workdir)`.

The train step is a pure jitted function of (state, images, labels, key); the
batch of step s and its randomness depend only on (seed, s), so a run killed at
any moment and restarted with the same command resumes from its last checkpoint
and ends with the parameters an uninterrupted run would have.

The run's files (config.json, targets.npy, metrics.jsonl, checkpoints/ every
epoch or every N steps and at the end) are read and written through
`mlrobust.workdir`.
"""

import functools
import time
from typing import Any

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlrobust import checkpoints
from mlrobust import classifier as classifier_lib
from mlrobust import config_lib
from mlrobust import data
from mlrobust import models
from mlrobust import sharding
from mlrobust import workdir as workdir_lib


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate at each step, from `config.optimizer`.

  A linear warmup from 0 over `warmup_epochs`, then 'constant', 'cosine'
  (decay to 0 at the last step) or 'piecewise' (x0.1 at 50% and 75% of all
  steps, counted from step 0).
  """
  o = config.optimizer
  total = config.train.num_epochs * steps_per_epoch
  warmup = int(o.warmup_epochs * steps_per_epoch)
  if o.schedule == 'constant':
    schedule = optax.constant_schedule(o.learning_rate)
  elif o.schedule == 'cosine':
    schedule = optax.cosine_decay_schedule(o.learning_rate,
                                           max(total - warmup, 1))
  elif o.schedule == 'piecewise':
    schedule = optax.piecewise_constant_schedule(
        o.learning_rate, {int(0.5 * total) - warmup: 0.1,
                          int(0.75 * total) - warmup: 0.1})
  else:
    raise ValueError(f'unknown schedule {o.schedule!r}; choose one of '
                     f'{list(config_lib.SCHEDULES)}')
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, warmup), schedule],
        [warmup])
  return schedule


def make_optimizer(config,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """The optax optimizer of `config.optimizer` with its schedule."""
  o = config.optimizer
  schedule = make_schedule(config, steps_per_epoch)
  if o.name == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay),
        optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
  if o.name == 'adam':
    return optax.chain(optax.add_decayed_weights(o.weight_decay),
                       optax.adam(schedule))
  if o.name == 'adamw':
    return optax.adamw(schedule, weight_decay=o.weight_decay)
  raise ValueError(f'unknown optimizer {o.name!r}; choose one of '
                   f'{list(config_lib.OPTIMIZERS)}')


def augment(key: jax.Array, x: jax.Array, kind: str) -> jax.Array:
  """Random 4-pixel-padded crops (and horizontal flips): x [B, H, W, C]."""
  if kind == 'none':
    return x
  b, h, w, _ = x.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets = jax.random.randint(crop_key, (b, 2), 0, 9)
  crop_fn = lambda img, o: jax.lax.dynamic_slice(
      img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  x = jax.vmap(crop_fn)(padded, offsets)
  if kind == 'flip_crop':
    flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  return x


def train_step(state: TrainState, images: jax.Array, labels: jax.Array,
               key: jax.Array, targets: jax.Array, *, model, tx, activation,
               loss_name, augment_kind):
  """One optimizer step on uint8 images [B, H, W, C] -> (state, metrics)."""
  step_key = jax.random.fold_in(key, state.step)
  aug_key, dropout_key = jax.random.split(step_key)
  x = augment(aug_key, data.images_to_float(images), augment_kind)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    ev = classifier_lib.evaluate_logits(logits, targets, activation,
                                        loss_name, labels)
    return jnp.mean(ev.loss), (ev.prediction, updates['batch_stats'])

  (loss, (prediction, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state)
  metrics = {'loss': loss, 'accuracy': jnp.mean(prediction == labels),
             'grad_norm': optax.global_norm(grads)}
  return new_state, metrics


@jax.jit
def _predict(clf: classifier_lib.Classifier, images: jax.Array) -> jax.Array:
  return clf.predict(data.images_to_float(images))


def accuracy(clf: classifier_lib.Classifier, split: data.Split,
             batch_size: int, limit: int = 0) -> float:
  """Clean accuracy of `clf` on the first `limit` examples (0 = all), the
  images split across the devices of `sharding.current()`."""
  mesh = sharding.current()
  ndev = mesh.devices.size
  correct, total = 0, 0
  for images, labels in data.eval_batches(split, batch_size, limit):
    if ndev > 1:
      images = sharding.shard(sharding.pad(np.asarray(images), ndev), mesh)
    prediction = np.asarray(_predict(clf, images))[:len(labels)]
    correct += int(np.sum(prediction == np.asarray(labels)))
    total += len(labels)
  return correct / total


def init_state(config, model, tx, image_shape) -> TrainState:
  variables = model.init(jax.random.key(config.seed),
                         jnp.zeros((1, *image_shape), jnp.float32))
  params = variables['params']
  return TrainState(step=jnp.array(0, jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))


def _state_dict(state: TrainState) -> dict:
  """The checkpointed pytree of a TrainState."""
  return {'step': state.step, 'params': state.params,
          'batch_stats': state.batch_stats, 'opt_state': state.opt_state}


def _first_bad_step(pending) -> int | None:
  """The first step with a non-finite loss or gradient, of (step, metrics)."""
  values = jax.device_get([(m['loss'], m['grad_norm']) for _, m in pending])
  for (step, _), (loss, grad_norm) in zip(pending, values):
    # The gradient too: a NaN can reach the parameters while the loss stays
    # finite (ReLU and softmax can hide it in the forward pass).
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      return step
  return None


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns final metrics.

  Returns:
    {'test_accuracy': float, 'num_test': int, 'step': int, 'wall_s': float}

  Raises:
    ValueError: an invalid config.
    FileNotFoundError: missing data.
    checkpoints.CheckpointError: a workdir or checkpoint that cannot be used.
    NonFiniteLossError: the loss became NaN or infinite (the last good
      checkpoint stays).
  """
  config_lib.validate(config)
  # Data parallel: the batch split across the mesh, the state replicated.
  mesh = sharding.make_mesh(config.mesh.shape)
  sharding.check_batch(config.train.batch_size, mesh, 'train.batch_size')
  with workdir_lib.lock(workdir), sharding.use(mesh):  # Creates the workdir.
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config, workdir: str, mesh) -> dict:
  start_time = time.time()
  workdir_lib.check_or_write_config(config, workdir)
  dataset = data.load(config.data)
  targets = workdir_lib.load_or_make_targets(config, workdir,
                                             dataset.num_classes)
  image_shape = dataset.train.images.shape[1:]

  n_train, batch_size = len(dataset.train), config.train.batch_size
  steps_per_epoch = n_train // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f'train.batch_size {batch_size} exceeds the '
                     f'{n_train} training images')
  total_steps = config.train.num_epochs * steps_per_epoch
  workdir_lib.write_manifest(workdir, total_steps=total_steps)
  model = models.make(config.model, config.head.dim)
  tx = make_optimizer(config, steps_per_epoch)
  state = init_state(config, model, tx, image_shape)

  manager = checkpoints.make_manager(workdir)
  if manager.latest_step() is not None:
    state = TrainState(**checkpoints.restore(manager, _state_dict(state)))
    logging.info('Resumed from step %d of %d', int(state.step), total_steps)
  step = int(state.step)
  state = sharding.replicate(state, mesh)
  workdir_lib.truncate_metrics(workdir, step)

  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx,
                        activation=config.head.activation,
                        loss_name=config.loss,
                        augment_kind=config.train.augment),
      donate_argnums=(0,))
  base_key = sharding.replicate(jax.random.key(config.seed), mesh)
  targets_device = sharding.replicate(jnp.asarray(targets), mesh)
  ckpt_every = config.train.checkpoint_every_steps

  def to_classifier(s):
    return classifier_lib.from_model(
        model, {'params': s.params, 'batch_stats': s.batch_stats},
        targets_device, activation=config.head.activation, loss=config.loss)

  pending = []  # (step, device metrics) since the last finiteness check.
  window_start, window_steps = time.time(), 0
  while step < total_steps:
    idx = data.train_batch_indices(config.seed, step, batch_size, n_train)
    images, labels = sharding.shard(
        (dataset.train.images[idx], dataset.train.labels[idx]), mesh)
    state, metrics = step_fn(state, images, labels, base_key, targets_device)
    pending.append((step, metrics))
    step += 1
    window_steps += 1
    epoch_end = step % steps_per_epoch == 0
    save_now = (epoch_end or step == total_steps or
                (ckpt_every and step % ckpt_every == 0))
    if step % config.train.log_every_steps == 0 or save_now:
      bad = _first_bad_step(pending)
      if bad is not None:
        raise NonFiniteLossError(
            f'training loss or gradient is not finite at step {bad}; '
            f'stopped. The last good checkpoint ({manager.latest_step()}) '
            f'is kept in {manager.directory}. Lower '
            f'optimizer.learning_rate or check the data.')
      window = jax.device_get([m for _, m in pending[-window_steps:]])
      elapsed = time.time() - window_start
      record = {
          'step': step, 'epoch': step / steps_per_epoch,
          'train_loss': float(np.mean([m['loss'] for m in window])),
          'train_accuracy': float(np.mean([m['accuracy'] for m in window])),
          'images_per_sec': window_steps * batch_size / elapsed,
      }
      eta = (total_steps - step) * elapsed / window_steps
      logging.info(
          'step %d/%d (epoch %.2f) loss %.4f acc %.4f  %.0f img/s  ETA %s',
          step, total_steps, record['epoch'], record['train_loss'],
          record['train_accuracy'], record['images_per_sec'],
          time.strftime('%H:%M:%S', time.gmtime(eta)))
      workdir_lib.append_metrics(workdir, record)
      pending, window_start, window_steps = [], time.time(), 0
    if save_now:
      checkpoints.save(manager, step, _state_dict(state))
      if epoch_end or step == total_steps:
        acc = accuracy(to_classifier(state), dataset.test,
                       config.eval.batch_size)
        logging.info('step %d: test accuracy %.4f on %d %s test images', step,
                     acc, len(dataset.test), dataset.name)
        workdir_lib.append_metrics(workdir, {
            'step': step, 'epoch': step / steps_per_epoch,
            'test_accuracy': acc})
      window_start = time.time()  # Exclude saving and evaluation.

  test_acc = accuracy(to_classifier(state), dataset.test,
                      config.eval.batch_size)
  manager.close()
  return {'test_accuracy': test_acc, 'num_test': len(dataset.test),
          'dataset': dataset.name, 'step': step,
          'wall_s': time.time() - start_time}


def describe(result: dict) -> str:
  """One line for the command line."""
  return (f'clean test accuracy: {result["test_accuracy"]:.4f} on '
          f'{result["num_test"]} {result["dataset"]} test images '
          f'(step {result["step"]}, {result["wall_s"]:.0f} s)')
