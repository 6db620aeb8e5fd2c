"""The report's section on `mode: auto` runs: the settings the tuner chose, and each auto run's
place among the fixed modes by (mean) time to the target and by (mean) throughput.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidal.compare.aggregate import ModeSummary, Stat, summarize
from tidal.compare.results import RunResult
from tidal.compare.tables import MISSING, markdown_table, stat_cell


def auto_section(modes: Sequence[ModeSummary] | Sequence[RunResult], target_val_loss: float) -> list[str]:
    """Where each `mode: auto` run landed: the settings its tuner chose, and its place among the
    fixed modes by (mean) time to the target and by (mean) throughput."""
    summaries = [m if isinstance(m, ModeSummary) else summarize(m.label, [0], [m], {}) for m in modes]
    autos = [m for m in summaries if m.mode == "auto"]
    if not autos:
        return []

    def mean(m: ModeSummary, key: str) -> float:
        stat = m.stats.get(key)
        return stat.mean if stat else 0.0

    reached = sorted((m for m in summaries if m.reached), key=lambda m: mean(m, "time_to_target_s"))
    by_rate = sorted((m for m in summaries if m.stats.get("samples_per_s")), key=lambda m: -mean(m, "samples_per_s"))
    body = []
    for m in autos:
        names = sorted({k for r in m.counted for k in r.settings})
        settings = ", ".join(f"{k} {stat_cell(m.setting_stat(k), 'g')}" for k in names) or MISSING
        decisions = Stat.of([r.auto_decisions for r in m.counted if r.auto_decisions is not None])
        to_target = (
            f"{reached.index(m) + 1} of {len(summaries)} (fastest: {reached[0].label})" if m in reached else
            f"not reached (fastest: {reached[0].label})" if reached else "not reached by any mode"
        )  # fmt: skip
        rate = f"{by_rate.index(m) + 1} of {len(summaries)}" if m in by_rate else MISSING
        body.append([m.label, settings, stat_cell(decisions, ".0f"), to_target, rate])
    several = any(len(m.runs) > 1 for m in summaries)
    return [
        "",
        "### Where mode auto landed",
        "",
        "Mode auto starts as BSP and, every `auto_window` applied versions, sets the backup workers and the "
        "staleness bound from the workers' measured step times (docs/modes.md). Settings: those in force at the "
        "end (the highest over shards); decisions: changes, summed over shards (each shard logs its reasons). "
        f"Places: among all {len(summaries)} modes of this report, by "
        + ("mean " if several else "")
        + f"time to val loss ≤ {target_val_loss:g} and by "
        + ("mean " if several else "")
        + "samples/s.",
        "",
        markdown_table(["mode", "settings at the end", "decisions", "place: time to target", "place: samples/s"], body),
    ]
