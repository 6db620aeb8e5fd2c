"""`tidal advise SPEC`: probe the job on a local cluster, then recommend a mode.

The probe is the job itself (same model, data, batch size, shards, compression and
straggler profile) run asynchronously for a few steps, so that no worker waits for another
and each one's own pace shows in its metrics: computation (with any straggler delay) and
communication per step, and the spread of its step times. Then the same steps in sync: the
two validation losses after the same samples say whether stale gradients hurt this job
(`ConvergenceProbe`). `tidal.core.advice` turns those into the recommendation. The probes
reuse the compare runner: the same warm-up, process handling and bounded waits.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tidal.client import load_spec_file
from tidal.compare.main import run_all
from tidal.compare.results import RunResult, WorkerResult
from tidal.compare.spec import ClusterSpec, CompareSpec, ModeRun, plan_runs
from tidal.core.advice import Advice, ConvergenceProbe, WorkerTiming, advise
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.core.spec import Mode, parse_job_spec

BUSY_PHASES = ("compute", "injected")
# Probes run, each twice as long as the one before, until every worker made a step.
PROBE_ATTEMPTS = 3
COMM_PHASES = ("push", "barrier", "pull")


def probe_compare_spec(job: dict[str, Any], probe_steps: int, slowdowns: list[float] | None) -> CompareSpec:
    """The job as a two-mode compare run of `probe_steps` steps, no kill: async (the timings),
    then sync (the convergence check), each evaluated once at its end."""
    spec = parse_job_spec(job)
    shared = {k: copy.deepcopy(v) for k, v in job.items() if k not in ("name", "mode", "consistency", "compression")}
    # One evaluation per probe_steps versions: sync's comes at its end; async (as many
    # versions per worker) evaluates a few times, its last at the end too.
    shared.update(steps=probe_steps, eval_every=probe_steps)
    shared["stragglers"] = [
        {k: v for k, v in s.items() if k != "kill_at_step"} for s in shared.get("stragglers", []) if isinstance(s, dict)
    ]
    machines = slowdowns or [1.0] * spec.num_workers
    if len(machines) != spec.num_workers:
        raise InvalidArgumentError(
            f"--slowdowns: {len(machines)} values for the job's {spec.num_workers} workers (num_workers)"
        )
    return CompareSpec(
        name=f"advise-{spec.name}"[:63],
        job=shared,
        cluster=ClusterSpec(num_shards=spec.num_shards, worker_slowdowns=machines),
        target_val_loss=1e9,  # not used: the probe only times steps
        modes=[
            ModeRun(label="probe", mode=Mode.ASYNC, compression=spec.compression.model_dump()),
            ModeRun(label="convergence", mode=Mode.SYNC, compression=spec.compression.model_dump()),
        ],
        warm_up_steps=min(probe_steps, 10),
    )


def timings_of(workers: list[WorkerResult]) -> list[WorkerTiming]:
    out = []
    for w in workers:
        if not w.phase_means:
            raise FailedPreconditionError(
                f"probe: no step timings from worker {w.process} (its /metrics page) after {PROBE_ATTEMPTS} probes, "
                "the last twice as long as the one before; try a larger --probe-steps"
            )
        out.append(
            WorkerTiming(
                f"rank {w.rank}",
                sum(w.phase_means.get(p, 0.0) for p in BUSY_PHASES),
                sum(w.phase_means.get(p, 0.0) for p in COMM_PHASES),
                w.step_p50_s,
                w.step_p90_s,
            )
        )
    return out


async def run_advise(
    spec_file: Path,
    probe_steps: int,
    slowdowns: list[float] | None,
    workdir: Path | None,
    as_json: bool,
    console: Console,
    err: Console,
) -> int:
    job = load_spec_file(spec_file)
    spec = parse_job_spec(job)
    steps = probe_steps
    for attempt in range(PROBE_ATTEMPTS):
        compare = probe_compare_spec(job, steps, slowdowns)
        where = workdir / f"probe-{attempt + 1}" if workdir is not None and attempt else workdir
        # Progress goes to stderr so that --json prints nothing but the answer on stdout.
        baselines, _, _ = await run_all(compare, plan_runs(compare), where, err)
        probe = baselines[0]
        if not probe.succeeded:
            raise FailedPreconditionError(f"probe job {probe.job_id}: {probe.outcome()}")
        # An async job ends after steps x workers updates, whoever made them: a worker that
        # started late on a loaded machine may have made none. Probe again for longer.
        idle = [w.process for w in probe.workers if not w.phase_means]
        if not idle or attempt == PROBE_ATTEMPTS - 1:
            break
        err.print(
            f"probe: {', '.join(idle)} made no step before the others had made the job's {steps * spec.num_workers} "
            f"updates; probing again with {2 * steps} steps per worker",
            highlight=False,
        )
        steps *= 2
    timings = timings_of(probe.workers)
    advice = advise(
        timings, spec.batch_size, convergence_of(probe, baselines[1], steps * spec.num_workers * spec.batch_size)
    )
    if as_json:
        console.print_json(json.dumps(as_dict(advice, timings)))
    else:
        console.print(timing_table(timings))
        console.print(estimate_table(advice))
        console.print(f"[bold]Recommendation:[/bold] {describe(advice)}", highlight=False)
        console.print(advice.reason, highlight=False)
    return 0


def convergence_of(async_probe: RunResult, sync_probe: RunResult, samples: int) -> ConvergenceProbe | None:
    """The two probes' validation losses after the same samples; None where either is missing
    (a job without validation data, a sync probe that failed): the check is then skipped."""
    if not sync_probe.succeeded or async_probe.final_val_loss is None or sync_probe.final_val_loss is None:
        return None
    return ConvergenceProbe(samples, sync_probe.final_val_loss, async_probe.final_val_loss)


def describe(advice: Advice) -> str:
    options = ", ".join(f"{k}: {v}" for k, v in advice.consistency.items())
    return f"mode: {advice.mode.value}" + (f" with {options}" if options else "")


def as_dict(advice: Advice, timings: list[WorkerTiming]) -> dict[str, Any]:
    return {
        "recommendation": advice.spec_fields(),
        "reason": advice.reason,
        "figures": advice.figures,
        "estimated_samples_per_s": advice.estimates,
        "workers": [t.__dict__ for t in timings],
    }


def timing_table(timings: list[WorkerTiming]) -> Table:
    table = Table(title="Probe: each worker's own pace (async, nobody waits)")
    for column in ("worker", "compute ms/step", "comm ms/step", "step p50 ms", "step p90 ms"):
        table.add_column(column, justify="left" if column == "worker" else "right")
    for t in timings:
        table.add_row(t.worker, _ms(t.busy_s), _ms(t.comm_s), _ms(t.step_p50_s), _ms(t.step_p90_s))
    return table


def estimate_table(advice: Advice) -> Table:
    table = Table(title="Estimated throughput from these timings (convergence per sample not modelled)")
    table.add_column("mode")
    table.add_column("samples/s", justify="right")
    for label, rate in sorted(advice.estimates.items(), key=lambda kv: -kv[1]):
        table.add_row(label, f"{rate:.0f}")
    return table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"
