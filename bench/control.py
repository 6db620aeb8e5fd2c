"""The control-plane case: one real coordinator, N simulated members heartbeating."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.procs import cpu_seconds, module_cmd, procs
from bench.results import Goal, Row, Settings
from bench.stats import Spread, percentile
from tidal.launcher import LocalCluster


def _one(workdir: Path, env: dict[str, str], members: int, lead_s: float, window_s: float) -> dict[str, float]:
    with LocalCluster(workdir / f"control-{members}", num_shards=0, worker_slowdowns=(), env=env) as cluster:
        pid = cluster.services["coordinator"].process.pid
        start = time.time() + lead_s
        cmd = module_cmd(
            "bench.members", "--coordinator", cluster.coordinator_address, "--members", members,
            "--window", start, start + window_s,
        )  # fmt: skip
        with procs([cmd], env, cluster.workdir / "logs", f"members-{members}") as (sim,):
            time.sleep(max(0.0, start - time.time()))
            cpu0 = cpu_seconds(pid)
            time.sleep(window_s)
            cpu1 = cpu_seconds(pid)
            result = sim.result(lead_s + window_s + 120)
    rtts = result["rtt_s"]
    return {
        "p50_ms": percentile(rtts, 50) * 1e3,
        "p99_ms": percentile(rtts, 99) * 1e3,
        "samples": len(rtts),
        "coordinator_cpu": (cpu1 - cpu0) / window_s,
        "client_cpu_s": result["client_cpu_s"],
        "failed": result["failed"],
        "first_failure": result["first_failure"],
    }


def control_plane(
    s: Settings, env: dict[str, str], sizes: list[int], window_s: float, log: Callable[[str], None]
) -> list[Row]:
    rows = []
    for members in sizes:
        log(f"control plane, {members} members")
        runs = [_one(s.workdir, env, members, 5.0 + members / 50, window_s) for _ in range(s.reps)]
        samples = sum(int(r["samples"]) for r in runs)
        cpu = Spread.of([r["coordinator_cpu"] * 100 for r in runs])
        failed = sum(int(r["failed"]) for r in runs)
        note = (
            f"{samples} heartbeats timed; coordinator CPU {cpu.fmt(0)}% of one core; "
            f"simulator CPU {Spread.of([r['client_cpu_s'] for r in runs]).fmt(1)} s per run"
            + (f"; {failed} member session(s) broke, first: {runs[0]['first_failure'] or '...'}" if failed else "")
        )
        label = f"control plane, {members} members"
        rows.append(Row(label, "heartbeat + health round trip p99 ms", Spread.of([r["p99_ms"] for r in runs]),
                        goal=Goal("<", 50.0), note=note))  # fmt: skip
        rows.append(Row(label, "heartbeat + health round trip p50 ms", Spread.of([r["p50_ms"] for r in runs])))
        rows.append(Row(label, "coordinator CPU % of one core", cpu, digits=0))
    return rows
