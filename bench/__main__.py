"""`python -m bench [--quick] [--cases ...] [--reps N] [--out PATH]`: runs the suite, writes
RESULTS.md (bench/RESULTS.md for a full run; a temporary folder for --quick unless --out).

Full run: about 15-20 minutes on 2 cores. --quick: small sizes, one repetition, about 2
minutes; it proves every case works end to end (what CI runs), its figures mean little.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import control, dataplane, e2e, memory, report, serde_case
from bench.cluster import BenchCluster
from bench.procs import REPO, bench_env
from bench.results import Row, Settings

CASES = ["serde", "memory", "wire", "sync", "async", "e2e", "control"]


@dataclass(frozen=True)
class Sizes:
    serde_numel: int
    memory_numel: int
    memory_rounds: int
    wire_numels: list[int]
    wire_rounds: int
    sync_numel: int
    sync_shards: list[int]
    sync_rounds: int
    async_numel: int
    async_window_s: float
    e2e_workers: list[int]
    e2e_steps: int
    control_members: list[int]
    control_window_s: float


FULL = Sizes(
    serde_numel=10_000_000, memory_numel=25_000_000, memory_rounds=10,
    wire_numels=[10_000_000, 25_000_000], wire_rounds=10,
    sync_numel=10_000_000, sync_shards=[1, 2], sync_rounds=10,
    async_numel=10_000_000, async_window_s=5.0,
    e2e_workers=[1, 2, 4], e2e_steps=300,
    control_members=[64, 256, 512], control_window_s=10.0,
)  # fmt: skip
QUICK = Sizes(
    serde_numel=1_000_000, memory_numel=1_000_000, memory_rounds=3,
    wire_numels=[1_000_000], wire_rounds=3,
    sync_numel=1_000_000, sync_shards=[2], sync_rounds=3,
    async_numel=1_000_000, async_window_s=1.5,
    e2e_workers=[1], e2e_steps=60,
    control_members=[64], control_window_s=2.0,
)  # fmt: skip

INTROS = {
    "Data plane": (
        "tidal's side runs the real services (coordinator and shards as processes, started by "
        "`tidal.launcher.LocalCluster`) and bench drivers that register as workers and drive the worker's "
        "own data-plane code (`worker/links.py`) with a fixed gradient and no computation. Each repetition "
        "runs tidal and the alternative back to back, alternating which goes first."
    ),
    "What the changes bought": (
        "The same tensor encoded to wire messages and decoded back, in one process: the generated "
        "protobuf classes (tidal's path before transport/frames.py) against the hand-framed path, "
        "interleaved; under glibc's default malloc and under the thresholds tidal's services now set."
    ),
}


def _run(s: Settings, sizes: Sizes, cases: list[str], log: Callable[[str], None]) -> dict[str, list[Row]]:
    env = bench_env(tuned_malloc=True)
    out: dict[str, list[Row]] = {"Data plane": [], "What the changes bought": [], "Memory": [], "End to end": [],
                                 "Control plane": []}  # fmt: skip
    if "serde" in cases:
        log("serde: generated protobuf vs hand-framed, default and tuned malloc")
        for name, tuned in (("default malloc", False), ("tuned malloc", True)):
            out["What the changes bought"] += serde_case.serde_costs(s, sizes.serde_numel, bench_env(tuned), name)
    if any(c in cases for c in ("memory", "wire", "sync", "async", "e2e")):
        log("starting a coordinator and 2 shards")
        with BenchCluster(s.workdir / "cluster", env, num_shards=2) as cluster:
            if "memory" in cases:  # first: the shards are still fresh
                log("memory")
                out["Memory"] += memory.shard_memory(cluster, s, sizes.memory_numel, sizes.memory_rounds)
            if "wire" in cases:
                log("wire")
                out["Data plane"] += dataplane.wire(cluster, s, sizes.wire_numels, sizes.wire_rounds)
            if "sync" in cases:
                log("sync step")
                out["Data plane"] += dataplane.sync_step(
                    cluster, s, sizes.sync_numel, sizes.sync_shards, sizes.sync_rounds
                )
            if "async" in cases:
                log("async updates/s")
                out["Data plane"] += dataplane.async_updates(cluster, s, sizes.async_numel, sizes.async_window_s)
            if "e2e" in cases:
                log("end to end")
                out["End to end"] += e2e.end_to_end(cluster, s, sizes.e2e_workers, sizes.e2e_steps)
    if "control" in cases:
        log("control plane")
        out["Control plane"] += control.control_plane(s, env, sizes.control_members, sizes.control_window_s)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (CI)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--reps", type=int, help="repetitions per case (default 5, quick 1)")
    parser.add_argument("--out", type=Path, help="where to write RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs of every process)")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    workdir = Path(tempfile.mkdtemp(prefix="tidal-bench-"))
    reps = args.reps or (1 if args.quick else 5)
    settings = Settings(quick=args.quick, reps=reps, workdir=workdir)
    out_path = args.out or (workdir / "RESULTS.md" if args.quick else REPO / "bench" / "RESULTS.md")
    started, t0, load = datetime.now(UTC), time.monotonic(), os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        sections = _run(settings, QUICK if args.quick else FULL, cases, log)
    except Exception:
        print(f"bench failed; logs of every process are in {workdir}", file=sys.stderr)
        raise
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    header = report.environment(command.strip(), started, load, time.monotonic() - t0)
    header.append(f"- **Settings**: {reps} repetition(s) per case; every process 1 torch thread; "
                  "glibc malloc thresholds raised in every process (tidal's services set them themselves, "
                  "the baselines get the same as environment variables)")  # fmt: skip
    report.write(out_path, header, [(t, rows, INTROS.get(t, "")) for t, rows in sections.items()], [])
    log(f"wrote {out_path}")
    if not args.keep and not args.quick:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
