"""The report folder: report.md (tables, charts, spec, machine), results.json (every number,
per seed and summed up) and runs.csv (one row per run: the per-seed values).

With several seeds every cell is the mean over the seeds and, in brackets, the min-max; with
3 or more a second table gives the 95% t-interval of each mean (aggregate.py).
"""

from __future__ import annotations

import csv
import io
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tidal.compare.aggregate import METRICS, MIN_SEEDS_FOR_INTERVAL, ModeSummary, Stat, cell, interval_cell, summarize
from tidal.compare.charts import DATA_FILE, FILES
from tidal.compare.results import RunResult, dumps
from tidal.compare.spec import CompareSpec, warm_up_spec
from tidal.compare.store import StoredRun, write_atomic

MISSING = "–"


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "tidal": version("tidal"),
    }


def _num(value: float | None, fmt: str) -> str:
    return MISSING if value is None else format(value, fmt)


def _ms(seconds: float | None) -> str:
    return MISSING if seconds is None else f"{seconds * 1000:.0f}"


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


def summarize_modes(spec: CompareSpec, runs: Sequence[StoredRun]) -> list[ModeSummary]:
    """One summary per mode (in `modes` order) over the seeds (in `seeds` order)."""
    seeds = spec.seed_list()
    out = []
    for entry in spec.modes:
        base = {r.seed: r.result for r in runs if r.label == entry.label and not r.kill}
        kills = {r.seed: r.result for r in runs if r.label == entry.label and r.kill}
        have = [seed for seed in seeds if seed in base]
        out.append(summarize(entry.label, have, [base[seed] for seed in have], kills))
    return out


def _cell(stat: Stat | None, fmt: str, spread: bool = True) -> str:
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
    text = _cell(summary.stats[key], fmt, spread)
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
            return _cell(m.stats[key], fmt, spread)

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
            c("wire_mib", ".1f"),
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
    body = [[m.label, *(_cell(m.worker_stat(rank), ".0f") for rank, _ in ranks)] for m in summaries]
    return head, body


NUMERIC = re.compile(r"^[-–+\d.,/ ()]+$|^not reached$")


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A GitHub Markdown table; columns of numbers are right-aligned."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["--:" if body and all(NUMERIC.match(row[i]) for row in body) else ":--" for i in range(len(head))]
    return "\n".join([line(head), "| " + " | ".join(align) + " |", *(line(r) for r in body)])


@dataclass(frozen=True)
class Provenance:
    """Where the report comes from: the command, the code version, this invocation's time."""

    command: str
    code: str
    started: datetime
    total_s: float  # this invocation's
    resumed: int = 0  # runs an earlier invocation of the same command had done


def _seeds_paragraph(spec: CompareSpec) -> str:
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


def _provenance_lines(runs: Sequence[StoredRun], prov: Provenance, host: dict[str, Any]) -> str:
    codes = sorted({r.code for r in runs})
    code = (
        f"code `{codes[0]}`"
        if len(codes) == 1
        else "code " + ", ".join(f"`{c}`" for c in codes) + " (runs from different code versions: see runs.csv)"
    )
    ran = len(runs) - prov.resumed
    resumed = (
        f" {prov.resumed} of {len(runs)} runs come from an earlier invocation of the same command into this folder "
        f"(kept in its runs/), {ran} from this one."
        if prov.resumed
        else ""
    )
    return (
        f"Generated by `{prov.command}` with {code}, on {prov.started:%Y-%m-%d %H:%M} UTC "
        f"on {host['cpus']} CPUs ({host['platform']}), Python {host['python']}, torch {host['torch']}, "
        f"tidal {host['tidal']}. The runs took {sum(r.duration_s for r in runs):.0f}s (jobs and warm-ups)." + resumed
    )


def write_report(
    spec: CompareSpec,
    spec_file: Path,
    summaries: list[ModeSummary],
    runs: Sequence[StoredRun],
    job_specs: dict[str, dict[str, Any]],
    out: Path,
    prov: Provenance,
) -> Path:
    """Writes report.md, results.json and runs.csv into `out` (the charts are written separately)."""
    host = machine()
    slowdowns = ", ".join(f"{s:g}x" for s in spec.cluster.worker_slowdowns)
    try:
        spec_text = spec_file.read_text().rstrip()
    except OSError:
        spec_text = "(unreadable)"
    kill = spec.kill
    seeds = spec.seed_list()
    metric = metric_name([r for m in summaries for r in m.runs])
    exits = [{**e, "label": r.label, "seed": r.seed} for r in runs for e in r.exits]
    lines = [
        f"# tidal compare: {spec.name}",
        "",
        f"The same job (data, model, straggler profile) once per consistency mode, on a local cluster of "
        f"real processes on 127.0.0.1: 1 coordinator, {spec.cluster.num_shards} shards, "
        f"{len(spec.cluster.worker_slowdowns)} workers with slowdowns {slowdowns} (rank r runs on the r-th; "
        f"`tidal worker --slowdown k` simulates a machine k times slower). {len(summaries)} modes"
        + (f"; a second run with rank {kill.rank} killed at step {kill.at_step}." if kill else ".")
        + f" Fresh worker processes first run a sync warm-up job of {warm_up_steps(spec)} steps, not reported: "
        "the first job on new processes is otherwise measurably slower (one-off costs such as the first full "
        "garbage collections of their heaps).",
        "",
        _seeds_paragraph(spec),
        "",
        _provenance_lines(runs, prov, host),
        "",
        "## Results",
        "",
        markdown_table(headers(spec, metric=metric), rows(spec, summaries)),
        "",
    ]
    if len(seeds) >= MIN_SEEDS_FOR_INTERVAL:
        head, body = interval_rows(summaries, metric)
        lines += [
            f"### 95% confidence intervals of the means ({len(seeds)} seeds, t with {len(seeds) - 1} "
            "degrees of freedom)",
            "",
            markdown_table(head, body),
            "",
        ]
    lines += [
        "- **per seed**: every run's numbers are in runs.csv (one row per mode, seed and kill) and results.json.",
        "- **wall**: job start to end as the coordinator saw it (includes the final evaluation).",
        "- **samples**: training samples the workers processed; the same in every mode by design, except where "
        "gradients are dropped (backup workers: the slowest worker's late gradients) or fast workers do more "
        "steps (async: the shards stop after `steps × num_workers` updates).",
        "- **step p50/p99**: whole-step wall time over all workers, estimated from the "
        "`tidal_worker_step_duration_seconds` buckets like PromQL `histogram_quantile` (bucket resolution: "
        "the estimate lies within the bucket that holds it).",
        "- **samples/s**: `tidal_worker_samples_total` of all workers / wall.",
        f"- **time / versions to target**: the first evaluation (every {job_specs_eval(job_specs)} versions, "
        f"by rank 0) with validation loss ≤ {spec.target_val_loss:g}; versions are parameter versions "
        "(optimizer steps on the shards) out of the job's target version, which differs by mode "
        "(async applies `steps × num_workers` updates, local SGD `steps / sync_every` outer steps).",
        "- **staleness**: versions between a gradient's base and the version it was applied to, over all "
        "applied updates (coordinator's job status).",
        "- **bytes on the wire**: data-plane bytes the workers sent and received "
        "(`tidal_worker_sent_bytes_total` + `tidal_worker_received_bytes_total`).",
    ]
    if kill is not None:
        lines += [
            f"- **rank {kill.rank} killed**: the outcome of the second run, whose job spec kills that worker "
            f"(`stragglers: [{{rank: {kill.rank}, kill_at_step: {kill.at_step}}}]`); details below.",
        ]
    lines.append(
        "- **reproducibility**: the same spec and seed give the same plain-sync numbers (no backup workers) "
        "on every run (samples, versions, evaluations at a given version, final validation loss and accuracy); "
        "timings vary, and so does everything in the other modes that depends on which gradient arrives first."
    )
    for m in summaries:
        for seed, run in zip(m.seeds, m.runs, strict=True):
            if run.missing_metrics:
                lines.append(
                    f"- **{m.label}**{f' (seed {seed})' if len(seeds) > 1 else ''}: no /metrics page from "
                    f"{', '.join(run.missing_metrics)} after the run (the process had exited); its numbers are missing "
                    "above."
                )
    lines += auto_section(summaries, spec.target_val_loss)
    head, body = worker_rows(summaries)
    lines += [
        "",
        "### Throughput per worker (samples/s)",
        "",
        "Rank r runs on the r-th worker process; the slowdown is its machine's (`tidal worker --slowdown`).",
        "",
        markdown_table(head, body),
        "",
        "## Charts",
        "",
        *(
            []
            if len(seeds) == 1
            else [
                "Lines and bars are the means over the seeds; the shaded bands and the error bars span min–max "
                f"(curves: {DATA_FILE}).",
                "",
            ]
        ),
        *(f"![{name.removesuffix('.png')}]({name})\n" for name in FILES),
    ]
    if kill is not None:
        lines += [
            f"## With rank {kill.rank} killed at step {kill.at_step}",
            "",
            "After each of these runs the runner replaces the killed worker process, and every later rank, "
            "with fresh processes in rank order, so ranks stay on the same machines; fresh processes run a "
            "short warm-up job first.",
            "",
            markdown_table(
                ["mode", "job", "outcome"] if len(seeds) == 1 else ["mode", "seed", "job", "outcome"],
                [
                    [m.label, *([] if len(seeds) == 1 else [str(seed)]), m.kills[seed].job_id, m.kills[seed].outcome()]
                    for m in summaries
                    for seed in m.seeds
                    if seed in m.kills
                ],
            ),
            "",
        ]
    if any(not e["expected"] for e in exits):
        lines += [
            "## Worker processes replaced",
            "",
            "Worker processes exited that no job spec killed; each was replaced together with every later rank, "
            "in rank order.",
            "",
            markdown_table(
                ["after job", "process", "exit code", "why"],
                [
                    [
                        str(e["after_job"]),
                        str(e["process"]),
                        str(e["exit_code"]),
                        "killed by the job spec"
                        if e["expected"]
                        else "unexpected: see logs/<process>.log under --workdir",
                    ]
                    for e in exits
                ],
            ),
            "",
        ]
    lines += [f"## Compare spec (`{spec_file.name}`)", "", "```yaml", spec_text, "```", ""]
    write_atomic(out / "report.md", "\n".join(lines))
    results = {
        "format": 2,
        "name": spec.name,
        "command": prov.command,
        "code": prov.code,
        "generated_at": prov.started.isoformat(),
        "total_s": prov.total_s,
        "resumed_runs": prov.resumed,
        "machine": host,
        "spec": spec.model_dump(mode="json"),
        "target_val_loss": spec.target_val_loss,
        "seeds": seeds,
        "worker_exits": exits,
        "modes": [
            {
                "label": m.label,
                "mode": m.mode,
                "job_spec": job_specs.get(m.label),
                "seeds": m.seeds,
                "summary": {key: None if st is None else asdict(st) for key, st in m.stats.items()},
                "runs": [
                    {
                        "seed": seed,
                        "baseline": asdict(run),
                        "kill": asdict(m.kills[seed]) if seed in m.kills else None,
                    }
                    for seed, run in zip(m.seeds, m.runs, strict=True)
                ],
            }
            for m in summaries
        ],
    }
    write_atomic(out / "results.json", dumps(results) + "\n")
    write_atomic(out / "runs.csv", runs_csv(runs))
    return out / "report.md"


RUN_COLUMNS = ("label", "mode", "seed", "kill", "job_id", "state", "code", "finished_at")


def runs_csv(runs: Sequence[StoredRun]) -> str:
    """One row per run (mode, seed, kill): the per-seed values behind the report's means."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*RUN_COLUMNS, *(m.key for m in METRICS)])
    for r in runs:
        values = [m.value(r.result) for m in METRICS]
        writer.writerow(
            [r.label, r.result.mode, r.seed, r.kill, r.result.job_id, r.result.state, r.code, r.finished_at]
            + ["" if v is None else repr(float(v)) for v in values]
        )
    return buffer.getvalue()


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
        settings = ", ".join(f"{k} {_cell(m.setting_stat(k), 'g')}" for k in names) or MISSING
        decisions = Stat.of([r.auto_decisions for r in m.counted if r.auto_decisions is not None])
        to_target = (
            f"{reached.index(m) + 1} of {len(summaries)} (fastest: {reached[0].label})" if m in reached else
            f"not reached (fastest: {reached[0].label})" if reached else "not reached by any mode"
        )  # fmt: skip
        rate = f"{by_rate.index(m) + 1} of {len(summaries)}" if m in by_rate else MISSING
        body.append([m.label, settings, _cell(decisions, ".0f"), to_target, rate])
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


def warm_up_steps(spec: CompareSpec) -> int:
    return int(warm_up_spec(spec)["steps"]) if spec.warm_up_steps != 0 else 0


def job_specs_eval(job_specs: dict[str, dict[str, Any]]) -> str:
    values = {spec.get("eval_every", 0) for spec in job_specs.values()}
    return ", ".join(str(v) for v in sorted(values)) if values else "?"


def now() -> datetime:
    return datetime.now(UTC)
