"""The report's PNG charts, drawn with matplotlib's Agg backend (no display needed).

One seed: each mode's run as it was. Several: the mean over the seeds, with a min-max band
(loss curves) or error bars (throughput); the curves' numbers go to val_loss_vs_time.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from tidal.compare.aggregate import ModeSummary, loss_band

FILES = ("val_loss_vs_time.png", "staleness.png", "worker_throughput.png")
# The loss chart's lines and bands as numbers, per mode.
DATA_FILE = "val_loss_vs_time.json"
DPI = 110


def write_charts(modes: Sequence[ModeSummary], target_val_loss: float, subtitle: str, out: Path) -> list[Path]:
    """Draws the three charts of the baseline runs into `out`, and the loss curves' data; returns the paths."""
    matplotlib.use("Agg")  # files only: never open a window, also where a display exists
    paths = [out / name for name in FILES]
    val_loss_vs_time(modes, target_val_loss, subtitle).savefig(paths[0], dpi=DPI)
    staleness(modes, subtitle).savefig(paths[1], dpi=DPI)
    worker_throughput(modes, subtitle).savefig(paths[2], dpi=DPI)
    (out / DATA_FILE).write_text(json.dumps(curve_data(modes), indent=1, allow_nan=False) + "\n")
    return [*paths, out / DATA_FILE]


def curve_data(modes: Sequence[ModeSummary]) -> list[dict[str, object]]:
    """Per mode: its seeds, each seed's evaluations, and the band over them (time, mean, low, high)."""
    out = []
    for m in modes:
        band = loss_band(m.runs)
        out.append(
            {
                "label": m.label,
                "seeds": m.seeds,
                "per_seed": [
                    {
                        "seed": seed,
                        "time_s": [e.elapsed_s for e in run.evals],
                        "val_loss": [e.val_loss for e in run.evals],
                    }
                    for seed, run in zip(m.seeds, m.runs, strict=True)
                ],
                "band": None if band is None else asdict(band),
            }
        )
    return out


def _figure(width: float, height: float) -> Figure:
    # Figures made without pyplot: nothing global, nothing to close, no GUI backend involved.
    return Figure(figsize=(width, height), layout="constrained")


def val_loss_vs_time(modes: Sequence[ModeSummary], target_val_loss: float, subtitle: str) -> Figure:
    fig = _figure(9, 5.5)
    ax = fig.add_subplot()
    several = any(len(m.runs) > 1 for m in modes)
    for m in modes:
        if len(m.runs) == 1:
            _single_curve(ax, m)
        else:
            _band_curve(ax, m, target_val_loss)
    ax.axhline(target_val_loss, color="black", linestyle="--", linewidth=1, label=f"target {target_val_loss:g}")
    # Log time: the fast modes finish in a fraction of the slow ones' time and evaluate as often per version.
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(
        [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= _max_time(modes) * 1.5]
    )
    ax.set_xlabel("wall-clock time since the job started (s, log scale)")
    # A run that diverged reaches losses orders of magnitude above the rest: on a linear axis
    # every other curve would lie flat on the floor.
    log_loss = _loss_span(modes, target_val_loss) > LOG_LOSS_SPAN
    if log_loss:
        ax.set_yscale("log")
    ax.set_ylabel("validation loss (the job's objective" + (", log scale)" if log_loss else ")"))
    ax.grid(alpha=0.3)
    legend = (
        "mode (★ on the target line: mean time to target, bar: min–max; band: min–max over seeds)"
        if several
        else "mode (★ = reached target)"
    )
    ax.legend(title=legend, fontsize="small", title_fontsize="small")
    title = "Validation loss over time" + (", mean over seeds" if several else "")
    fig.suptitle(f"{title}\n{subtitle}", fontsize="medium")
    return fig


def _single_curve(ax: object, m: ModeSummary) -> None:
    run = m.runs[0]
    points = sorted(run.evals, key=lambda e: e.elapsed_s)
    if not points:
        return
    (line,) = ax.plot(  # type: ignore[attr-defined]
        [e.elapsed_s for e in points],
        [e.val_loss for e in points],
        marker="o",
        markersize=2.5,
        linewidth=1.2,
        label=m.label,
    )
    if run.target is not None:
        ax.plot(  # type: ignore[attr-defined]
            [run.target.elapsed_s],
            [run.target.val_loss],
            marker="*",
            markersize=15,
            markeredgecolor="black",
            markeredgewidth=0.6,
            color=line.get_color(),
            zorder=5,
        )


def _band_curve(ax: object, m: ModeSummary, target_val_loss: float) -> None:
    band = loss_band(m.runs)
    if band is None:
        return
    (line,) = ax.plot(band.time_s, band.mean, linewidth=1.4, label=f"{m.label} ({band.seeds} seeds)")  # type: ignore[attr-defined]
    ax.fill_between(band.time_s, band.low, band.high, color=line.get_color(), alpha=0.2, linewidth=0)  # type: ignore[attr-defined]
    stat = m.stats.get("time_to_target_s")
    if stat is not None:  # on the target line: when the seeds reached it, on average and min-max
        ax.errorbar(  # type: ignore[attr-defined]
            [stat.mean],
            [target_val_loss],
            xerr=[[stat.mean - stat.low], [stat.high - stat.mean]],
            marker="*",
            markersize=15,
            markeredgecolor="black",
            markeredgewidth=0.6,
            color=line.get_color(),
            capsize=3,
            zorder=5,
        )


# Highest over lowest validation loss on the chart from which its axis is logarithmic.
LOG_LOSS_SPAN = 20.0


def _loss_span(modes: Sequence[ModeSummary], target_val_loss: float) -> float:
    losses = [e.val_loss for m in modes for r in m.runs for e in r.evals if e.val_loss > 0]
    losses.append(target_val_loss)
    return max(losses) / min(losses)


def _max_time(modes: Sequence[ModeSummary]) -> float:
    return max((e.elapsed_s for m in modes for r in m.runs for e in r.evals), default=1.0)


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


def _summed_buckets(m: ModeSummary) -> list[tuple[float, float]]:
    """Observations per staleness bucket, summed over the mode's counted runs (seeds)."""
    with_data = [r.staleness_buckets for r in m.counted if r.staleness_buckets]
    if not with_data:
        return []
    return [(le, sum(b[i][1] for b in with_data if i < len(b))) for i, (le, _) in enumerate(with_data[0])]


def staleness(modes: Sequence[ModeSummary], subtitle: str) -> Figure:
    buckets = [_summed_buckets(m) for m in modes]
    with_data = [b for b in buckets if b]
    bounds = [le for le, _ in with_data[0]] if with_data else [0.0]
    # Show buckets up to the highest one any mode used, at least 0..4.
    used = [i for b in with_data for i, (_, count) in enumerate(b) if count > 0]
    shown = max([*used, min(4, len(bounds) - 1)]) + 1
    labels = bucket_labels(bounds)[:shown]
    cols = min(3, max(1, len(modes)))
    rows = math.ceil(len(modes) / cols) if modes else 1
    fig = _figure(4.2 * cols, 3.0 * rows + 0.8)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    several = any(len(m.runs) > 1 for m in modes)
    for i, ax in enumerate(axes.flat):
        if i >= len(modes):
            ax.set_visible(False)
            continue
        m = modes[i]
        counts = [c for _, c in buckets[i]][:shown]
        observed = sum(c for _, c in buckets[i])
        shares = [100 * c / observed for c in counts] if observed else [0.0] * len(labels)
        shares += [0.0] * (len(labels) - len(shares))
        ax.bar(range(len(labels)), shares, color=f"C{i}")
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, fontsize="small")
        mean, top = m.stats.get("staleness_mean"), m.stats.get("staleness_max")
        ax.set_title(
            f"{m.label}\nmean {mean.mean if mean else 0:.2f}, max {top.high if top else 0:.0f}", fontsize="medium"
        )
        ax.set_xlabel("staleness (versions)")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("applied updates (%)")
    over = ", all seeds together" if several else ""
    fig.suptitle(f"Staleness of applied updates (all shards{over})\n{subtitle}", fontsize="medium")
    return fig


def worker_throughput(modes: Sequence[ModeSummary], subtitle: str) -> Figure:
    fig = _figure(max(7.0, 1.5 * len(modes) + 2), 5)
    ax = fig.add_subplot()
    ranks = sorted({w.rank for m in modes for r in m.runs for w in r.workers})
    width = 0.8 / max(1, len(ranks))
    slowdown = {w.rank: w.slowdown for m in modes for r in m.runs for w in r.workers}
    several = any(len(m.runs) > 1 for m in modes)
    for j, rank in enumerate(ranks):
        stats = [m.worker_stat(rank) for m in modes]
        values = [s.mean if s else 0.0 for s in stats]
        xs = [i + (j - (len(ranks) - 1) / 2) * width for i in range(len(modes))]
        label = f"rank {rank}" + (f" ({slowdown[rank]:g}x slower machine)" if slowdown[rank] != 1 else "")
        errors = None
        if several:  # min-max over the seeds
            errors = [[s.mean - s.low if s else 0.0 for s in stats], [s.high - s.mean if s else 0.0 for s in stats]]
        bars = ax.bar(xs, values, width, label=label, color=f"C{j}", yerr=errors, capsize=3 if several else 0)
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=2)
    ax.set_xticks(range(len(modes)), [m.label for m in modes])
    ax.set_ylabel("training samples per second" + (" (mean; bar: min–max over seeds)" if several else ""))
    ax.set_xlabel("mode")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="worker", fontsize="small")
    fig.suptitle(f"Throughput per worker (samples / job wall time)\n{subtitle}", fontsize="medium")
    return fig
