"""Shard memory: resident set of a shard process against the bytes of parameters and
optimizer state it holds, after a job of pushes and pulls."""

from __future__ import annotations

from bench.cluster import BenchCluster, driver_spec
from bench.procs import rss_bytes, status_bytes
from bench.results import Goal, Row, Settings
from bench.stats import Spread

MB = 1e6
GOAL = Goal("<=", 3.0)


def shard_memory(s: Settings, env: dict[str, str], numel: int, rounds: int) -> list[Row]:
    """One fresh single-shard cluster per transport: the peak resident set of a process is for life."""
    rows = []
    for transport in ("grpc", "shared_memory"):
        with BenchCluster(s.workdir / f"memory-{transport}", env, num_shards=1) as cluster:
            idle = rss_bytes(cluster.pid("shard-0"))
            spec, exact = driver_spec(numel, "async", 2, 1, optimizer="adam")
            cluster.run_drivers(spec, [["--rounds", rounds, "--transport", transport]] * 2, 600)
            hwm = status_bytes(cluster.pid("shard-0"), "VmHWM")
            held, shared = cluster.last_held["shard-0"], cluster.last_shared_resident["shard-0"]
        how = "tensors through shared memory" if transport == "shared_memory" else "tensors inline in gRPC"
        label = f"shard memory, {exact / 1e6:.0f}M params, Adam, 2 workers async, {how}"
        note = (
            f"peak RSS {hwm / MB:.0f} MB; idle shard before the job {idle / MB:.0f} MB (Python, torch, gRPC); "
            f"held: parameters + Adam state {held / MB:.0f} MB"
        )
        rows += [
            Row(label, "peak resident / held bytes", Spread.of([hwm / held]), goal=GOAL, note=note, digits=2),
            Row(label, "(peak resident - idle resident) / held bytes", Spread.of([(hwm - idle) / held]), digits=2),
        ]
        if transport == "shared_memory":
            rows.append(
                Row(
                    label, "(peak resident - workers' segments mapped) / held bytes",
                    Spread.of([(hwm - shared) / held]), digits=2,
                    note=f"the 2 workers' /dev/shm segments resident in the shard at the end of the job: "
                    f"{shared / MB:.0f} MB; they are the workers' allocation, counted in the peak above as well",
                )
            )  # fmt: skip
    return rows
