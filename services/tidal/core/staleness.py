"""Staleness bookkeeping: how many versions old a gradient was when it was applied."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StalenessStats:
    count: int = 0
    total: int = 0
    maximum: int = 0
    # staleness value -> number of applied updates with it (values are small integers).
    histogram: dict[int, int] = field(default_factory=dict)

    def record(self, staleness: int) -> None:
        self.count += 1
        self.total += staleness
        self.maximum = max(self.maximum, staleness)
        self.histogram[staleness] = self.histogram.get(staleness, 0) + 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0
