"""What report.md says about the seeds: how a cell sums up the repeat runs, the table of the
means' 95% t-intervals (3 or more seeds), and a note for each run whose metrics are missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidal.compare.aggregate import MIN_SEEDS_FOR_INTERVAL, ModeSummary
from tidal.compare.spec import CompareSpec
from tidal.compare.tables import interval_rows, markdown_table


def seeds_paragraph(spec: CompareSpec) -> str:
    """How the cells sum up the seeds: one run's number, or mean (min-max) and maybe an interval."""
    seeds = spec.seed_list()
    if len(seeds) == 1:
        return (
            f"One seed ({seeds[0]}): every number is one run's, so there is no spread and no interval "
            "(list several in the spec's `seeds` for repeat runs)."
        )
    listed = ", ".join(str(s) for s in seeds)
    text = (
        f"Every run is repeated with {len(seeds)} seeds ({listed}; the job's `seed`: data order, initial "
        "weights, injected delays). Each cell is the mean over the seeds and, in brackets, the min–max; "
        "means are over the runs that succeeded (all of them when none did), times and versions to target "
        'over the runs that reached it ("2 of 3" when not all did). '
    )
    if len(seeds) >= MIN_SEEDS_FOR_INTERVAL:
        return text + "95% confidence intervals of the means (Student's t, n − 1 degrees of freedom) follow the table."
    return text + (f"With fewer than {MIN_SEEDS_FOR_INTERVAL} seeds no confidence interval is given (min–max only).")


def interval_section(summaries: Sequence[ModeSummary], seeds: Sequence[int], metric: str) -> list[str]:
    """The table of the means' 95% t-intervals; none with fewer than MIN_SEEDS_FOR_INTERVAL seeds."""
    if len(seeds) < MIN_SEEDS_FOR_INTERVAL:
        return []
    head, body = interval_rows(summaries, metric)
    return [
        f"### 95% confidence intervals of the means ({len(seeds)} seeds, t with {len(seeds) - 1} degrees of freedom)",
        "",
        markdown_table(head, body),
        "",
    ]


def missing_metrics_notes(summaries: Sequence[ModeSummary], seeds: Sequence[int]) -> list[str]:
    """A bullet for each run (mode and seed) that has no /metrics page from some process."""
    lines = []
    for m in summaries:
        for seed, run in zip(m.seeds, m.runs, strict=True):
            if run.missing_metrics:
                lines.append(
                    f"- **{m.label}**{f' (seed {seed})' if len(seeds) > 1 else ''}: no /metrics page from "
                    f"{', '.join(run.missing_metrics)} after the run (the process had exited); its numbers are missing "
                    "above."
                )
    return lines
