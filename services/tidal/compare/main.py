"""`tidal compare SPEC`: run every mode of a compare spec on a local cluster, write the report."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tidal.compare import report
from tidal.compare.charts import write_charts
from tidal.compare.results import RunResult
from tidal.compare.runner import CompareRunner
from tidal.compare.spec import CompareSpec, PlannedRun, load_compare_spec, plan_runs
from tidal.core.errors import InvalidArgumentError
from tidal.launcher import LocalCluster


async def run_compare(spec_file: Path, out: Path | None, workdir: Path | None, console: Console) -> int:
    """Returns 0 when every baseline run succeeded, 1 otherwise (the report is written either way).

    Raises TidalError for a bad spec or a cluster that cannot run the jobs.
    """
    spec = load_compare_spec(spec_file)
    planned = plan_runs(spec)
    out = out or Path(f"compare-{spec.name}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(f"--out {out}: cannot create the report folder: {exc}") from None
    started, t0 = report.now(), time.monotonic()
    baselines, kills, exits = await run_all(spec, planned, workdir, console)
    total_s = time.monotonic() - t0
    job_specs = {p.label: p.spec.model_dump(mode="json") for p in planned if not p.kill}
    path = report.write_report(spec, spec_file, baselines, kills, exits, job_specs, out, started, total_s)
    subtitle = f"{spec.name}: {len(spec.cluster.worker_slowdowns)} workers with slowdowns " + ", ".join(
        f"{s:g}x" for s in spec.cluster.worker_slowdowns
    )
    write_charts(baselines, spec.target_val_loss, subtitle, out)
    console.print(summary(spec, baselines, kills))
    console.print(f"Report: {path} (charts and results.json beside it). Total {total_s:.0f}s.")
    failed = [r for r in baselines if not r.succeeded]
    for run in failed:
        console.print(f"[red]{run.label}: {run.outcome()}[/red]", highlight=False)
    return 1 if failed else 0


async def run_all(
    spec: CompareSpec, planned: list[PlannedRun], workdir: Path | None, console: Console
) -> tuple[list[RunResult], dict[str, RunResult], list[dict[str, object]]]:
    """Runs the planned jobs in order on one local cluster, which is always stopped at the end."""
    baselines: list[RunResult] = []
    kills: dict[str, RunResult] = {}
    exits: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tidal-compare-") as tmp:
        root = workdir or Path(tmp)
        workers = len(spec.cluster.worker_slowdowns)
        console.print(
            f"Starting 1 coordinator, {spec.cluster.num_shards} shards, {workers} workers on 127.0.0.1 "
            f"(logs: {root / 'logs'}); {len(planned)} jobs"
        )
        # No workers yet: the runner starts them one by one so that rank r is the r-th slowdown.
        cluster = LocalCluster(root, num_shards=spec.cluster.num_shards, worker_slowdowns=())
        runner = CompareRunner(spec, cluster, console)
        exits = runner.exits
        try:
            await asyncio.to_thread(cluster.start)
            await asyncio.to_thread(runner.start_workers)
            reported = 0
            for run in planned:
                console.print(f"[bold]{run.label}[/bold]{' (a worker is killed)' if run.kill else ''}")
                result = await runner.run(run)
                if run.kill:
                    kills[run.label] = result
                    console.print(f"  {result.outcome()}", highlight=False, soft_wrap=True)
                else:
                    baselines.append(result)
                for gone in runner.exits[reported:]:
                    note = "" if gone["expected"] else " [yellow](unexpected)[/yellow]"
                    console.print(f"  {gone['process']} exited with {gone['exit_code']}{note}; replaced")
                reported = len(runner.exits)
        except asyncio.CancelledError:  # Ctrl-C
            console.print("[yellow]interrupted: stopping the cluster[/yellow]")
            raise
        finally:
            runner.closed = True
            cluster.stop()
    return baselines, kills, exits


def summary(spec: CompareSpec, baselines: list[RunResult], kills: dict[str, RunResult]) -> Table:
    table = Table(
        title=f"{spec.name}: same job, data and seed in every mode",
        caption=f"to target: first evaluation with val loss ≤ {spec.target_val_loss:g}; versions: at that point / "
        "target; stale: mean / max versions"
        + (
            f"; killed: rank {spec.kill.rank} killed at step {spec.kill.at_step}, outcome at version v"
            if spec.kill
            else ""
        ),
    )
    for i, column in enumerate(report.headers(spec, compact=True, metric=report.metric_name(baselines))):
        table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for row in report.rows(spec, baselines, kills, compact=True):
        table.add_row(*row)
    return table
