"""Medians with their spread, and ratios of paired repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, digits: int = 1, scale: float = 1.0) -> str:
        if not self.n:
            return "n/a"
        m, lo, hi = self.median * scale, self.low * scale, self.high * scale
        if self.n == 1:
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratios(a: Sequence[float], b: Sequence[float]) -> Spread:
    """a[i] / b[i] for the repetitions measured back to back (the pairs of one interleaving)."""
    return Spread.of([x / y for x, y in zip(a, b, strict=False) if y])
