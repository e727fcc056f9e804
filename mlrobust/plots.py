"""Plotting helpers shared by the modes that draw figures."""

import io


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (imported on first use)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def png_bytes(fig, dpi: int = 110) -> bytes:
  """The figure as PNG bytes (for an atomic write), then closed."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=dpi)
  pyplot().close(fig)
  return buf.getvalue()


def examples_figure(rows, title: str, k: int = 8):
  """Clean images above their adversarial versions, one pair of rows each.

  Args:
    rows: [(label, examples, caption)], examples a dict of arrays 'clean',
      'adv' ([n, H, W, C] in [0, 1]), 'label' and 'prediction' ([n]); rows
      whose examples are None are left out.
    title: the figure's title.
    k: images per row.
  Returns:
    The matplotlib figure, or None if no row has examples.
  """
  rows = [r for r in rows if r[1] is not None]
  if not rows:
    return None
  plt = pyplot()
  n_rows = 2 * len(rows)
  fig, axes = plt.subplots(n_rows, k, figsize=(1.2 * k, 1.45 * n_rows + 0.6),
                           squeeze=False)
  for i, (label, ex, caption) in enumerate(rows):
    for j in range(k):
      for r, key in ((2 * i, 'clean'), (2 * i + 1, 'adv')):
        ax = axes[r, j]
        ax.set_xticks([])
        ax.set_yticks([])
        if j >= len(ex[key]):
          ax.axis('off')
          continue
        img = ex[key][j]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                  cmap='gray' if img.shape[-1] == 1 else None, vmin=0, vmax=1)
        if key == 'adv':
          ax.set_xlabel(f"{ex['label'][j]}->{ex['prediction'][j]}",
                        fontsize=7, labelpad=1)
    axes[2 * i, 0].set_ylabel('clean', fontsize=7)
    axes[2 * i + 1, 0].set_ylabel('adversarial', fontsize=7)
    axes[2 * i, 0].set_title(f'{label}: {caption}', fontsize=8, loc='left')
  fig.suptitle(title + '\n(under each adversarial image: label->prediction)',
               fontsize=9)
  fig.subplots_adjust(left=0.05, right=0.99, bottom=0.04, top=1 - 0.9 / (
      1.45 * n_rows + 0.6), hspace=0.45, wspace=0.08)
  return fig
