"""DenseNet (Huang et al., 2017) in Flax Linen, returning pre-activations.

The network follows the CIFAR variant of the original paper: a 3x3 stem
convolution, `num_blocks` dense blocks of BN-ReLU-Conv composite layers joined
by transition layers (BN-ReLU, 1x1 conv, 2x2 average pooling), then BN-ReLU,
global average pooling and one dense layer with `num_outputs` units. The head
activation (softmax or tanh) is *not* applied here: `mlrobust.heads` applies it,
so the same trunk serves every target representation.

Depth counts the stem, every conv of every composite layer, the transitions and
the final dense layer, as in the DenseNet paper:
  depth = 1 + num_blocks * layers_per_block * (2 if bottleneck else 1)
          + (num_blocks - 1) + 1.
DenseNet-40 (growth 12, no bottleneck) has 3 blocks of 12 layers.

Besides the module, this file gives what `mlrobust.models` asks of every model:
`make`, `validate`, `label` and `lipschitz_structure` (the layer structure the
spectral bounds need, read from the parameter tree this module creates).
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def layers_per_block(depth: int, num_blocks: int, bottleneck: bool) -> int:
  """Composite layers in each dense block for a DenseNet of `depth`.

  Raises:
    ValueError: if `depth` does not fit the block structure.
  """
  convs_per_layer = 2 if bottleneck else 1
  inner = depth - num_blocks - 1
  if num_blocks < 1 or inner <= 0 or inner % (num_blocks * convs_per_layer):
    step = num_blocks * convs_per_layer
    raise ValueError(
        f'DenseNet depth {depth} does not fit {num_blocks} blocks with '
        f'bottleneck={bottleneck}: depth must be {num_blocks + 1} + '
        f'{step} * n for an integer n >= 1, e.g. '
        f'{[num_blocks + 1 + step * n for n in (1, 2, 4, 12)]}.')
  return inner // (num_blocks * convs_per_layer)


class _CompositeLayer(nn.Module):
  """BN-ReLU-Conv(3x3), optionally after a BN-ReLU-Conv(1x1) bottleneck."""
  growth_rate: int
  bottleneck: bool
  dropout_rate: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = x
    if self.bottleneck:
      y = nn.relu(norm()(y))
      y = nn.Conv(4 * self.growth_rate, (1, 1), use_bias=False,
                  kernel_init=_conv_init)(y)
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.growth_rate, (3, 3), padding='SAME', use_bias=False,
                kernel_init=_conv_init)(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return jnp.concatenate([x, y], axis=-1)


class _Transition(nn.Module):
  """BN-ReLU, 1x1 conv (with compression), 2x2 average pooling."""
  features: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False,
                kernel_init=_conv_init)(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet trunk and a dense output layer: pre-activations [B, outputs].

  Attributes:
    num_outputs: width of the output (classes for softmax, d for codewords).
    depth: total depth (see module docstring); 40 is the paper's model.
    growth_rate: channels added by each composite layer (k).
    num_blocks: number of dense blocks.
    bottleneck: DenseNet-B 1x1 bottleneck inside each composite layer.
    compression: transition output channels = floor(compression * input).
    dropout_rate: dropout after every conv (0 disables it).
    stem_features: channels of the stem conv; default 2 * growth_rate with a
      bottleneck, 16 otherwise (the DenseNet paper's choices).
    stem_stride: stride of the stem conv. 1 is the paper's model; 2 quarters
      the cost of every later layer (used by the small CPU presets).
  """
  num_outputs: int
  depth: int = 40
  growth_rate: int = 12
  num_blocks: int = 3
  bottleneck: bool = False
  compression: float = 1.0
  dropout_rate: float = 0.0
  stem_features: Optional[int] = None
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    n = layers_per_block(self.depth, self.num_blocks, self.bottleneck)
    stem = self.stem_features or (
        2 * self.growth_rate if self.bottleneck else 16)
    x = nn.Conv(stem, (3, 3), strides=self.stem_stride, padding='SAME',
                use_bias=False, kernel_init=_conv_init)(x)
    for block in range(self.num_blocks):
      for _ in range(n):
        x = _CompositeLayer(self.growth_rate, self.bottleneck,
                            self.dropout_rate)(x, train=train)
      if block < self.num_blocks - 1:
        features = int(x.shape[-1] * self.compression)
        x = _Transition(features, self.dropout_rate)(x, train=train)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_outputs)(x)


def make(model_config, num_outputs: int) -> DenseNet:
  """The DenseNet of a `config.model` ConfigDict."""
  m = model_config
  return DenseNet(
      num_outputs=num_outputs, depth=m.depth, growth_rate=m.growth_rate,
      num_blocks=m.num_blocks, bottleneck=m.bottleneck,
      compression=m.compression, dropout_rate=m.dropout_rate,
      stem_features=m.stem_features, stem_stride=m.stem_stride)


def validate(model_config) -> None:
  """Raises ValueError naming the field and what is allowed."""
  m = model_config
  checks = (
      (m.growth_rate >= 1, 'model.growth_rate must be >= 1'),
      (m.num_blocks >= 1, 'model.num_blocks must be >= 1'),
      (0 < m.compression <= 1, 'model.compression must be in (0, 1]'),
      (0 <= m.dropout_rate < 1, 'model.dropout_rate must be in [0, 1)'),
      (m.stem_stride in (1, 2), 'model.stem_stride must be 1 or 2'),
  )
  for ok, message in checks:
    if not ok:
      raise ValueError(f'invalid config: {message}')
  try:
    layers_per_block(m.depth, m.num_blocks, m.bottleneck)
  except ValueError as e:
    raise ValueError(f'invalid config: model.depth: {e}') from None


def label(model_config) -> str:
  return f"densenet-{model_config['depth']}-k{model_config['growth_rate']}"


def _numbered(tree: dict, prefix: str) -> list[str]:
  """Flax's auto-named submodules `prefix_<i>` of `tree`, in creation order."""
  names = [k for k in tree if k.startswith(prefix)]
  return sorted(names, key=lambda k: int(k.rsplit('_', 1)[1]))


def lipschitz_structure(variables: Any, image_size: int,
                        model_config) -> list[dict]:
  """The network as stages of layers, for `spectral.network_bounds`.

  Returns:
    [{'kind': 'chain' | 'composite', 'layers': [layer, ...]}, ...] from input
    to output, where a layer is {'name', 'kind': 'conv', 'kernel', 'size'
    (input height)}, {'name', 'kind': 'batchnorm', 'scale', 'var'},
    {'name', 'kind': 'pool', 'factor'} or {'name', 'kind': 'dense',
    'kernel'}. A 'composite' stage maps x to [x, h(x)], h being its layers.
  """
  params, stats = variables['params'], variables['batch_stats']

  def conv(p, n, name):
    return {'name': name, 'kind': 'conv', 'kernel': p['kernel'], 'size': n}

  def bn(p, s, name):
    return {'name': name, 'kind': 'batchnorm', 'scale': p['scale'],
            'var': s['var']}

  n = image_size
  stages = [{'kind': 'chain', 'layers': [conv(params['Conv_0'], n, 'stem')]}]
  n = -(-n // model_config.stem_stride)
  blocks = _numbered(params, '_CompositeLayer_')
  transitions = _numbered(params, '_Transition_')
  per_block = len(blocks) // (len(transitions) + 1)
  for i, name in enumerate(blocks):
    p, s = params[name], stats[name]
    layers = []
    for bn_name, conv_name in zip(_numbered(p, 'BatchNorm_'),
                                  _numbered(p, 'Conv_')):
      layers.append(bn(p[bn_name], s[bn_name], f'{name}/{bn_name}'))
      layers.append(conv(p[conv_name], n, f'{name}/{conv_name}'))
    stages.append({'kind': 'composite', 'layers': layers})
    if (i + 1) % per_block == 0 and (i + 1) // per_block <= len(transitions):
      t = transitions[(i + 1) // per_block - 1]
      stages.append({'kind': 'chain', 'layers': [
          bn(params[t]['BatchNorm_0'], stats[t]['BatchNorm_0'],
             f'{t}/BatchNorm_0'),
          conv(params[t]['Conv_0'], n, f'{t}/Conv_0'),
          {'name': f'{t}/avg_pool', 'kind': 'avg_pool', 'window': 2},
      ]})
      n //= 2
  stages.append({'kind': 'chain', 'layers': [
      bn(params['BatchNorm_0'], stats['BatchNorm_0'], 'final/BatchNorm_0'),
      {'name': 'global_avg_pool', 'kind': 'global_avg_pool', 'size': (n, n)},
      {'name': 'Dense_0', 'kind': 'dense',
       'kernel': params['Dense_0']['kernel']},
  ]})
  return stages
