"""Shard memory: resident set of a shard process against the bytes of parameters and
optimizer state it holds, after a job of pushes and pulls."""

from __future__ import annotations

from pathlib import Path

from bench.cluster import BenchCluster, driver_spec
from bench.procs import rss_bytes
from bench.results import Goal, Row, Settings
from bench.stats import Spread

MB = 1e6


def _hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def shard_memory(cluster: BenchCluster, s: Settings, numel: int, rounds: int) -> list[Row]:
    """Runs once, first on a fresh cluster: the peak resident set of a process is for life."""
    names = [n for n in cluster.cluster.services if n.startswith("shard-")]
    idle_rss = {n: rss_bytes(cluster.pid(n)) for n in names}
    spec, exact = driver_spec(numel, "async", 2, 1, optimizer="adam")
    cluster.run_drivers(spec, [["--rounds", rounds]] * 2, 600)
    name = max(names, key=lambda n: cluster.last_held.get(n, 0.0))
    hwm, held_bytes = _hwm_bytes(cluster.pid(name)), cluster.last_held[name]
    idle, peak, held = [idle_rss[name] / MB], [hwm / MB], [held_bytes / MB]
    ratios, growth = [hwm / held_bytes], [(hwm - idle_rss[name]) / held_bytes]
    label = f"shard memory, {exact / 1e6:.0f}M params, Adam, 2 workers async"
    note = (
        f"peak RSS {Spread.of(peak).fmt(0)} MB; idle shard before the job {Spread.of(idle).fmt(0)} MB "
        f"(Python, torch, gRPC); held: parameters + Adam state {Spread.of(held).fmt(0)} MB"
    )
    return [
        Row(label, "peak resident / held bytes", Spread.of(ratios), goal=Goal("<=", 3.0), note=note, digits=2),
        Row(label, "(peak resident - idle resident) / held bytes", Spread.of(growth), digits=2),
    ]
