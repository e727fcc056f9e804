r"""Images/s of the jitted train step and of one input-gradient step.

The input gradient (d loss / d x through the classifier view, inference mode)
is the unit cost of every gradient attack. Both are timed for the `cpu` and
`paper` DenseNets at batch 128, after warm-up, on random data of the dataset's
shape (the speed does not depend on the pixel values).

  python benchmarks/train_throughput.py --dataset=mnist --sizes=cpu,paper

Prints one markdown table row per (size, preset); see BENCHMARKS.md.
"""

import functools
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from mlrobust import classifier as classifier_lib
from mlrobust import data
from mlrobust import heads
from mlrobust import models
from mlrobust import train

_DATASET = flags.DEFINE_enum('dataset', 'mnist', sorted(data.DATASETS),
                             'Dataset whose image shape is used.')
_SIZES = flags.DEFINE_list('sizes', ['cpu', 'paper'], 'Config sizes.')
_PRESETS = flags.DEFINE_list('presets', ['tanh_mse'], 'Config presets.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement.')


def _time(fn, repeats):
  jax.block_until_ready(fn())  # Compile and warm up.
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def measure(dataset, preset, size, batch_size, repeats):
  config = common.get_config(dataset, f'{preset},{size}')
  shape, num_classes = data.info(dataset)
  model = models.make(config.model, config.head.dim)
  tx = train.make_optimizer(config, 1000)
  state = train.init_state(config, model, tx, shape)
  targets = heads.make_targets(config.head.targets, num_classes,
                               config.head.dim, jax.random.key(1))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch_size, *shape), np.uint8))
  labels = jnp.asarray(rng.integers(0, num_classes, batch_size, np.int32))
  step_fn = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, activation=config.head.activation,
      loss_name=config.loss, augment_kind=config.train.augment))
  key = jax.random.key(0)
  train_s = _time(lambda: step_fn(state, images, labels, key, targets)[1],
                  repeats)

  clf = classifier_lib.from_model(
      model, {'params': state.params, 'batch_stats': state.batch_stats},
      targets, activation=config.head.activation, loss=config.loss)
  x = data.images_to_float(images)

  @jax.jit
  def input_grad(clf, x, y):
    return jax.grad(lambda x: jnp.sum(clf.loss(x, y)))(x)

  grad_s = _time(lambda: input_grad(clf, x, labels), repeats)
  n_params = sum(p.size for p in jax.tree.leaves(state.params))
  return {'size': size, 'preset': preset, 'depth': config.model.depth,
          'growth': config.model.growth_rate, 'params': n_params,
          'train_img_s': batch_size / train_s,
          'grad_img_s': batch_size / grad_s,
          'ratio': train_s / grad_s}


def main(argv):
  del argv
  print(f'# {_DATASET.value}, batch {_BATCH.value}, jax {jax.__version__}, '
        f'{jax.devices()[0].device_kind}, {platform.machine()}')
  print('| size | preset | DenseNet | params | train step img/s | '
        'input-gradient img/s | train / gradient time |')
  print('|---|---|---|---|---|---|---|')
  for size in _SIZES.value:
    for preset in _PRESETS.value:
      r = measure(_DATASET.value, preset, size, _BATCH.value, _REPEATS.value)
      print(f"| {r['size']} | {r['preset']} | {r['depth']}-k{r['growth']} | "
            f"{r['params']:,} | {r['train_img_s']:.0f} | "
            f"{r['grad_img_s']:.0f} | {r['ratio']:.2f} |", flush=True)


if __name__ == '__main__':
  app.run(main)
