r"""Time of the per-layer Lipschitz analysis of a paper-scale DenseNet-40.

  python benchmarks/spectral_speed.py

Random weights (the cost does not depend on them), CIFAR-shaped 32x32x3 input;
prints the wall time of `spectral.densenet_bounds` for each method, including
compilation. See BENCHMARKS.md.
"""

import time

import jax
import jax.numpy as jnp

from mlrobust import spectral
from mlrobust.models import densenet


def main():
  model = densenet.DenseNet(num_outputs=10)
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  n_convs = sum('kernel' in str(p) and len(v.shape) == 4 for p, v in
                jax.tree_util.tree_leaves_with_path(variables['params']))
  print(f'DenseNet-40 (growth 12), 32x32x3 input, {n_convs} conv layers, '
        f'jax {jax.__version__} on {jax.devices()[0].device_kind}')
  for method in ('circular', 'upper', 'exact'):
    start = time.perf_counter()
    bounds = spectral.densenet_bounds(variables, 32, method=method)
    print(f'| {method} | {time.perf_counter() - start:.1f} s | '
          f"structured bound {bounds['structured']:.3g} |", flush=True)


if __name__ == '__main__':
  main()
