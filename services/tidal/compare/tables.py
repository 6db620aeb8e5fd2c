"""The tables of a compare report and of its terminal summary: one row per mode, each cell one
run's number or, over several seeds, the mean and (min-max); the t-intervals of the means; the
throughput per worker; and the GitHub Markdown they are written in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tidal.compare.aggregate import METRICS, ModeSummary, Stat, cell, interval_cell
from tidal.compare.results import RunResult
from tidal.compare.spec import CompareSpec

# A cell with no number (a metric the run does not have).
MISSING = "–"


# Column titles for a terminal, in the order of `headers`.
COMPACT = ("mode", "state", "wall s", "samples", "p50 ms", "p99 ms", "samples/s", "to target s", "versions",
           "val loss", "val acc", "stale", "wire MiB", "killed")  # fmt: skip


def metric_name(runs: list[RunResult]) -> str:
    """What the runs' final metric is (the job's objective names it; every mode runs the same job)."""
    return runs[0].val_metric if runs else "accuracy"


def headers(spec: CompareSpec, compact: bool = False, metric: str = "accuracy") -> list[str]:
    if compact:
        short = "acc" if metric == "accuracy" else metric
        titles = [f"val {short}" if title == "val acc" else title for title in COMPACT]
        return titles[: 14 if spec.kill is not None else 13]
    columns = [
        "mode",
        "state",
        "wall (s)",
        "samples",
        "step p50 (ms)",
        "step p99 (ms)",
        "samples/s",
        f"time to val loss ≤ {spec.target_val_loss:g} (s)",
        "versions to target",
        "final val loss",
        f"final val {metric}",
        "staleness mean / max",
        "bytes on the wire (MiB)",
    ]
    if spec.kill is not None:
        columns.append(f"rank {spec.kill.rank} killed at step {spec.kill.at_step}")
    return columns


def stat_cell(stat: Stat | None, fmt: str, spread: bool = True) -> str:
    """The mean (min-max); `spread=False`: the mean alone (a terminal's narrow table)."""
    if not spread and stat is not None:
        return format(stat.mean, fmt)
    return cell(stat, fmt) or MISSING


def _state(summary: ModeSummary) -> str:
    if len(summary.runs) == 1:
        return summary.runs[0].state
    if summary.succeeded == len(summary.runs):
        return "succeeded"
    return f"{summary.succeeded} of {len(summary.runs)} succeeded"


def _to_target(summary: ModeSummary, key: str, fmt: str, never: str, spread: bool = True) -> str:
    if not summary.reached:
        return never
    text = stat_cell(summary.stats[key], fmt, spread)
    return text if summary.reached == len(summary.counted) else f"{text}, {summary.reached} of {len(summary.counted)}"


def _kill_cell(summary: ModeSummary, compact: bool) -> str:
    kills = [summary.kills[seed] for seed in summary.seeds if seed in summary.kills]
    if not kills:
        return MISSING
    if len(kills) == 1:
        kill = kills[0]
        return f"{kill.state} v{kill.version}" if compact else f"{kill.state} at version {kill.version}"
    ok = sum(k.succeeded for k in kills)
    return f"{ok}/{len(kills)} succeeded" if compact else f"{ok} of {len(kills)} seeds succeeded"


def _wire_cell(summary: ModeSummary, compact: bool, spread: bool) -> str:
    """The bytes on the wire; in a report, with the embedding rows' part when the job has tables."""
    wire = stat_cell(summary.stats["wire_mib"], ".1f", spread)
    rows_stat = summary.stats.get("row_mib")
    if compact or rows_stat is None:
        return wire
    return f"{wire}, rows {stat_cell(rows_stat, '.1f', spread)}"


def rows(spec: CompareSpec, summaries: Sequence[ModeSummary], compact: bool = False) -> list[list[str]]:
    """One row per mode, in the order of `headers`; `compact` shortens text cells for a terminal.

    One seed: each cell is that run's number. Several: the mean over the seeds (succeeded runs;
    all runs when none succeeded) and the min-max; time to target over the runs that reached it.
    """
    never = "never" if compact else "not reached"
    out = []
    for m in summaries:
        target_version = m.counted[0].target_version if m.counted else 0
        spread = not compact  # a terminal shows the means; the report their spread too

        def c(key: str, fmt: str, m: ModeSummary = m, spread: bool = spread) -> str:
            return stat_cell(m.stats[key], fmt, spread)

        versions = _to_target(m, "versions_to_target", ".0f", never, spread)
        row = [
            m.label,
            _state(m),
            c("wall_s", ".1f"),
            c("samples", ".0f"),
            c("step_p50_ms", ".0f"),
            c("step_p99_ms", ".0f"),
            c("samples_per_s", ".0f"),
            _to_target(m, "time_to_target_s", ".1f", never, spread),
            never if not m.reached else f"{versions} / {target_version}",
            c("final_val_loss", ".4f"),
            c("final_val_metric", ".3f"),
            f"{c('staleness_mean', '.2f')} / {c('staleness_max', '.0f')}",
            _wire_cell(m, compact, spread),
        ]
        if spec.kill is not None:
            row.append(_kill_cell(m, compact))
        out.append(row)
    return out


def interval_rows(summaries: Sequence[ModeSummary], metric: str) -> tuple[list[str], list[list[str]]]:
    """The 95% t-intervals of the means, for the metrics that have one in some mode."""
    shown = [m for m in METRICS if any(s.stats.get(m.key) and s.stats[m.key].ci95 for s in summaries)]  # type: ignore[union-attr]
    head = ["mode", *(f"final val {metric}" if m.key == "final_val_metric" else m.title for m in shown)]
    body = [[s.label, *(interval_cell(s.stats.get(m.key), m.fmt) or MISSING for m in shown)] for s in summaries]
    return head, body


def worker_rows(summaries: Sequence[ModeSummary]) -> tuple[list[str], list[list[str]]]:
    ranks = sorted({(w.rank, w.slowdown) for m in summaries for r in m.runs for w in r.workers})
    head = ["mode", *(f"rank {rank} ({slowdown:g}x)" for rank, slowdown in ranks)]
    body = [[m.label, *(stat_cell(m.worker_stat(rank), ".0f") for rank, _ in ranks)] for m in summaries]
    return head, body


NUMERIC = re.compile(r"^[-–+\d.,/ ()]+$|^not reached$")


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A GitHub Markdown table; columns of numbers are right-aligned."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["--:" if body and all(NUMERIC.match(row[i]) for row in body) else ":--" for i in range(len(head))]
    return "\n".join([line(head), "| " + " | ".join(align) + " |", *(line(r) for r in body)])
