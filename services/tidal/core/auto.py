"""`mode: auto`: a tuner that picks the backup count and the staleness bound from timings.

The shard tells it when it served parameters to a worker and when that worker's next
gradient arrived: the difference is the worker's *busy time* for one step (computation and
transfer, without any waiting), which does not depend on the current settings. Every
`window` applied clocks the tuner compares the workers:

- a worker whose median busy time is at least `STRAGGLER_RATIO` times the median worker's
  is a *persistent* straggler: waiting for it would slow every step to its pace, so the
  tuner makes it a backup (its late gradients are dropped, as in sync with backup workers,
  Chen et al. 2016). It stops being one when its ratio falls below `RELEASE_RATIO`.
- for the other workers, the busy time above the median step is transient jitter: the
  staleness bound is its 90th percentile in steps, rounded up past a dead band of a quarter
  step, so fast workers run ahead of
  a worker that is briefly slow instead of waiting (SSP, Ho et al. 2013). No jitter: bound 0,
  which is BSP.

Pure: no clock of its own and no tensors; the caller passes the times. Shards decide
independently from what they see; workers talk to all shards at once, so the decisions
agree in practice, and where they do not a step may use different gradients on different
shards, as sync with backup workers already does.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

# A worker this many times slower than the median worker is a persistent straggler...
STRAGGLER_RATIO = 2.0
# ...until it is back under this ratio (hysteresis: no flapping at the threshold).
RELEASE_RATIO = 1.5
# Extra time under this fraction of a step is not worth running ahead for (and keeps timer
# noise from lifting the bound of uniform workers off 0).
JITTER_DEAD_BAND = 0.25
# Busy-time samples kept per worker.
HISTORY = 32


@dataclass(frozen=True)
class AutoSettings:
    backup_workers: int = 0
    staleness_bound: int = 0


@dataclass(frozen=True)
class AutoDecision:
    settings: AutoSettings
    reason: str
    # Median busy time of each worker over the median worker's.
    slowness: dict[str, float]
    step_s: float


class AutoTuner:
    def __init__(self, num_workers: int, max_backup_workers: int, max_staleness_bound: int, window: int) -> None:
        self.max_backup_workers = min(max_backup_workers, max(0, num_workers - 1))
        self.max_staleness_bound = max_staleness_bound
        self.window = window
        self.settings = AutoSettings()
        self._served_at: dict[str, float] = {}
        self._busy: dict[str, deque[float]] = {}
        self._clocks_since_decision = 0
        self._backups: frozenset[str] = frozenset()

    def served(self, worker_id: str, now: float) -> None:
        """The worker was sent parameters at `now` (seconds, any monotonic origin)."""
        self._served_at[worker_id] = now

    def arrived(self, worker_id: str, now: float) -> None:
        """A gradient of the worker arrived at `now`."""
        served = self._served_at.pop(worker_id, None)
        if served is not None and now >= served:
            self._busy.setdefault(worker_id, deque(maxlen=HISTORY)).append(now - served)

    def clock_applied(self, members: frozenset[str]) -> AutoDecision | None:
        """Call once per applied clock; every `window` clocks returns a decision if the
        settings change."""
        self._clocks_since_decision += 1
        if self._clocks_since_decision < self.window:
            return None
        medians = {w: statistics.median(self._busy[w]) for w in sorted(members) if self._busy.get(w)}
        if len(medians) < len(members) or not medians:
            return None  # not every worker measured yet
        self._clocks_since_decision = 0
        step_s = statistics.median_low(medians.values())  # a real worker's pace, not an average of two
        if step_s <= 0:
            return None
        slowness = {w: m / step_s for w, m in medians.items()}
        backups = self._pick_backups(slowness)
        excess = [max(0.0, b / step_s - 1.0) for w in medians if w not in backups for b in self._busy[w]]
        jitter = _quantile(excess, 0.9) if excess else 0.0
        bound = min(self.max_staleness_bound, max(0, math.ceil(jitter - JITTER_DEAD_BAND)))
        self._backups = backups
        settings = AutoSettings(len(backups), bound)
        if settings == self.settings:
            return None
        self.settings = settings
        return AutoDecision(settings, _reason(settings, backups, slowness, step_s), slowness, step_s)

    def known_workers(self) -> set[str]:
        return set(self._served_at) | set(self._busy)

    def forget(self, worker_id: str) -> None:
        """The worker left the job."""
        self._served_at.pop(worker_id, None)
        self._busy.pop(worker_id, None)

    def _pick_backups(self, slowness: dict[str, float]) -> frozenset[str]:
        stragglers = [
            w
            for w, ratio in slowness.items()
            if ratio >= STRAGGLER_RATIO or (w in self._backups and ratio >= RELEASE_RATIO)
        ]
        stragglers.sort(key=lambda w: -slowness[w])
        return frozenset(stragglers[: self.max_backup_workers])


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _reason(settings: AutoSettings, backups: frozenset[str], slowness: dict[str, float], step_s: float) -> str:
    parts = [f"median step {step_s * 1000:.0f} ms"]
    if backups:
        slow = ", ".join(f"{w} {slowness[w]:.1f}x" for w in sorted(backups))
        parts.append(f"backup_workers {settings.backup_workers}: {slow} slower than the median worker")
    else:
        parts.append("backup_workers 0: no persistent straggler")
    parts.append(f"staleness_bound {settings.staleness_bound}: p90 of the others' extra time, in steps")
    return "; ".join(parts)
