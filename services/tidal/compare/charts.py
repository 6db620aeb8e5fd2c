"""The report's PNG charts, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from tidal.compare.results import RunResult

FILES = ("val_loss_vs_time.png", "staleness.png", "worker_throughput.png")
DPI = 110


def write_charts(runs: Sequence[RunResult], target_val_loss: float, subtitle: str, out: Path) -> list[Path]:
    """Draws the three charts of the baseline runs into `out`; returns their paths."""
    matplotlib.use("Agg")  # files only: never open a window, also where a display exists
    paths = [out / name for name in FILES]
    val_loss_vs_time(runs, target_val_loss, subtitle).savefig(paths[0], dpi=DPI)
    staleness(runs, subtitle).savefig(paths[1], dpi=DPI)
    worker_throughput(runs, subtitle).savefig(paths[2], dpi=DPI)
    return paths


def _figure(width: float, height: float) -> Figure:
    # Figures made without pyplot: nothing global, nothing to close, no GUI backend involved.
    return Figure(figsize=(width, height), layout="constrained")


def val_loss_vs_time(runs: Sequence[RunResult], target_val_loss: float, subtitle: str) -> Figure:
    fig = _figure(9, 5.5)
    ax = fig.add_subplot()
    for run in runs:
        points = sorted(run.evals, key=lambda e: e.elapsed_s)
        if not points:
            continue
        (line,) = ax.plot(
            [e.elapsed_s for e in points],
            [e.val_loss for e in points],
            marker="o",
            markersize=2.5,
            linewidth=1.2,
            label=run.label,
        )
        if run.target is not None:
            ax.plot(
                [run.target.elapsed_s],
                [run.target.val_loss],
                marker="*",
                markersize=15,
                markeredgecolor="black",
                markeredgewidth=0.6,
                color=line.get_color(),
                zorder=5,
            )
    ax.axhline(target_val_loss, color="black", linestyle="--", linewidth=1, label=f"target {target_val_loss:g}")
    # Log time: the fast modes finish in a fraction of the slow ones' time and evaluate as often per version.
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(
        [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= _max_time(runs) * 1.5]
    )
    ax.set_xlabel("wall-clock time since the job started (s, log scale)")
    ax.set_ylabel("validation loss (cross-entropy, nats)")
    ax.grid(alpha=0.3)
    ax.legend(title="mode (★ = reached target)", fontsize="small")
    fig.suptitle(f"Validation loss over time\n{subtitle}", fontsize="medium")
    return fig


def _max_time(runs: Sequence[RunResult]) -> float:
    return max((e.elapsed_s for r in runs for e in r.evals), default=1.0)


def bucket_labels(bounds: Sequence[float]) -> list[str]:
    """Staleness bucket bounds (versions, cumulative 'le') -> readable ranges: 0, 1, 5-6, >128."""
    labels = []
    previous: float | None = None
    for le in bounds:
        if math.isinf(le):
            labels.append(f">{previous:g}" if previous is not None else "all")
        elif previous is None or le - previous <= 1:
            labels.append(f"{le:g}")
        else:
            labels.append(f"{previous + 1:g}-{le:g}")
        previous = le
    return labels


def staleness(runs: Sequence[RunResult], subtitle: str) -> Figure:
    with_data = [r for r in runs if r.staleness_buckets]
    bounds = [le for le, _ in with_data[0].staleness_buckets] if with_data else [0.0]
    # Show buckets up to the highest one any mode used, at least 0..4.
    used = [i for r in with_data for i, (_, count) in enumerate(r.staleness_buckets) if count > 0]
    shown = max([*used, min(4, len(bounds) - 1)]) + 1
    labels = bucket_labels(bounds)[:shown]
    cols = min(3, max(1, len(runs)))
    rows = math.ceil(len(runs) / cols) if runs else 1
    fig = _figure(4.2 * cols, 3.0 * rows + 0.8)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(runs):
            ax.set_visible(False)
            continue
        run = runs[i]
        counts = [c for _, c in run.staleness_buckets][:shown]
        observed = sum(c for _, c in run.staleness_buckets)
        shares = [100 * c / observed for c in counts] if observed else [0.0] * len(labels)
        shares += [0.0] * (len(labels) - len(shares))
        ax.bar(range(len(labels)), shares, color=f"C{i}")
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, fontsize="small")
        ax.set_title(f"{run.label}\nmean {run.staleness_mean:.2f}, max {run.staleness_max}", fontsize="medium")
        ax.set_xlabel("staleness (versions)")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("applied updates (%)")
    fig.suptitle(f"Staleness of applied updates (all shards)\n{subtitle}", fontsize="medium")
    return fig


def worker_throughput(runs: Sequence[RunResult], subtitle: str) -> Figure:
    fig = _figure(max(7.0, 1.5 * len(runs) + 2), 5)
    ax = fig.add_subplot()
    ranks = sorted({w.rank for r in runs for w in r.workers})
    width = 0.8 / max(1, len(ranks))
    slowdown = {w.rank: w.slowdown for r in runs for w in r.workers}
    for j, rank in enumerate(ranks):
        values = []
        for run in runs:
            worker = next((w for w in run.workers if w.rank == rank), None)
            values.append((worker.samples_per_s or 0.0) if worker else 0.0)
        xs = [i + (j - (len(ranks) - 1) / 2) * width for i in range(len(runs))]
        label = f"rank {rank}" + (f" ({slowdown[rank]:g}x slower machine)" if slowdown[rank] != 1 else "")
        bars = ax.bar(xs, values, width, label=label, color=f"C{j}")
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=2)
    ax.set_xticks(range(len(runs)), [r.label for r in runs])
    ax.set_ylabel("training samples per second")
    ax.set_xlabel("mode")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="worker", fontsize="small")
    fig.suptitle(f"Throughput per worker (samples / job wall time)\n{subtitle}", fontsize="medium")
    return fig
