"""Lipschitz bounds of layers: conv spectra by FFT, exact norms, network bounds.

Plain functions of kernel arrays and parameter trees (no model state).

Convolutions. A flax conv kernel has shape [kh, kw, c_in, c_out].
- `conv_singular_values_circular(kernel, n)`: all singular values of the
  *circular* (wrap-around) stride-1 convolution on n x n inputs. Following
  Sedghi, Gupta & Long (2018), "The singular values of convolutional layers",
  the operator is block-diagonalised by the 2-D DFT: for every frequency
  (u, v) the singular values are those of the c_in x c_out matrix of
  transformed kernel entries FFT2(kernel, s=(n, n))[u, v]. This is the
  quantity Saito & Roy's Figure 4 reports.
- `conv_norm_zero_padded(kernel, n)`: the largest singular value of the
  zero-padded ('SAME') convolution the model actually computes, by power
  iteration with its exact transpose (`jax.linear_transpose`).
- `conv_norm_upper_bound(kernel, n)`: a guaranteed upper bound on that norm:
  the circular norm on (n + k - 1) x (n + k - 1) inputs. The zero-padded
  convolution equals crop o circular-conv o zero-embed on that larger grid,
  and cropping and embedding have norm 1.
The circular norm at size n is NOT an upper bound of the zero-padded norm
(it can be smaller); use `conv_norm_upper_bound` for guarantees. For a strided
convolution (stride s), the stride-1 values above bound it from above
(subsampling has norm 1).

Other layers: dense layers (largest singular value), eval-mode BatchNorm
(max |gamma / sqrt(var + eps)|), w x w average pooling (1/w), global average
pooling over h x w (1 / sqrt(h w)), ReLU, tanh and softmax (1).

Networks: `network_bounds` takes a model's layer structure (stages of layers,
from `mlrobust.models.lipschitz_structure`: no parameter names are read here)
and returns
(i) the paper's product of layer norms, Lambda^l = ||theta^l|| Lambda^{l-1}
(Saito & Roy Section 3.4), which ignores the identity path of the dense
connections and therefore is not a valid bound for a DenseNet; and (ii) a
valid bound that respects the structure: a composite layer maps x to
[x, h(x)], whose Lipschitz constant is sqrt(1 + L_h^2).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def conv_singular_values_circular(kernel: jax.Array, n: int) -> jax.Array:
  """Singular values [n, n, min(c_in, c_out)] of the circular conv on n x n."""
  kh, kw = kernel.shape[:2]
  if kh > n or kw > n:
    raise ValueError(f'kernel {kh}x{kw} is larger than the input size {n}')
  transformed = jnp.fft.fft2(kernel, s=(n, n), axes=(0, 1))
  return jnp.linalg.svd(transformed, compute_uv=False)


@functools.partial(jax.jit, static_argnums=(1,))
def conv_norm_circular(kernel: jax.Array, n: int) -> jax.Array:
  """Largest singular value of the circular stride-1 conv on n x n inputs.

  Same value as max(conv_singular_values_circular): the square root of the
  largest eigenvalue of the smaller Gram matrix of each frequency's matrix,
  which is much cheaper than full SVDs for DenseNet's c_in >> c_out.
  """
  return _circular_norm(kernel, n)


def _circular_norm(kernel, n):
  kh, kw = kernel.shape[:2]
  if kh == kw == 1:
    # A 1x1 conv applies one matrix at every pixel: every frequency has the
    # same matrix, and its norm is the operator norm (circular or padded).
    return jnp.linalg.norm(kernel[0, 0], 2)
  if kh > n or kw > n:
    raise ValueError(f'kernel {kh}x{kw} is larger than the input size {n}')
  m = jnp.fft.fft2(kernel, s=(n, n), axes=(0, 1))  # [n, n, c_in, c_out]
  if m.shape[2] >= m.shape[3]:
    gram = jnp.einsum('uvio,uvip->uvop', jnp.conj(m), m)
  else:
    gram = jnp.einsum('uvio,uvjo->uvij', m, jnp.conj(m))
  return jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(gram)))


def conv_norm_upper_bound(kernel: jax.Array, n: int) -> jax.Array:
  """Guaranteed upper bound on the zero-padded ('SAME') conv norm at size n."""
  k = max(kernel.shape[0], kernel.shape[1])
  return conv_norm_circular(kernel, n + k - 1)


def _conv_fn(kernel, n, stride):
  def conv(x):
    return jax.lax.conv_general_dilated(
        x[None], kernel, (stride, stride), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[0]
  shape = jax.ShapeDtypeStruct((n, n, kernel.shape[2]), kernel.dtype)
  return conv, shape


@functools.partial(jax.jit, static_argnums=(1,),
                   static_argnames=('stride', 'num_iters'))
def conv_norm_zero_padded(kernel: jax.Array, n: int, *, stride: int = 1,
                          num_iters: int = 200,
                          key: jax.Array | None = None) -> jax.Array:
  """Operator norm of the zero-padded conv on n x n, by power iteration.

  Iterates v <- A^T A v / ||A^T A v|| with A's exact transpose; returns
  ||A v|| (a lower estimate that converges to the norm from below).
  """
  return _power_iteration(kernel, n, stride, num_iters, key)


def _power_iteration(kernel, n, stride=1, num_iters=200, key=None):
  if kernel.shape[0] == kernel.shape[1] == 1:
    return jnp.linalg.norm(kernel[0, 0], 2)  # Exact (see _circular_norm).
  conv, shape = _conv_fn(kernel, n, stride)
  transpose = jax.linear_transpose(conv, shape)
  key = jax.random.key(0) if key is None else key
  v = jax.random.normal(key, shape.shape, kernel.dtype)

  def body(_, v):
    w = transpose(conv(v))[0]
    return w / jnp.linalg.norm(w)

  v = jax.lax.fori_loop(0, num_iters, body, v / jnp.linalg.norm(v))
  return jnp.linalg.norm(conv(v))


def conv_dense_matrix(kernel: jax.Array, n: int, *, stride: int = 1,
                      circular: bool = False) -> np.ndarray:
  """The conv as an explicit matrix (tiny sizes only; for tests and checks)."""
  c_in = kernel.shape[2]
  if circular:
    kh, kw = kernel.shape[:2]

    def conv(x):
      # Wrap-around padding, then a VALID conv, gives the circular conv with
      # the same alignment as 'SAME'.
      ph, pw = (kh - 1) // 2, (kw - 1) // 2
      x = jnp.pad(x, ((ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)),
                  mode='wrap')
      return jax.lax.conv_general_dilated(
          x[None], kernel, (stride, stride), 'VALID',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[0]
  else:
    conv, _ = _conv_fn(kernel, n, stride)
  basis = jnp.eye(n * n * c_in).reshape(-1, n, n, c_in)
  columns = jax.vmap(conv)(basis).reshape(n * n * c_in, -1)
  return np.asarray(columns).T


CONV_METHODS = ('upper', 'circular', 'exact')


@functools.partial(jax.jit, static_argnames=('n', 'method'))
def _batched_conv_norms(kernels, *, n, method):
  if method == 'circular':
    fn = functools.partial(_circular_norm, n=n)
  elif method == 'upper':
    fn = functools.partial(_circular_norm,
                           n=n + max(kernels.shape[1], kernels.shape[2]) - 1)
  else:
    fn = functools.partial(_power_iteration, n=n)
  return jax.vmap(fn)(kernels)


_jit_power_iteration = jax.jit(_power_iteration, static_argnums=(1,))


def conv_norms(kernels, sizes, method: str = 'upper') -> list[float]:
  """`method`'s norm of each conv kernel at its input size, batched.

  Kernels of the same spatial size, output channels and input size are
  zero-padded to the largest input-channel count of their group and measured
  in one vmapped, compiled call (for 'exact', one compiled power iteration
  called per kernel) (zero input channels add zero rows to each
  frequency's matrix and zero columns to the operator, so no singular value
  changes). A DenseNet then compiles once per dense block instead of once per
  layer.
  """
  if method not in CONV_METHODS:
    raise ValueError(f'unknown method {method!r}; choose one of '
                     f'{list(CONV_METHODS)}')
  groups = {}
  for i, (k, n) in enumerate(zip(kernels, sizes)):
    groups.setdefault((k.shape[0], k.shape[1], k.shape[3], n), []).append(i)
  out = [0.0] * len(kernels)
  for (_, _, _, n), idx in groups.items():
    c_in = max(kernels[i].shape[2] for i in idx)
    stacked = jnp.stack([
        jnp.pad(kernels[i], ((0, 0), (0, 0), (0, c_in - kernels[i].shape[2]),
                             (0, 0))) for i in idx])
    if method == 'exact':
      # vmapping the power iteration turns its convs into grouped convs,
      # which XLA:CPU runs slowly; the padded kernels share one compilation.
      values = [float(_jit_power_iteration(k, n)) for k in stacked]
    else:
      values = np.asarray(_batched_conv_norms(stacked, n=n, method=method))
    for i, v in zip(idx, values):
      out[i] = float(v)
  return out


def dense_norm(w: jax.Array) -> jax.Array:
  """Largest singular value of a dense kernel [in, out]."""
  return jnp.linalg.norm(w, 2)


def batchnorm_factor(scale: jax.Array, var: jax.Array,
                     eps: float = 1e-5) -> jax.Array:
  """Lipschitz constant of eval-mode BatchNorm: max |gamma / sqrt(var+eps)|."""
  return jnp.max(jnp.abs(scale / jnp.sqrt(var + eps)))


def global_avg_pool_factor(h: int, w: int) -> float:
  return 1.0 / float(np.sqrt(h * w))


def avg_pool_factor(window: int) -> float:
  """Lipschitz constant of window x window average pooling, stride window."""
  # Each output averages window^2 inputs: ||(1/w^2) 1^T|| = 1/w.
  return 1.0 / window


def _layer_factor(layer: dict, bn_eps: float) -> float | None:
  """The factor of a non-conv layer of a structure (None for convs)."""
  kind = layer['kind']
  if kind == 'conv':
    return None
  if kind == 'batchnorm':
    # On the host: eager jnp ops would compile once per channel count.
    scale, var = np.asarray(layer['scale']), np.asarray(layer['var'])
    return float(np.max(np.abs(scale / np.sqrt(var + bn_eps))))
  if kind == 'avg_pool':
    return avg_pool_factor(layer['window'])
  if kind == 'global_avg_pool':
    return global_avg_pool_factor(*layer['size'])
  if kind == 'dense':
    return float(np.linalg.norm(np.asarray(layer['kernel']), 2))
  raise ValueError(f'unknown layer kind {kind!r}; choose one of conv, '
                   'batchnorm, avg_pool, global_avg_pool, dense')


_REPORTED_KIND = {'avg_pool': 'pool', 'global_avg_pool': 'pool'}


def network_bounds(structure: list, *, method: str = 'upper',
                   bn_eps: float = 1e-5) -> dict:
  """Per-layer norms and whole-network Lipschitz bounds of a layer structure.

  Args:
    structure: stages from input to output, as a model's
      `lipschitz_structure` gives them (see `mlrobust.models`): each
      {'kind': 'chain' | 'composite', 'layers': [layer, ...]}; a composite
      stage maps x to [x, h(x)] (a dense connection).
    method: how each conv is measured: 'upper' (guaranteed bound, the default
      for the network bound), 'circular' (the paper's FFT at the layer's input
      size) or 'exact' (power iteration on the zero-padded conv).
    bn_eps: BatchNorm epsilon.

  Returns:
    {'layers': [(name, kind, norm)], 'product': the paper's product of all
     layer factors, 'structured': the bound that accounts for the dense
     connections}. Only 'structured' with method='upper' is a guaranteed
     bound of the map from images to pre-activation outputs (L2 to L2); the
     head activation (softmax, tanh) adds a factor of at most 1.
  """
  if method not in CONV_METHODS:
    raise ValueError(f'unknown method {method!r}; choose one of '
                     f'{list(CONV_METHODS)}')
  layers = []  # [name, kind, value]; conv values filled by one batched call.
  convs = []  # (index in layers, kernel, input size)
  plan = []  # (stage kind, [indices in layers])
  for stage in structure:
    idx = []
    for layer in stage['layers']:
      if layer['kind'] == 'conv':
        convs.append((len(layers), layer['kernel'], layer['size']))
      kind = _REPORTED_KIND.get(layer['kind'], layer['kind'])
      layers.append([layer['name'], kind, _layer_factor(layer, bn_eps)])
      idx.append(len(layers) - 1)
    plan.append((stage['kind'], idx))
  norms = conv_norms([k for _, k, _ in convs], [n for _, _, n in convs],
                     method)
  for (slot, _, _), value in zip(convs, norms):
    layers[slot][2] = value
  product = structured = 1.0
  for kind, idx in plan:
    lip = float(np.prod([layers[i][2] for i in idx]))
    product *= lip
    # A composite layer maps x to [x, h(x)]: Lipschitz sqrt(1 + L_h^2).
    structured *= float(np.sqrt(1.0 + lip ** 2)) if kind == 'composite' else lip
  return {'layers': [tuple(l) for l in layers], 'product': product,
          'structured': structured}


def certified_radius(outputs: jax.Array, targets: jax.Array,
                     labels: jax.Array, lipschitz: float) -> jax.Array:
  """L2 radius [B] within which nearest-target decoding keeps `labels`.

  With outputs o = f(x) and ||f(x + d) - f(x)|| <= L ||d||, class y stays the
  nearest target for every ||d|| < min_{k != y} (||o - t_k||^2 - ||o - t_y||^2)
  / (2 L ||t_k - t_y||): each difference of squared distances is affine in o
  with gradient norm 2 ||t_k - t_y||. A negative value means the example is
  already misclassified (no certificate).
  """
  sq = jnp.sum(jnp.square(outputs[:, None, :] - targets[None]), axis=-1)
  own = jnp.take_along_axis(sq, labels[:, None], axis=1)
  gaps = jnp.linalg.norm(targets[:, None, :] - targets[None], axis=-1)
  gap_y = gaps[labels]  # [B, K]
  radius = (sq - own) / (2.0 * lipschitz * jnp.where(gap_y > 0, gap_y, 1.0))
  radius = jnp.where(jax.nn.one_hot(labels, targets.shape[0], dtype=bool),
                     jnp.inf, radius)
  return jnp.min(radius, axis=1)
