"""Repeat runs summed up: per mode, each metric's mean over seeds, its spread and a t-interval.

The spread is min-max over the seeds. With 3 or more seeds there is also the 95% confidence
interval of the mean from Student's t with n - 1 degrees of freedom (mean ± t · s / √n); with 2
seeds such an interval is too wide to say anything (t = 12.7), so the report gives min-max only.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tidal.compare.results import RunResult

# The 0.975 quantile of Student's t by degrees of freedom (2..31: up to MAX_SEEDS seeds).
T975 = {
    2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912, 7: 2.364624, 8: 2.306004, 9: 2.262157,
    10: 2.228139, 11: 2.200985, 12: 2.178813, 13: 2.160369, 14: 2.144787, 15: 2.131450, 16: 2.119905,
    17: 2.109816, 18: 2.100922, 19: 2.093024, 20: 2.085963, 21: 2.079614, 22: 2.073873, 23: 2.068658,
    24: 2.063899, 25: 2.059539, 26: 2.055529, 27: 2.051831, 28: 2.048407, 29: 2.045230, 30: 2.042272,
    31: 2.039513,
}  # fmt: skip
# Fewest seeds for a confidence interval.
MIN_SEEDS_FOR_INTERVAL = 3


@dataclass(frozen=True)
class Stat:
    """One metric over the seeds that have it."""

    n: int
    mean: float
    low: float  # min over seeds
    high: float  # max over seeds
    ci95: tuple[float, float] | None = None  # 95% t-interval of the mean, n >= 3

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        mean = statistics.fmean(values)
        interval = None
        if len(values) >= MIN_SEEDS_FOR_INTERVAL:
            half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
            interval = (mean - half, mean + half)
        return cls(len(values), mean, min(values), max(values), interval)


def t975(df: int) -> float:
    if df not in T975:
        raise ValueError(f"no t quantile for {df} degrees of freedom (2..{max(T975)})")
    return T975[df]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


@dataclass(frozen=True)
class Metric:
    key: str  # in runs.csv and results.json
    title: str
    value: Callable[[RunResult], float | None]
    fmt: str  # how the report prints it


METRICS = (
    Metric("wall_s", "wall (s)", lambda r: r.wall_s, ".1f"),
    Metric("samples", "samples", lambda r: float(r.samples), ".0f"),
    Metric("step_p50_ms", "step p50 (ms)", lambda r: _ms(r.step_p50_s), ".0f"),
    Metric("step_p99_ms", "step p99 (ms)", lambda r: _ms(r.step_p99_s), ".0f"),
    Metric("samples_per_s", "samples/s", lambda r: r.samples_per_s, ".0f"),
    Metric("time_to_target_s", "time to target (s)", lambda r: r.target.elapsed_s if r.target else None, ".1f"),
    Metric("versions_to_target", "versions to target", lambda r: r.target.version if r.target else None, ".0f"),
    Metric("final_val_loss", "final val loss", lambda r: r.final_val_loss, ".4f"),
    Metric("final_val_metric", "final val metric", lambda r: r.final_val_accuracy, ".3f"),
    Metric("staleness_mean", "staleness mean", lambda r: r.staleness_mean, ".2f"),
    Metric("staleness_max", "staleness max", lambda r: float(r.staleness_max), ".0f"),
    Metric(
        "wire_mib", "bytes on the wire (MiB)", lambda r: None if r.wire_bytes is None else r.wire_bytes / 2**20, ".1f"
    ),
    Metric(
        "row_mib",
        "of which embedding rows (MiB)",
        lambda r: None if r.row_bytes is None else r.row_bytes / 2**20,
        ".1f",
    ),
)
BY_KEY = {m.key: m for m in METRICS}


@dataclass
class ModeSummary:
    """One mode over its seeds: the runs (seed order) and each metric's statistics."""

    label: str
    mode: str
    seeds: list[int]
    runs: list[RunResult]  # baselines, one per seed
    kills: dict[int, RunResult] = field(default_factory=dict)  # seed -> the run with a kill
    stats: dict[str, Stat | None] = field(default_factory=dict)
    # Runs the means are over: the succeeded ones (all runs when none succeeded).
    counted: list[RunResult] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(r.succeeded for r in self.runs)

    @property
    def reached(self) -> int:
        """Counted runs that reached the target."""
        return sum(r.target is not None for r in self.counted)

    def worker_stat(self, rank: int) -> Stat | None:
        return Stat.of(
            [w.samples_per_s for r in self.counted for w in r.workers if w.rank == rank and w.samples_per_s is not None]
        )

    def setting_stat(self, name: str) -> Stat | None:
        return Stat.of([r.settings[name] for r in self.counted if name in r.settings])


def summarize(label: str, seeds: list[int], runs: list[RunResult], kills: dict[int, RunResult]) -> ModeSummary:
    counted = [r for r in runs if r.succeeded] or list(runs)
    summary = ModeSummary(label, runs[0].mode if runs else "", seeds, runs, kills, counted=counted)
    for metric in METRICS:
        values = [v for v in (metric.value(r) for r in counted) if v is not None]
        summary.stats[metric.key] = Stat.of(values)
    return summary


def cell(stat: Stat | None, fmt: str, scale: float = 1.0) -> str | None:
    """ "9.7" for one seed, "9.7 (9.1-10.2)" (mean, min-max) for several; None when no seed has it."""
    if stat is None:
        return None
    mean = format(stat.mean * scale, fmt)
    if stat.n == 1:
        return mean
    return f"{mean} ({format(stat.low * scale, fmt)}–{format(stat.high * scale, fmt)})"


def interval_cell(stat: Stat | None, fmt: str) -> str | None:
    if stat is None or stat.ci95 is None:
        return None
    return f"{format(stat.ci95[0], fmt)} – {format(stat.ci95[1], fmt)}"


@dataclass(frozen=True)
class Band:
    """A mode's validation loss over time across seeds: mean and min-max at each time."""

    time_s: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    seeds: int


def loss_at(curve: Sequence[tuple[float, float]], t: float) -> float:
    """A run's validation loss at time t: linear between its evaluations; after its last one the
    final loss (the run has ended; its model stays as it was)."""
    if t >= curve[-1][0]:
        return curve[-1][1]
    i = bisect.bisect_right([x for x, _ in curve], t) - 1
    (t0, v0), (t1, v1) = curve[max(i, 0)], curve[max(i, 0) + 1]
    return v0 if t1 <= t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def loss_band(runs: Sequence[RunResult]) -> Band | None:
    """The band over the seeds, at every evaluation time of any seed from the time every seed has
    its first evaluation on (before that some seeds have no value yet)."""
    curves = [sorted((e.elapsed_s, e.val_loss) for e in r.evals) for r in runs if r.evals]
    if not curves:
        return None
    start = max(c[0][0] for c in curves)
    times = sorted({t for c in curves for t, _ in c if t >= start})
    values = [[loss_at(c, t) for c in curves] for t in times]
    return Band(times, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values],
                len(curves))  # fmt: skip
