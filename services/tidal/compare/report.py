"""The report folder: report.md (tables, charts, spec, machine) and results.json (every number)."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tidal.compare.charts import FILES
from tidal.compare.results import RunResult, dumps
from tidal.compare.spec import CompareSpec, warm_up_spec

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


def rows(
    spec: CompareSpec, baselines: list[RunResult], kills: dict[str, RunResult], compact: bool = False
) -> list[list[str]]:
    """One row per mode, in the order of `headers`; `compact` shortens text cells for a terminal."""
    never = "never" if compact else "not reached"
    out = []
    for run in baselines:
        row = [
            run.label,
            run.state,
            f"{run.wall_s:.1f}",
            str(run.samples),
            _ms(run.step_p50_s),
            _ms(run.step_p99_s),
            _num(run.samples_per_s, ".0f"),
            f"{run.target.elapsed_s:.1f}" if run.target else never,
            f"{run.target.version} / {run.target_version}" if run.target else never,
            _num(run.final_val_loss, ".4f"),
            _num(run.final_val_accuracy, ".3f"),
            f"{run.staleness_mean:.2f} / {run.staleness_max}",
            _num(None if run.wire_bytes is None else run.wire_bytes / 2**20, ".1f"),
        ]
        if spec.kill is not None:
            kill = kills.get(run.label)
            if kill is None:
                row.append(MISSING)
            else:
                row.append(f"{kill.state} v{kill.version}" if compact else f"{kill.state} at version {kill.version}")
        out.append(row)
    return out


def worker_rows(baselines: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    ranks = sorted({(w.rank, w.slowdown) for r in baselines for w in r.workers})
    head = ["mode", *(f"rank {rank} ({slowdown:g}x)" for rank, slowdown in ranks)]
    body = []
    for run in baselines:
        by_rank = {w.rank: w for w in run.workers}
        body.append([run.label, *(_num(by_rank[r].samples_per_s if r in by_rank else None, ".0f") for r, _ in ranks)])
    return head, body


NUMERIC = re.compile(r"^[-–+\d.,/ ]+$|^not reached$")


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A GitHub Markdown table; columns of numbers are right-aligned."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["--:" if body and all(NUMERIC.match(row[i]) for row in body) else ":--" for i in range(len(head))]
    return "\n".join([line(head), "| " + " | ".join(align) + " |", *(line(r) for r in body)])


def write_report(
    spec: CompareSpec,
    spec_file: Path,
    baselines: list[RunResult],
    kills: dict[str, RunResult],
    exits: list[dict[str, Any]],
    job_specs: dict[str, dict[str, Any]],
    out: Path,
    started: datetime,
    total_s: float,
) -> Path:
    """Writes report.md and results.json into `out` (the charts are written separately)."""
    host = machine()
    slowdowns = ", ".join(f"{s:g}x" for s in spec.cluster.worker_slowdowns)
    try:
        spec_text = spec_file.read_text().rstrip()
    except OSError:
        spec_text = "(unreadable)"
    kill = spec.kill
    lines = [
        f"# tidal compare: {spec.name}",
        "",
        f"The same job (data, seed, model, straggler profile) once per consistency mode, on a local cluster of "
        f"real processes on 127.0.0.1: 1 coordinator, {spec.cluster.num_shards} shards, "
        f"{len(spec.cluster.worker_slowdowns)} workers with slowdowns {slowdowns} (rank r runs on the r-th; "
        f"`tidal worker --slowdown k` simulates a machine k times slower). {len(baselines)} modes"
        + (f"; a second run with rank {kill.rank} killed at step {kill.at_step}." if kill else ".")
        + f" Fresh worker processes first run a sync warm-up job of {warm_up_steps(spec)} steps, not reported: "
        "the first job on new processes is otherwise measurably slower (one-off costs such as the first full "
        "garbage collections of their heaps).",
        "",
        f"Generated by `tidal compare {spec_file}` on {started:%Y-%m-%d %H:%M} UTC in {total_s:.0f}s "
        f"on {host['cpus']} CPUs ({host['platform']}), Python {host['python']}, torch {host['torch']}, "
        f"tidal {host['tidal']}.",
        "",
        "## Results",
        "",
        markdown_table(headers(spec, metric=metric_name(baselines)), rows(spec, baselines, kills)),
        "",
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
    for run in baselines:
        if run.missing_metrics:
            lines.append(
                f"- **{run.label}**: no /metrics page from {', '.join(run.missing_metrics)} after the run "
                "(the process had exited); its numbers are missing above."
            )
    lines += auto_section(baselines, spec.target_val_loss)
    head, body = worker_rows(baselines)
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
                ["mode", "job", "outcome"],
                [
                    [label, k.job_id, k.outcome()]
                    for label, k in ((b.label, kills.get(b.label)) for b in baselines)
                    if k is not None
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
    (out / "report.md").write_text("\n".join(lines))
    results = {
        "name": spec.name,
        "generated_at": started.isoformat(),
        "total_s": total_s,
        "machine": host,
        "spec": spec.model_dump(mode="json"),
        "target_val_loss": spec.target_val_loss,
        "worker_exits": exits,
        "modes": [
            {
                "label": run.label,
                "mode": run.mode,
                "job_spec": job_specs.get(run.label),
                "baseline": asdict(run),
                "kill": asdict(kills[run.label]) if run.label in kills else None,
            }
            for run in baselines
        ],
    }
    (out / "results.json").write_text(dumps(results) + "\n")
    return out / "report.md"


def auto_section(baselines: list[RunResult], target_val_loss: float) -> list[str]:
    """Where each `mode: auto` run landed: the settings its tuner chose, and its place among the
    fixed modes by time to the target and by throughput."""
    autos = [r for r in baselines if r.mode == "auto"]
    if not autos:
        return []
    reached = sorted((r for r in baselines if r.target), key=lambda r: r.target.elapsed_s if r.target else 0.0)
    by_rate = sorted((r for r in baselines if r.samples_per_s), key=lambda r: -(r.samples_per_s or 0.0))
    body = []
    for run in autos:
        settings = ", ".join(f"{k} {v:g}" for k, v in sorted(run.settings.items())) or MISSING
        to_target = (
            f"{reached.index(run) + 1} of {len(baselines)} (fastest: {reached[0].label})" if run in reached else
            f"not reached (fastest: {reached[0].label})" if reached else "not reached by any mode"
        )  # fmt: skip
        rate = f"{by_rate.index(run) + 1} of {len(baselines)}" if run in by_rate else MISSING
        body.append([run.label, settings, _num(run.auto_decisions, ".0f"), to_target, rate])
    return [
        "",
        "### Where mode auto landed",
        "",
        "Mode auto starts as BSP and, every `auto_window` applied versions, sets the backup workers and the "
        "staleness bound from the workers' measured step times (docs/modes.md). Settings: those in force at the "
        "end (the highest over shards); decisions: changes, summed over shards (each shard logs its reasons). "
        f"Places: among all {len(baselines)} modes of this report, by time to val loss ≤ {target_val_loss:g} "
        "and by samples/s.",
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
