"""Confidence intervals for the rates results report.

`wilson_interval(k, n)`: the Wilson score interval (Wilson, 1927) of a binomial
proportion k / n, which, unlike the normal approximation, stays inside [0, 1]
and keeps its coverage for small n and rates near 0 or 1: the usual case for
robust accuracy and attack success rates.
"""

import math


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """(low, high) of the Wilson interval of k successes in n trials.

  z = 1.96 gives 95%. Raises ValueError unless 0 <= k <= n and n >= 1.
  """
  if n < 1 or not 0 <= k <= n:
    raise ValueError(f'need 0 <= k <= n and n >= 1, got k={k}, n={n}')
  p = k / n
  denominator = 1.0 + z * z / n
  center = (p + z * z / (2 * n)) / denominator
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
  return max(0.0, center - half), min(1.0, center + half)


def rate_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson interval of a rate measured on n examples."""
  return wilson_interval(int(round(rate * n)), n, z)
