r"""Time of the per-layer Lipschitz analysis of a paper-scale DenseNet-40.

  python benchmarks/spectral_speed.py [circular upper exact]

Random weights (the cost does not depend on them), CIFAR-shaped 32x32x3 input.
For each method, the wall time (compilation included, caches cleared) of
(a) the baseline: one compiled call per conv layer (each layer's shape is new,
so each compiles), and (b) `spectral.network_bounds`, which batches the
layers of equal kernel size, output channels and input size into one vmapped
call. See BENCHMARKS.md.
"""

import sys
import time

import jax
import ml_collections
import numpy as np

from mlrobust import spectral
from mlrobust.models import densenet


def _convs(variables, image_size):
  kernels, sizes = [], []
  n = image_size
  params = variables['params']
  kernels.append(params['Conv_0']['kernel'])
  sizes.append(n)
  blocks = sorted((k for k in params if k.startswith('_CompositeLayer_')),
                  key=lambda k: int(k.rsplit('_', 1)[1]))
  per_block = len(blocks) // 3
  for i, name in enumerate(blocks):
    kernels.append(params[name]['Conv_0']['kernel'])
    sizes.append(n)
    if (i + 1) % per_block == 0 and (i + 1) // per_block < 3:
      t = f'_Transition_{(i + 1) // per_block - 1}'
      kernels.append(params[t]['Conv_0']['kernel'])
      sizes.append(n)
      n //= 2
  return kernels, sizes


def _per_layer(kernels, sizes, method):
  fn = {'circular': spectral.conv_norm_circular,
        'upper': spectral.conv_norm_upper_bound,
        'exact': spectral.conv_norm_zero_padded}[method]
  return [float(fn(k, n)) for k, n in zip(kernels, sizes)]


def main(methods):
  model = densenet.DenseNet(num_outputs=10)
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  kernels, sizes = _convs(variables, 32)
  print(f'DenseNet-40 (growth 12), 32x32x3 input, {len(kernels)} conv '
        f'layers, jax {jax.__version__} on {jax.devices()[0].device_kind}')
  print('| method | per layer (baseline) | network_bounds (batched) | ratio '
        '| max rel. difference |')
  print('|---|---|---|---|---|')
  for method in methods:
    jax.clear_caches()
    start = time.perf_counter()
    baseline = _per_layer(kernels, sizes, method)
    t_base = time.perf_counter() - start
    jax.clear_caches()
    start = time.perf_counter()
    structure = densenet.lipschitz_structure(
        variables, 32, ml_collections.ConfigDict({'stem_stride': 1}))
    bounds = spectral.network_bounds(structure, method=method)
    t_new = time.perf_counter() - start
    convs = [v for _, kind, v in bounds['layers'] if kind == 'conv']
    diff = np.max(np.abs(np.array(convs) - baseline) / np.array(baseline))
    print(f'| {method} | {t_base:.1f} s | {t_new:.1f} s | '
          f'{t_new / t_base:.2f} | {diff:.1e} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:] or ('circular', 'upper', 'exact'))
