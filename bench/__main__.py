"""`python -m bench [--quick] [--cases ...] [--network RATES] [--reps N] [--out PATH] [--max-load L]
[--max-steal PCT] [--settle-s S] [--allow-busy]`: runs the suite, writes RESULTS.md (bench/RESULTS.md
for a full run; a temporary folder for --quick unless --out).

Full run: about 18 minutes of measuring on 2 idle cores (7 of them the network case, as root),
plus about 4 for the embeddings case (estimated from one repetition on a loaded machine), plus
the network case's time to target between hosts (14 minutes on this machine, measured quiet),
plus the waits for the load to settle before each case (up to --settle-s each). It refuses to
start on a busy machine (exit 3, one line naming the load and the flag, RESULTS.md unchanged) and
refuses a case whose machine stayed busy; --allow-busy measures anyway and marks those figures
busy in RESULTS.md.

--quick: small sizes, one repetition, about 3 minutes (the embeddings case 30-45 s of it); it
proves every case works end to end (what CI runs), its figures mean little, so it records the
load and marks busy cases but never refuses or waits (CI machines are shared).

The `network` case (emulated hosts: network namespaces, veth pairs shaped by tc; bench/netns.py)
needs root. Where namespaces cannot be made it is skipped with the reason printed, unless it was
asked for by name (--cases network or --network), which then fails in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from bench import between_hosts, control, dataplane, e2e, embeddings, machine_load, memory, netns, report, serde_case
from bench.cluster import BenchCluster
from bench.machine_load import Guard, Policy
from bench.procs import REPO, bench_env
from bench.results import Row, Settings
from bench.stats import Spread

# Hand-written analysis appended to RESULTS.md: what each change bought, what stands in the way.
NOTES = Path(__file__).with_name("NOTES.md")
CASES = ["serde", "memory", "wire", "sync", "async", "e2e", "target", "control", "embeddings", "network"]
# Link rates of the network case: the goals' (full run), one small one (quick).
NETWORK_RATES = {False: "10gbit,1gbit", True: "1gbit"}
NETWORK = "Between hosts (emulated)"
EMBEDDINGS = "Embedding tables"
# Exit status when the machine was busy: the run refused to start, refused a case, or a case's
# CPU steal went over the limit while it ran (its figures are kept, marked busy).
BUSY_EXIT = 3


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
    # Time to target between emulated hosts, at the network case's first link rate.
    network_targets: list[e2e.TargetRun]
    embeddings: embeddings.EmbeddingSizes


FULL = Sizes(
    serde_numel=10_000_000, memory_numel=25_000_000, memory_rounds=10,
    wire_numels=[10_000_000, 25_000_000], wire_rounds=8,
    sync_numel=10_000_000, sync_shards=[1, 2], sync_rounds=8,
    async_numel=10_000_000, async_window_s=4.0,
    e2e_workers=[1, 2, 4], e2e_steps=200,
    control_members=[64, 256, 512], control_window_s=8.0,
    network_targets=[e2e.wide_run(2), e2e.wide_run(4)],
    embeddings=embeddings.EmbeddingSizes(
        traffic_rows=[10**4, 10**5, 10**6, 10**7], traffic_steps=30, speed_rows=10**6, hybrid_steps=300,
        dense_steps=40, accuracy_steps=None, speed_over_grpc=True,
    ),
)  # fmt: skip
QUICK = Sizes(
    serde_numel=1_000_000, memory_numel=1_000_000, memory_rounds=3,
    wire_numels=[1_000_000], wire_rounds=3,
    sync_numel=1_000_000, sync_shards=[2], sync_rounds=3,
    async_numel=1_000_000, async_window_s=1.5,
    e2e_workers=[1], e2e_steps=60,
    control_members=[64], control_window_s=2.0,
    network_targets=[e2e.TargetRun(workers=2, shards=2)],
    embeddings=embeddings.EmbeddingSizes(
        traffic_rows=[10**4, 10**5], traffic_steps=8, speed_rows=10**5, hybrid_steps=40, dense_steps=8,
        accuracy_steps=40,
    ),
)  # fmt: skip

INTROS = {
    "Data plane": (
        "tidal's side runs the real services (coordinator and shards as processes, started by "
        "`tidal.launcher.LocalCluster`) and bench drivers that register as workers and drive the worker's "
        "own data-plane code (`worker/links.py`) with a fixed gradient and no computation, their tensors either "
        "inline in the gRPC messages (as between hosts) or through shared memory (one host, tidal's default "
        "there; transport/shm.py). Each repetition runs tidal and the alternative back to back, alternating "
        "which goes first."
    ),
    NETWORK: (
        "Emulated hosts on this one machine (bench/netns.py): the coordinator and the shards in one network "
        "namespace, each worker (bench driver, gloo rank, TensorPipe trainer) in its own, joined to it by a veth "
        "pair shaped by tc tbf to the link rate in both directions; workers reach each other through the server's "
        "namespace, so gloo crosses the same links. TCP only on both sides: tidal's shared memory off, "
        "TensorPipe without its shm transport and cma channel. What this cannot show: propagation delay (netem "
        "is not available here, tbf only limits the rate; a real network adds round-trip time to every "
        "exchange) and separate machines (every emulated host shares the same CPUs, and the kernel's softirq "
        "work for the links competes with them, so CPU-bound figures are pessimistic for every side). The server "
        "namespace has one link per worker: the coordinator and shards together get a link per worker, as "
        "shard hosts with their own NICs would."
    ),
    "What the changes bought": (
        "The same tensor encoded to wire messages and decoded back, in one process: the generated "
        "protobuf classes (tidal's path before transport/frames.py) against the hand-framed path, "
        "interleaved; under glibc's default malloc and under the thresholds tidal's services now set."
    ),
}


class Suite:
    """Runs the cases in order, rewriting RESULTS.md after each (a long run that is cut short
    keeps what it measured). A failing case is recorded as a row, and the run exits non-zero."""

    def __init__(
        self, s: Settings, sizes: Sizes, out_path: Path, header: Callable[[], list[str]], guard: Guard
    ) -> None:
        self.s, self.sizes, self.out_path, self.header, self.guard = s, sizes, out_path, header, guard
        self.sections: dict[str, list[Row]] = {
            "Data plane": [], "What the changes bought": [], "Memory": [], "End to end": [], "Control plane": [],
            EMBEDDINGS: [],
            NETWORK: [],
        }  # fmt: skip
        self.failed: list[str] = []
        self.busy: list[str] = []  # measured on a busy machine, figures marked
        self.refused: list[str] = []

    def case(self, section: str, name: str, log: Callable[[str], None], measure: Callable[[], list[Row]]) -> None:
        log(name)
        check = self.guard.check(log)
        if check.reasons and not self.guard.policy.allow_busy:
            log(machine_load.refusal(f"case '{name}'", check))
            self.refused.append(name)
            note = "; ".join(check.reasons)
            self.sections[section].append(Row(name, "refused: the machine was busy", Spread.of([]), note=note))
            self.write()
            return
        try:
            rows = measure()
        except Exception as exc:  # recorded in RESULTS.md and in the exit code, never hidden
            logging.getLogger(__name__).exception("bench case %s failed", name)
            log(f"{name} FAILED: {exc}")
            self.failed.append(name)
            rows = [Row(name, "FAILED", Spread.of([]), note=f"{type(exc).__name__}: {exc}"[:400])]
        load = self.guard.case_load(check)
        for row in rows:
            row.machine = load
        if load.busy:
            log(f"{name}: busy, figures marked: {'; '.join(load.reasons)}")
            self.busy.append(f"{name} ({'; '.join(load.reasons)})")
        self.sections[section] += rows
        self.write()

    def write(self) -> None:
        sections = [(t, rows, INTROS.get(t, "")) for t, rows in self.sections.items()]
        report.write(self.out_path, self.header(), sections, NOTES.read_text().splitlines() if NOTES.exists() else [])


def _run(suite: Suite, cases: list[str], log: Callable[[str], None]) -> None:
    s, z = suite.s, suite.sizes
    env = bench_env(tuned_malloc=True)
    if "serde" in cases:
        for name, tuned in (("default malloc", False), ("tuned malloc", True)):
            measure = partial(serde_case.serde_costs, s, z.serde_numel, bench_env(tuned), name)
            suite.case("What the changes bought", f"serde, {name}", log, measure)
    if "memory" in cases:  # fresh shards of its own: a process's peak resident set is for life
        measure = partial(memory.shard_memory, s, env, z.memory_numel, z.memory_rounds)
        suite.case("Memory", "shard memory", log, measure)
    if any(c in cases for c in ("wire", "sync", "async", "e2e", "target")):
        log("starting a coordinator and 2 shards")
        with BenchCluster(s.workdir / "cluster", env, num_shards=2) as cluster:
            if "wire" in cases:
                measure = partial(dataplane.wire, cluster, s, z.wire_numels, z.wire_rounds)
                suite.case("Data plane", "wire", log, measure)
            if "sync" in cases:
                measure = partial(dataplane.sync_step, cluster, s, z.sync_numel, z.sync_shards, z.sync_rounds)
                suite.case("Data plane", "sync step", log, measure)
            if "async" in cases:
                measure = partial(dataplane.async_updates, cluster, s, z.async_numel, z.async_window_s)
                suite.case("Data plane", "async updates/s", log, measure)
            if "e2e" in cases:
                measure = partial(e2e.end_to_end, cluster, s, z.e2e_workers, z.e2e_steps)
                suite.case("End to end", "end to end", log, measure)
            if "target" in cases:
                measure = partial(e2e.time_to_target, cluster, s)
                suite.case("End to end", "time to target loss", log, measure)
    if "control" in cases:
        measure = partial(control.control_plane, s, env, z.control_members, z.control_window_s, log)
        suite.case("Control plane", "control plane", log, measure)
    if "embeddings" in cases:  # a cluster of its own, with real workers
        measure = partial(embeddings.embeddings, s, env, z.embeddings, log)
        suite.case(EMBEDDINGS, "embeddings", log, measure)


def _run_network(suite: Suite, rates: list[netns.Rate], log: Callable[[str], None]) -> None:
    s, z, env = suite.s, suite.sizes, bench_env(tuned_malloc=True)
    for rate in rates:
        measure = partial(between_hosts.between_hosts, s, env, rate, z.sync_numel, z.sync_rounds, z.async_window_s, log)
        suite.case(NETWORK, f"network {rate.label}", log, measure)
    if rates:
        rate = rates[0]
        measure = partial(between_hosts.time_to_target_between_hosts, s, env, rate, z.network_targets, log)
        suite.case(NETWORK, f"network {rate.label}: time to target", log, measure)


def _network_rates(args: argparse.Namespace, cases: list[str], argv: list[str]) -> list[netns.Rate] | str:
    """The network case's link rates; none where namespaces cannot be made and the case was not
    asked for by name (the reason printed); the one line that says why, where it was."""
    rates = netns.parse_rates(args.network or NETWORK_RATES[args.quick])
    if isinstance(rates, str):
        return f"--network: {rates}"
    if "network" not in cases:
        return []
    if reason := netns.unavailable():
        if args.network or any(a.startswith("--cases") for a in argv):
            return f"the network case (--network / --cases network): {reason}"
        print(f"python -m bench: skipping the network case: {reason}", file=sys.stderr)
        return []
    return rates


def _policy(args: argparse.Namespace) -> Policy | str:
    """The quiet-machine policy from the flags, or the one line that says which flag is wrong."""
    cpus = os.cpu_count() or 1
    max_load = args.max_load if args.max_load is not None else 0.5 * cpus
    settle_s = args.settle_s if args.settle_s is not None else (0.0 if args.quick else 240.0)
    if not max_load >= 0:  # also refuses NaN
        return f"--max-load: {args.max_load} is not a load average (a number >= 0, e.g. {0.5 * cpus:g})"
    if not 0 <= args.max_steal <= 100:
        return f"--max-steal: {args.max_steal} is not a percentage between 0 and 100"
    if not settle_s >= 0:
        return f"--settle-s: {args.settle_s} is not a number of seconds >= 0"
    # --quick proves the cases work on shared CI machines: it records and marks, never refuses.
    return Policy(max_load, args.max_steal / 100, args.allow_busy or args.quick, settle_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (CI); never refuses")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument(
        "--network", help="link rates of the network case, e.g. 10gbit,1gbit,25gbit (default 10gbit,1gbit; quick 1gbit)"
    )
    parser.add_argument("--reps", type=int, help="repetitions per case (default 3, quick 1)")
    parser.add_argument("--out", type=Path, help="where to write RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs of every process)")
    parser.add_argument(
        "--max-load", type=float, help="1-min load average at which a case counts as busy (default: half the CPUs)"
    )
    parser.add_argument(
        "--max-steal", type=float, default=5.0, help="%% of CPU time stolen above which a case counts as busy (5)"
    )
    parser.add_argument(
        "--settle-s", type=float, help="seconds to wait before a case for a busy machine to settle (240, quick 0)"
    )
    parser.add_argument(
        "--allow-busy", action="store_true", help="measure on a busy machine anyway, figures marked busy"
    )
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    policy = _policy(args)
    if isinstance(policy, str):
        print(f"python -m bench: {policy}", file=sys.stderr)
        return 2
    rates = _network_rates(args, cases, argv if argv is not None else sys.argv[1:])
    if isinstance(rates, str):
        print(f"python -m bench: {rates}", file=sys.stderr)
        return 2
    started, t0 = datetime.now(UTC), time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    guard = Guard(policy)
    if not policy.allow_busy:  # before anything is written: a busy machine leaves RESULTS.md as it was
        check = guard.check(log)
        if check.reasons:
            print(machine_load.refusal("the run", check), file=sys.stderr)
            return BUSY_EXIT
    load = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="tidal-bench-"))
    reps = args.reps or (1 if args.quick else 3)
    settings = Settings(quick=args.quick, reps=reps, workdir=workdir)
    out_path = args.out or (workdir / "RESULTS.md" if args.quick else REPO / "bench" / "RESULTS.md")
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])

    def header() -> list[str]:
        return [
            *report.environment(command.strip(), started, load, time.monotonic() - t0),
            *report.policy_lines(policy, args.quick, suite.busy, suite.refused),
            f"- **Settings**: {reps} repetition(s) per case; every process 1 torch thread; glibc malloc "
            "thresholds raised in every process (tidal's services set them themselves, the baselines get the "
            "same as environment variables)",
        ]

    suite = Suite(settings, QUICK if args.quick else FULL, out_path, header, guard)
    _run(suite, cases, log)
    _run_network(suite, rates, log)
    log(f"wrote {out_path}")
    if suite.failed:
        print(f"bench: {', '.join(suite.failed)} failed; logs of every process are in {workdir}", file=sys.stderr)
        return 1
    if not args.keep and workdir not in out_path.parents:
        shutil.rmtree(workdir, ignore_errors=True)
    if suite.refused or (suite.busy and not policy.allow_busy):
        what = "; ".join(suite.refused + suite.busy)
        print(
            f"bench: the machine was busy for {what} (see {out_path}); re-run on a quiet machine, "
            "or pass --allow-busy to keep busy figures",
            file=sys.stderr,
        )
        return BUSY_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
