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
