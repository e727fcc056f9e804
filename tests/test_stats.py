"""Wilson intervals against hand computations and their defining property."""

import math

import pytest

from mlrobust import stats


def test_wilson_interval_by_hand():
  low, high = stats.wilson_interval(8, 10)
  # p = 0.8, n = 10, z = 1.96: centre 0.71675, half-width 0.22658.
  assert low == pytest.approx(0.4902, abs=1e-4)
  assert high == pytest.approx(0.9433, abs=1e-4)
  assert stats.wilson_interval(0, 8)[0] == 0.0
  assert stats.wilson_interval(0, 8)[1] == pytest.approx(0.3244, abs=1e-4)
  assert stats.wilson_interval(8, 8)[1] == 1.0


@pytest.mark.parametrize('k, n', [(0, 5), (3, 7), (50, 100), (499, 500)])
def test_wilson_bounds_are_where_the_score_test_is_on_its_edge(k, n):
  # Each bound p solves |k/n - p| = z sqrt(p (1 - p) / n).
  z = 1.96
  for p in stats.wilson_interval(k, n, z):
    if 0 < p < 1:
      assert abs(k / n - p) == pytest.approx(z * math.sqrt(p * (1 - p) / n),
                                             rel=1e-9)


def test_bad_counts_raise():
  with pytest.raises(ValueError, match='0 <= k <= n'):
    stats.wilson_interval(5, 4)
