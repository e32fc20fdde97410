"""Interval estimates shared by evaluation, judge agreement and benchmarks (pure Python, no torch).

- `wilson_interval(hits, n)`: the Wilson score interval of a proportion (Wilson 1927; the form in
  Agresti & Coull 1998, eq. 2), for counts of independent successes such as a judge's agreement with gold.
- `win_rate(preferences)`: the mean of per-prompt preferences in [0, 1] (1 = win, 0 = loss, 1/2 = tie) with
  the normal 95% interval mean +- z * sd(ddof=1) / sqrt(n), clipped to [0, 1]; with one prompt it is [0, 1].
  Ties and fractional preferences (a judge's P(a beats b)) make the outcome non-binary, hence not Wilson.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.96  # the standard normal's 97.5% quantile, as customarily rounded


def wilson_interval(hits: float, n: int, z: float = Z95) -> tuple[float, float, float]:
    """(rate, low, high) of `hits` successes in `n` trials; (nan, 0, 1) when n == 0."""
    if n == 0:
        return math.nan, 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class WinRate:
    """A win rate over prompts with its 95% interval (`win_rate`)."""

    win_rate: float
    ci_low: float
    ci_high: float
    num_prompts: int


def win_rate(preferences: Sequence[float], z: float = Z95) -> WinRate:
    """Mean preference of policy B over policy A, one preference in [0, 1] per prompt.

    Raises ValueError on an empty sequence or a preference outside [0, 1].
    """
    n = len(preferences)
    if n == 0:
        raise ValueError("a win rate needs at least one prompt")
    if any(not 0.0 <= p <= 1.0 for p in preferences):
        raise ValueError(f"preferences must lie in [0, 1], got {[p for p in preferences if not 0.0 <= p <= 1.0][:3]}")
    mean = sum(preferences) / n
    half = z * math.sqrt(sum((p - mean) ** 2 for p in preferences) / (n - 1)) / math.sqrt(n) if n > 1 else math.inf
    return WinRate(win_rate=mean, ci_low=max(0.0, mean - half), ci_high=min(1.0, mean + half), num_prompts=n)
