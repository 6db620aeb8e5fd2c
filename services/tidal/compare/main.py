"""`tidal compare SPEC`: run every mode of a compare spec on a local cluster, write the report."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from tidal.compare import report, tables
from tidal.compare.aggregate import ModeSummary
from tidal.compare.charts import write_charts
from tidal.compare.provenance import code_version, command_line
from tidal.compare.results import RunResult
from tidal.compare.runner import CompareRunner
from tidal.compare.spec import CompareSpec, PlannedRun, load_compare_spec, plan_runs
from tidal.compare.store import RunStore, StoredRun, run_key
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.launcher import LocalCluster

T = TypeVar("T")


async def run_compare(
    spec_file: Path, out: Path | None, workdir: Path | None, console: Console, restart: bool = False
) -> int:
    """Returns 0 when every baseline run succeeded, 1 otherwise (the report is written either way).

    Runs already in `out` for the same spec (an earlier, interrupted invocation) are not run again.
    Raises TidalError for a bad spec, runs of another spec in `out`, or a cluster that cannot run the jobs.
    """
    spec = load_compare_spec(spec_file)
    planned = plan_runs(spec)
    out = out or Path(f"compare-{spec.name}")
    command = command_line(spec_file, out, workdir, restart)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(f"--out {out}: cannot create the report folder: {exc}") from None
    store = RunStore(out, spec)
    store.open(restart)
    done, notes = store.load(planned)
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]", highlight=False, soft_wrap=True)
    todo = [p for p in planned if run_key(p) not in done]
    if done:
        console.print(
            f"Resuming: {len(done)} of {len(planned)} runs are done in {store.folder}; running the other {len(todo)}"
        )
    started, t0 = report.now(), time.monotonic()
    code = code_version()
    if todo:
        try:
            await _on_sigterm_cancel(run_planned(spec, todo, workdir, console, _saver(store, code)))
        except (asyncio.CancelledError, Terminated):
            saved = len(store.load(planned)[0])
            console.print(
                f"[yellow]runs saved: {saved} of {len(planned)}, in {store.folder}; run the same command "
                "to resume[/yellow]",
                highlight=False,
            )
            raise
    total_s = time.monotonic() - t0
    stored, _ = store.load(planned)
    missing = [run_key(p) for p in planned if run_key(p) not in stored]
    if missing:  # every run was saved as it ended: only a file removed meanwhile gets here
        raise FailedPreconditionError(f"{store.folder}: results missing for {', '.join(missing)}")
    runs = [stored[run_key(p)] for p in planned]
    summaries = report.summarize_modes(spec, runs)
    job_specs = {p.label: p.spec.model_dump(mode="json") for p in planned if not p.kill}
    provenance = report.Provenance(command, code, started, total_s, resumed=len(done))
    path = report.write_report(spec, spec_file, summaries, runs, job_specs, out, provenance)
    subtitle = f"{spec.name}: {len(spec.cluster.worker_slowdowns)} workers with slowdowns " + ", ".join(
        f"{s:g}x" for s in spec.cluster.worker_slowdowns
    )
    write_charts(summaries, spec.target_val_loss, subtitle, out)
    console.print(summary(spec, summaries))
    console.print(f"Report: {path} (charts, results.json and runs.csv beside it). Total {total_s:.0f}s.")
    failed = [(m.label, seed, r) for m in summaries for seed, r in zip(m.seeds, m.runs, strict=True) if not r.succeeded]
    for label, seed, run in failed:
        console.print(f"[red]{label} (seed {seed}): {run.outcome()}[/red]", highlight=False)
    return 1 if failed else 0


def _saver(store: RunStore, code: str) -> Callable[[PlannedRun, RunResult, list[dict[str, object]], float], None]:
    def save(run: PlannedRun, result: RunResult, exits: list[dict[str, object]], duration_s: float) -> None:
        store.save(
            StoredRun(
                key=run_key(run),
                label=run.label,
                kill=run.kill,
                seed=run.seed,
                result=result,
                exits=exits,
                job_spec=run.spec.model_dump(mode="json"),
                code=code,
                finished_at=report.now().isoformat(),
                duration_s=duration_s,
            )
        )

    return save


class Terminated(FailedPreconditionError):
    """SIGTERM stopped the comparison (one line and exit code 1, like any TidalError)."""


async def _on_sigterm_cancel(coro: Coroutine[Any, Any, T]) -> T:
    """Runs `coro` so that SIGTERM (`kill PID`) stops it like Ctrl-C: the cluster is stopped, the
    runs finished so far stay saved, and the same command resumes."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        return await task
    try:
        return await task
    except asyncio.CancelledError:
        if terminated:
            raise Terminated("compare: stopped by SIGTERM") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run_all(
    spec: CompareSpec, planned: list[PlannedRun], workdir: Path | None, console: Console
) -> tuple[list[RunResult], dict[str, RunResult], list[dict[str, object]]]:
    """Runs the planned jobs of one seed: the baselines in order, the runs with a kill by label,
    and every worker process exit."""
    baselines: list[RunResult] = []
    kills: dict[str, RunResult] = {}

    def keep(run: PlannedRun, result: RunResult, _exits: list[dict[str, object]], _duration_s: float) -> None:
        if run.kill:
            kills[run.label] = result
        else:
            baselines.append(result)

    exits = await run_planned(spec, planned, workdir, console, keep)
    return baselines, kills, exits


async def run_planned(
    spec: CompareSpec,
    planned: list[PlannedRun],
    workdir: Path | None,
    console: Console,
    on_result: Callable[[PlannedRun, RunResult, list[dict[str, object]], float], None],
) -> list[dict[str, object]]:
    """Runs the planned jobs in order on one local cluster, which is always stopped at the end.

    `on_result(run, result, exits, duration_s)` gets each run as it ends, with the worker
    processes that exited during it. Returns every worker process exit.
    """
    multi = len(spec.seed_list()) > 1
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
        try:
            await asyncio.to_thread(cluster.start)
            await asyncio.to_thread(runner.start_workers)
            reported = 0
            for run in planned:
                seed = f" seed {run.seed}" if multi else ""
                console.print(f"[bold]{run.label}[/bold]{seed}{' (a worker is killed)' if run.kill else ''}")
                t0 = time.monotonic()
                result = await runner.run(run)
                if run.kill:
                    console.print(f"  {result.outcome()}", highlight=False, soft_wrap=True)
                for gone in runner.exits[reported:]:
                    note = "" if gone["expected"] else " [yellow](unexpected)[/yellow]"
                    console.print(f"  {gone['process']} exited with {gone['exit_code']}{note}; replaced")
                on_result(run, result, runner.exits[reported:], time.monotonic() - t0)
                reported = len(runner.exits)
        except asyncio.CancelledError:  # Ctrl-C or SIGTERM
            console.print("[yellow]interrupted: stopping the cluster[/yellow]")
            raise
        finally:
            runner.closed = True
            cluster.stop()
    return runner.exits


def summary(spec: CompareSpec, summaries: list[ModeSummary]) -> Table:
    seeds = spec.seed_list()
    table = Table(
        title=f"{spec.name}: same job and data in every mode, "
        + (f"seed {seeds[0]}" if len(seeds) == 1 else f"means over {len(seeds)} seeds (spread: in the report)"),
        caption=f"to target: first evaluation with val loss ≤ {spec.target_val_loss:g}; versions: at that point / "
        "target; stale: mean / max versions"
        + (
            f"; killed: rank {spec.kill.rank} killed at step {spec.kill.at_step}, outcome"
            + (" at version v" if len(seeds) == 1 else " over the seeds")
            if spec.kill
            else ""
        ),
    )
    metric = tables.metric_name([r for m in summaries for r in m.runs])
    for i, column in enumerate(tables.headers(spec, compact=True, metric=metric)):
        table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for row in tables.rows(spec, summaries, compact=True):
        table.add_row(*row)
    return table
