r"""mlrobust's adaptive ensemble against an independent AutoAttack.

  pip install torch==2.13.0                  # or any torch build
  pip install --no-deps torchattacks==3.5.1  # see below
  python benchmarks/autoattack_reference.py --workdir=W [--images=300] \
      [--eps=0.05,0.1] [--out=FILE.json]

Loads the trained run in W, takes its first --images test images (the images
`--mode=adaptive` attacks) and, at each --eps (Linf), runs in one process:
- mlrobust's ensemble (`adaptive.ensemble`, default members: APGD-CE, APGD-T,
  margin PGD, Square with 1,000 queries), and
- torchattacks' AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square
  with 5,000 queries; Croce & Hein 2020), an implementation written
  independently of this project, on the same class scores.
The model reaches torch through a small bridge: a `torch.autograd.Function`
whose forward calls the compiled class scores and whose backward calls their
compiled vector-Jacobian product (batches padded to a few sizes, so few
shapes compile). Both attacks are judged by the model's own decoding.

Prints a markdown table (robust accuracy with the 95% Wilson interval, wall
time, the examples each leaves unbroken that the other breaks) and, with
--out, writes it as JSON with the model fingerprint and the images' digest.
The bar: the ensemble's robust accuracy is no higher than the reference's
+ 0.01 at every eps.

torchattacks is installed without its declared dependencies: it pins
requests~=2.25.1 and asks for torchvision, neither of which its attacks use,
so neither is an extra of this project. Before attacking, the bridge's input
gradient of the cross-entropy is checked against JAX's own.
"""

import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mlrobust import adaptive
from mlrobust import data
from mlrobust import stats
from mlrobust import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run.',
                               required=True)
_IMAGES = flags.DEFINE_integer('images', 300, 'Test images attacked.')
_EPS = flags.DEFINE_list('eps', ['0.05', '0.1'], 'Linf budgets.')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON file for the results.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of both attacks.')


def _bucket(n: int) -> int:
  """Padded batch size: powers of two up to 64, then multiples of 64."""
  return 1 << max(0, (n - 1).bit_length()) if n <= 64 else -(-n // 64) * 64


def torch_bridge(clf):
  """An nn.Module computing clf.scores on NCHW torch tensors, with gradients.

  Forward and backward run the compiled JAX functions on padded batches.
  """
  import torch  # pylint: disable=g-import-not-at-top

  scores = jax.jit(lambda c, v: c.scores(v))
  vjp = jax.jit(lambda c, v, g: jax.vjp(c.scores, v)[1](g)[0])

  def pad(a, n):
    return np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:],
                                       a.dtype)])

  class Scores(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x):  # pylint: disable=arguments-differ
      v = x.detach().cpu().numpy().transpose(0, 2, 3, 1).astype(np.float32)
      ctx.v = v
      out = np.asarray(scores(clf, jnp.asarray(pad(v, _bucket(len(v))))))
      return torch.from_numpy(out[:len(v)].copy()).to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # pylint: disable=arguments-differ
      v = ctx.v
      n = _bucket(len(v))
      g = g.detach().cpu().numpy().astype(np.float32)
      out = np.asarray(vjp(clf, jnp.asarray(pad(v, n)),
                           jnp.asarray(pad(g, n))))[:len(v)]
      return torch.from_numpy(out.transpose(0, 3, 1, 2).copy())

  class Model(torch.nn.Module):

    def __init__(self):
      super().__init__()
      # torchattacks reads the device from the model's parameters.
      self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
      return Scores.apply(x)

  return Model().eval()


def _check_bridge(model, clf, x, y):
  """The bridge's input gradient of the cross-entropy equals JAX's."""
  import torch  # pylint: disable=g-import-not-at-top

  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  loss = torch.nn.functional.cross_entropy(
      model(xt), torch.from_numpy(y.astype(np.int64)), reduction='sum')
  loss.backward()
  theirs = xt.grad.numpy().transpose(0, 2, 3, 1)

  def ce(v):
    s = jax.nn.log_softmax(clf.scores(v))
    return -jnp.sum(jnp.take_along_axis(s, jnp.asarray(y)[:, None], 1))

  ours = np.asarray(jax.grad(ce)(jnp.asarray(x)))
  scale = np.abs(ours).max() + 1e-12
  if np.abs(theirs - ours).max() > 1e-4 * scale:
    raise RuntimeError('the torch bridge disagrees with jax.grad: max diff '
                       f'{np.abs(theirs - ours).max():.3g} (scale {scale:.3g})')


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value
  config = workdir_lib.saved_config(workdir)
  clf, provenance = workdir_lib.load_trained(config, workdir)
  dataset_name, x, y = data.load_test(config.data, _IMAGES.value)
  n = len(x)
  model = torch_bridge(clf)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  yt = torch.from_numpy(y.astype(np.int64))
  clean = float(np.mean(np.asarray(clf.predict(jnp.asarray(x))) == y))
  _check_bridge(model, clf, x[:8], y[:8])
  rows = []
  for eps in map(float, _EPS.value):
    start = time.perf_counter()
    ours = adaptive.ensemble(clf, x, y, eps,
                             rng=jax.random.key(_SEED.value))
    ours_s = time.perf_counter() - start
    ours_ok = np.array([b is None for b in ours['broken_by']])

    attack = torchattacks.AutoAttack(model, norm='Linf', eps=eps,
                                     version='standard',
                                     n_classes=clf.num_classes,
                                     seed=_SEED.value)
    start = time.perf_counter()
    adv = attack(xt, yt).detach().numpy().transpose(0, 2, 3, 1)
    theirs_s = time.perf_counter() - start
    linf = float(np.abs(adv - x).max())
    if linf > eps + 1e-5 or adv.min() < 0 or adv.max() > 1:
      raise RuntimeError(f'reference left the ball or box: Linf {linf}')
    theirs_ok = np.asarray(clf.predict(jnp.asarray(adv))) == y
    row = {
        'eps': eps,
        'ensemble': int(ours_ok.sum()) / n,
        'ensemble_interval': stats.wilson_interval(int(ours_ok.sum()), n),
        'ensemble_s': ours_s,
        'ensemble_per_member': ours['per_member'],
        'autoattack': int(theirs_ok.sum()) / n,
        'autoattack_interval': stats.wilson_interval(int(theirs_ok.sum()), n),
        'autoattack_s': theirs_s,
        'only_autoattack_breaks': int(np.sum(ours_ok & ~theirs_ok)),
        'only_ensemble_breaks': int(np.sum(~ours_ok & theirs_ok)),
        'within_bar': int(ours_ok.sum()) / n <= int(theirs_ok.sum()) / n
                      + 0.01,
    }
    rows.append(row)
    print(row, flush=True)

  meta = {'workdir': workdir, 'dataset': dataset_name,
          'preset': workdir_lib.run_label(config),
          'model_fingerprint': provenance['model_fingerprint'],
          'step': provenance['step'], 'num_examples': n,
          'test_images': workdir_lib.images_digest(x, y),
          'clean_accuracy': clean, 'seed': _SEED.value,
          'torchattacks': torchattacks.__version__,
          'torch': torch.__version__, 'jax': jax.__version__,
          'machine': f'{platform.machine()} {jax.devices()[0].device_kind}'}
  print(f'\n# {dataset_name} {meta["preset"]} ({config.size}), {n} test '
        f'images (clean accuracy {clean:.3f}), fingerprint '
        f'{meta["model_fingerprint"]}, torchattacks {torchattacks.__version__}'
        f', {meta["machine"]}')
  print('| eps | mlrobust ensemble | AutoAttack (torchattacks) | only AA '
        'breaks | only ensemble breaks | ensemble s | AutoAttack s |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    lo, hi = r['ensemble_interval']
    alo, ahi = r['autoattack_interval']
    print(f'| {r["eps"]:g} | {r["ensemble"]:.3f} [{lo:.3f}, {hi:.3f}] | '
          f'{r["autoattack"]:.3f} [{alo:.3f}, {ahi:.3f}] | '
          f'{r["only_autoattack_breaks"]} | {r["only_ensemble_breaks"]} | '
          f'{r["ensemble_s"]:.0f} | {r["autoattack_s"]:.0f} |')
  if _OUT.value:
    workdir_lib.write_json(_OUT.value, {**meta, 'rows': rows})


if __name__ == '__main__':
  app.run(main)
