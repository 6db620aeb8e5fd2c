"""The prose of report.md around its tables: the opening paragraph on the cluster, what each
column means, the throughput-per-worker and chart sections with their captions, and the sections
on the killed-worker runs and on worker processes that had to be replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidal.compare.aggregate import ModeSummary
from tidal.compare.charts import DATA_FILE, FILES
from tidal.compare.spec import CompareSpec, warm_up_spec
from tidal.compare.tables import markdown_table, worker_rows


def intro(spec: CompareSpec, modes: int) -> str:
    """The opening paragraph: the cluster, the modes, the kill run and the warm-up."""
    kill = spec.kill
    slowdowns = ", ".join(f"{s:g}x" for s in spec.cluster.worker_slowdowns)
    return (
        f"The same job (data, model, straggler profile) once per consistency mode, on a local cluster of "
        f"real processes on 127.0.0.1: 1 coordinator, {spec.cluster.num_shards} shards, "
        f"{len(spec.cluster.worker_slowdowns)} workers with slowdowns {slowdowns} (rank r runs on the r-th; "
        f"`tidal worker --slowdown k` simulates a machine k times slower). {modes} modes"
        + (f"; a second run with rank {kill.rank} killed at step {kill.at_step}." if kill else ".")
        + f" Fresh worker processes first run a sync warm-up job of {warm_up_steps(spec)} steps, not reported: "
        "the first job on new processes is otherwise measurably slower (one-off costs such as the first full "
        "garbage collections of their heaps)."
    )


def column_notes(spec: CompareSpec, job_specs: dict[str, dict[str, Any]]) -> list[str]:
    """A bullet per column of the results table: what it measures and how."""
    kill = spec.kill
    lines = [
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
        "(`tidal_worker_sent_bytes_total` + `tidal_worker_received_bytes_total`), plus the embedding rows' "
        "pulls and pushes, of training steps and of evaluations (`tidal_worker_embedding_bytes_total` + "
        "`tidal_worker_embedding_eval_bytes_total`; a job with tables shows that part as `rows`).",
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
    return lines


def workers_and_charts(summaries: Sequence[ModeSummary], seeds: Sequence[int]) -> list[str]:
    """The throughput per worker, then the charts with their caption (the spread over seeds)."""
    head, body = worker_rows(summaries)
    return [
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


def kill_section(spec: CompareSpec, summaries: Sequence[ModeSummary], seeds: Sequence[int]) -> list[str]:
    """The outcome of each run whose job spec kills a worker; none without `kill`."""
    kill = spec.kill
    if kill is None:
        return []
    return [
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


def exits_section(exits: Sequence[dict[str, Any]]) -> list[str]:
    """The worker processes that exited when no job spec killed them; none when there were none."""
    if all(e["expected"] for e in exits):
        return []
    return [
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
                    "killed by the job spec" if e["expected"] else "unexpected: see logs/<process>.log under --workdir",
                ]
                for e in exits
            ],
        ),
        "",
    ]


def warm_up_steps(spec: CompareSpec) -> int:
    return int(warm_up_spec(spec)["steps"]) if spec.warm_up_steps != 0 else 0


def job_specs_eval(job_specs: dict[str, dict[str, Any]]) -> str:
    values = {spec.get("eval_every", 0) for spec in job_specs.values()}
    return ", ".join(str(v) for v in sorted(values)) if values else "?"
