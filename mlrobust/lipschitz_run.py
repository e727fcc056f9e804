r"""`--mode=lipschitz`: per-layer Lipschitz bounds and certified radii of a run.

  python launch.py --config=configs/mnist.py:softmax_ce,cpu --workdir=W \
      --mode=lipschitz

writes `W/lipschitz.json`: for every layer, the circular FFT norm at the
layer's input size (the paper's Figure 4 quantity), the exact norm of the
zero-padded convolution (power iteration) and its guaranteed upper bound; the
whole-network bounds (the paper's product, and the structured bound that
accounts for the dense connections); and the certified accuracy of the first
`config.eval.num_examples` test images at L2 radii and at the Linf eps values
of the attacks (an Linf ball of radius eps lies in the L2 ball of radius
eps * sqrt(pixels)). Certificates come from a bound and may be small; they
are reported as they are.

  python launch.py --mode=figure4 --workdirs=W1,W2,... --out=figure4.png \
      [--recompute]

does the same for several workdirs in one call (each with the config it was
trained with, from its config.json; a workdir that already has lipschitz.json
is only read unless --recompute), then draws Figure 4 (per conv layer, the
circular bound of each model, log scale, one panel per dataset) and writes
the per-layer tables, CE next to MSE, as markdown next to it (figure4.md).
"""

import os

import numpy as np

from mlrobust import data
from mlrobust import models
from mlrobust import plots
from mlrobust import spectral
from mlrobust import workdir as workdir_lib

L2_RADII = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
LINF_EPS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)


def run_lipschitz(config, workdir: str) -> dict:
  """Computes the bounds of `workdir`'s model; writes and returns them."""
  with workdir_lib.lock(workdir):
    return _run_lipschitz(config, workdir)


def _run_lipschitz(config, workdir):
  clf, provenance = workdir_lib.load_trained(config, workdir)
  shape, _ = data.info(config.data.name)
  structure = models.lipschitz_structure(config.model, clf.variables,
                                         shape[0])
  per_method = {method: spectral.network_bounds(structure, method=method)
                for method in ('circular', 'exact', 'upper')}
  names = [name for name, _, _ in per_method['upper']['layers']]
  layers = []
  for i, name in enumerate(names):
    kind = per_method['upper']['layers'][i][1]
    row = {'name': name, 'kind': kind}
    for method, result in per_method.items():
      row[method] = result['layers'][i][2]
    layers.append(row)
  lipschitz = per_method['upper']['structured']

  dataset_name, x, labels = data.load_test(config.data,
                                           config.eval.num_examples)
  radii = np.concatenate([
      np.asarray(spectral.certified_radius(
          clf.outputs(x[i:i + 500]), clf.targets, labels[i:i + 500],
          lipschitz)) for i in range(0, len(x), 500)])
  pixels = int(np.prod(shape))
  summary = {
      'dataset': dataset_name, 'preset': workdir_lib.run_label(config),
      'model': models.label(config.model), **provenance,
      'layers': layers,
      'network': {method: {'product': r['product'],
                           'structured': r['structured']}
                  for method, r in per_method.items()},
      'certificate': {
          'lipschitz_bound': lipschitz,
          'note': 'guarantee from the structured upper bound (input to '
                  'pre-activations; the head activation adds at most 1)',
          'num_examples': int(len(x)),
          'clean_accuracy': float(np.mean(radii > 0)),
          'median_radius_l2': float(np.median(radii)),
          'certified_accuracy_l2': {str(r): float(np.mean(radii > r))
                                    for r in L2_RADII},
          'certified_accuracy_linf': {
              str(e): float(np.mean(radii > e * np.sqrt(pixels)))
              for e in LINF_EPS},
      },
  }
  path = os.path.join(workdir, 'lipschitz.json')
  workdir_lib.write_json(path, summary, sort_keys=False)
  summary['path'] = path
  return summary


def plot_figure4(workdirs, out_path: str) -> None:
  """Figure 4: circular conv bounds per layer for each model, per dataset."""
  plt = plots.pyplot()
  runs = []
  for w in workdirs:
    path = os.path.join(w, 'lipschitz.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} is missing; run --mode=lipschitz '
                              f'--workdir={w} first')
    runs.append(workdir_lib.read_json(path))
  datasets = sorted({r['dataset'] for r in runs})
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4),
                           squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    group = [r for r in runs if r['dataset'] == ds]
    width = 0.8 / len(group)
    for j, r in enumerate(group):
      convs = [l for l in r['layers'] if l['kind'] == 'conv']
      pos = np.arange(len(convs)) + j * width
      ax.bar(pos, [l['circular'] for l in convs], width,
             label=f"{r['preset']} ({r['model']})")
    ax.set_yscale('log')
    ax.set_xlabel('conv layer (input to output)')
    ax.set_ylabel('largest singular value (circular FFT)')
    ax.set_title(ds)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)


def _load(workdir):
  return workdir_lib.read_json(os.path.join(workdir, 'lipschitz.json'))


def markdown_tables(workdirs) -> str:
  """Per-layer tables, one per dataset: each model's three conv measures."""
  runs = [_load(w) for w in workdirs]
  lines = []
  for ds in sorted({r['dataset'] for r in runs}):
    group = [r for r in runs if r['dataset'] == ds]
    lines += [f'### {ds}', '',
              '| layer | ' + ' | '.join(
                  f"{m} {r['preset']}" for r in group
                  for m in ('circular', 'exact', 'upper')) + ' |',
              '|---|' + '---|' * (3 * len(group))]
    names = [l['name'] for l in group[0]['layers'] if l['kind'] == 'conv']
    for i, name in enumerate(names):
      cells = []
      for r in group:
        convs = [l for l in r['layers'] if l['kind'] == 'conv']
        cells += [f"{convs[i][m]:.3g}" if i < len(convs) else '–'
                  for m in ('circular', 'exact', 'upper')]
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    for r in group:
      product = r['network']['circular']['product']
      bound = r['certificate']['lipschitz_bound']
      lines.append(f"- {r['preset']} ({r['model']}): the paper's product of "
                   f'circular norms {product:.3g}; guaranteed structured '
                   f'bound {bound:.3g}')
    lines.append('')
  return '\n'.join(lines)


def describe(result: dict) -> str:
  """Two lines for the command line."""
  c = result['certificate']
  return (f'{result["dataset"]} {result["preset"]} {result["model"]}: '
          f'network Lipschitz bound {c["lipschitz_bound"]:.4g} (paper\'s '
          f'product of circular norms '
          f'{result["network"]["circular"]["product"]:.4g}); certified '
          f'accuracy at L2 radius {c["certified_accuracy_l2"]} on '
          f'{c["num_examples"]} test images\n{result["path"]}')


def figure4(workdirs, out: str, *, recompute: bool = False) -> list[str]:
  """Figure 4 and its per-layer tables (out, out with .md) for `workdirs`.

  Computes lipschitz.json, with the config the run was trained with, for each
  workdir that lacks it (or for all, with `recompute`). Returns the files
  written.
  """
  if not workdirs:
    raise ValueError('figure4 needs at least one workdir')
  for w in workdirs:
    if recompute or not os.path.exists(os.path.join(w, 'lipschitz.json')):
      result = run_lipschitz(workdir_lib.saved_config(w), w)
      print(f"{result['path']}: structured bound "
            f"{result['certificate']['lipschitz_bound']:.4g}")
  plot_figure4(workdirs, out)
  table = os.path.splitext(out)[0] + '.md'
  workdir_lib.write_text(table, markdown_tables(workdirs) + '\n')
  return [out, table]
