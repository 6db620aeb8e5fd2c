"""The data-plane cases: wire, sync step communication, async updates/s.

Every case runs tidal and its alternative back to back in each repetition (A B, then B A,
...) on the same machine, in the same environment, and reports per-repetition figures.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.cluster import BenchCluster, driver_spec, mlp_of
from bench.procs import Proc, module_cmd, open_window, procs, run_all
from bench.results import Goal, Row, Settings
from bench.stats import Spread, ratios
from tidal.transport.limits import CHUNK_BYTES

MB = 1e6
# Issue 18's goals on one host: through shared memory a sync step within 1.2x gloo, async 1.5x
# the TensorPipe parameter server in float32 and 2x with bf16. Over gRPC on loopback (no
# goal in the issue) the project's earlier ones stay: 1.5x gloo, 1x and 1.8x TensorPipe.
SYNC_GOALS = {"shared_memory": Goal("<=", 1.2), "grpc": Goal("<=", 1.5)}
ASYNC_GOALS = {
    ("shared_memory", "none"): Goal(">=", 1.5),
    ("shared_memory", "bf16"): Goal(">=", 2.0),
    ("grpc", "none"): Goal(">=", 1.0),
    ("grpc", "bf16"): Goal(">=", 1.8),
}


# Message sizes the bare gRPC stream tries (the wire case's ceiling): tidal's own and larger.
# On this project's 2-CPU machine 2 and 4 MiB beat 1 MiB by about a fifth (bench/NOTES.md item 18).
BARE_CHUNK_BYTES = sorted({1 << 20, 2 << 20, 4 << 20, CHUNK_BYTES})

# TensorPipe's worker threads, each tried: its default, and one per core.
TP_THREADS = sorted({16, max(2, os.cpu_count() or 2)})


def tp_threads(quick: bool) -> list[int]:
    """The counts tried: --quick (a smoke run, no figure to keep) tries one per core alone."""
    return [max(2, os.cpu_count() or 2)] if quick else TP_THREADS


def tensorpipe_label(quick: bool, tcp_only: bool = False) -> str:
    """How the rows name the TensorPipe parameter server, with the thread counts tried."""
    counts = tp_threads(quick)
    how = f"best of {' and '.join(map(str, counts))} threads" if len(counts) > 1 else f"{counts[0]} threads"
    return (
        f"TensorPipe PS, float32, TCP only, {how}"
        if tcp_only
        else f"torch.distributed.rpc (TensorPipe) PS, float32, {how}"
    )


def _interleaved(reps: int, a, b) -> tuple[list, list]:
    """Runs a and b `reps` times each as A B B A A B ..., so drift hits both alike."""
    xs, ys = [], []
    for r in range(reps):
        if r % 2 == 0:
            xs.append(a())
            ys.append(b())
        else:
            ys.append(b())
            xs.append(a())
    return xs, ys


def bare_chunk_sizes(quick: bool) -> list[int]:
    """The message sizes the bare stream tries: its best is the ceiling, not the size tidal
    happens to use (--quick, a smoke run, tries tidal's alone)."""
    return [CHUNK_BYTES] if quick else BARE_CHUNK_BYTES


def bare_label(quick: bool) -> str:
    """How the rows name the bare stream, with the message sizes tried."""
    sizes = [f"{c >> 20}" for c in bare_chunk_sizes(quick)]
    how = f"best of {', '.join(sizes[:-1])} and {sizes[-1]} MiB" if len(sizes) > 1 else f"{sizes[0]} MiB"
    return f"bare grpc.aio bytes stream, {how} messages"


def _bare_round_s(
    env: dict[str, str], logdir: Path, total_bytes: int, rounds: int, chunk_sizes: Sequence[int]
) -> tuple[float, int]:
    """The bare stream's median round at its fastest message size of `chunk_sizes`, and that size."""
    ready = logdir / f"bare-{uuid.uuid4().hex[:8]}.json"
    server = Proc(module_cmd("bench.bare_grpc", "server", "--ready-file", ready), env, logdir / "bare-server.log")
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bare gRPC server did not start: {server.tail()}")
            time.sleep(0.05)
        port = json.loads(ready.read_text())["port"]
        medians: list[tuple[float, int]] = []
        for chunk in chunk_sizes:
            cmd = module_cmd(
                "bench.bare_grpc", "client", "--address", f"127.0.0.1:{port}", "--bytes", total_bytes,
                "--rounds", rounds, "--chunk-bytes", chunk,
            )  # fmt: skip
            (result,) = run_all([cmd], env, logdir, "bare-client", 300)
            medians.append((statistics.median(result["round_s"]), chunk))
        return min(medians)
    finally:
        server.stop()
        ready.unlink(missing_ok=True)


def wire(cluster: BenchCluster, s: Settings, sizes: list[int], rounds: int) -> list[Row]:
    """tidal pull+push (one worker, one shard, async: push, ack, parameters back) vs a bare
    gRPC bytes stream moving the same bytes both ways."""
    rows = []
    for numel in sizes:
        spec, exact = driver_spec(numel, "async", 1, 1)
        nbytes = 4 * exact
        applies: list[float] = []
        shm_round: list[float] = []
        bare_sizes: list[int] = []  # the bare stream's fastest message size, per repetition

        def tidal(spec=spec, applies=applies, shm_round=shm_round) -> float:
            (res,) = cluster.run_drivers(spec, [["--rounds", rounds]], 300)
            applies.append(cluster.last_apply.mean_s)
            # The same rounds through shared memory, for the record (the goal is the wire's).
            (shared,) = cluster.run_drivers(spec, [["--rounds", rounds, "--transport", "shared_memory"]], 300)
            shm_round.append(statistics.median(shared["round_s"]))
            return statistics.median(res["round_s"])

        def bare(nbytes=nbytes, bare_sizes=bare_sizes) -> float:
            round_s, size = _bare_round_s(cluster.env, cluster.logdir, nbytes, rounds, bare_chunk_sizes(s.quick))
            bare_sizes.append(size)
            return round_s

        t_round, b_round = _interleaved(s.reps, tidal, bare)
        t_rate = [2 * nbytes / t / MB for t in t_round]
        b_rate = [2 * nbytes / t / MB for t in b_round]
        wire_only = [2 * nbytes / max(t - a, 1e-9) / MB for t, a in zip(t_round, applies, strict=True)]
        label = f"wire {exact / 1e6:.1f}M params"
        rows.append(
            Row(
                label, "pull+push MB/s (both directions)", Spread.of(t_rate), bare_label(s.quick),
                Spread.of(b_rate), ratios(t_rate, b_rate), Goal(">=", 0.8),
                note=f"round {Spread.of(t_round).fmt(1, 1e3)} ms vs {Spread.of(b_round).fmt(1, 1e3)} ms; "
                f"includes the shard's SGD step ({Spread.of(applies).fmt(1, 1e3)} ms); the bare stream's "
                f"fastest message size per repetition: {', '.join(f'{b >> 20}' for b in bare_sizes)} MiB",
            )
        )  # fmt: skip
        rows.append(
            Row(
                label, "same, shard's SGD step excluded", Spread.of(wire_only), bare_label(s.quick),
                Spread.of(b_rate), ratios(wire_only, b_rate), Goal(">=", 0.8),
            )
        )  # fmt: skip
        shm_rate = [2 * nbytes / t / MB for t in shm_round]
        rows.append(
            Row(
                label, "same host, tensors through shared memory: MB/s", Spread.of(shm_rate),
                bare_label(s.quick), Spread.of(b_rate), ratios(shm_rate, b_rate),
                note=f"not the wire: no goal; round {Spread.of(shm_round).fmt(1, 1e3)} ms",
            )
        )  # fmt: skip
    return rows


def _gloo_round_s(
    env: dict[str, str], logdir: Path, numel: int, rounds: int, prefixes: Sequence[list[str]] = ([], [])
) -> float:
    """`prefixes`: what each rank's command runs behind (e.g. `ip netns exec` on emulated hosts)."""
    init = logdir / f"gloo-{uuid.uuid4().hex[:8]}"
    cmds = [
        [*prefixes[r], *module_cmd("bench.gloo_allreduce", "--rank", r, "--world-size", 2, "--init-file", init,
                                   "--numel", numel, "--rounds", rounds)]
        for r in range(2)
    ]  # fmt: skip
    try:
        results = run_all(cmds, env, logdir, "gloo", 300)
    finally:
        init.unlink(missing_ok=True)
    return statistics.median(results[0]["round_s"] + results[1]["round_s"])


def sync_step(cluster: BenchCluster, s: Settings, numel: int, shard_counts: list[int], rounds: int) -> list[Row]:
    """tidal sync, 2 workers: push until the next parameters arrived, per step, vs gloo
    all_reduce (+ the average) of the same gradient between 2 processes."""
    rows = []
    variants = [("shared_memory", "none"), ("grpc", "none"), *([] if s.quick else [("grpc", "bf16")])]
    for shards in shard_counts:
        for transport, codec in variants:
            spec, exact = driver_spec(numel, "sync", 2, shards, codec)

            def tidal(spec=spec, codec=codec, transport=transport) -> float:
                args = ["--rounds", rounds, "--wire", codec, "--transport", transport]
                results = cluster.run_drivers(spec, [args] * 2, 300)
                return statistics.median(results[0]["round_s"] + results[1]["round_s"])

            def gloo(exact=exact) -> float:
                return _gloo_round_s(cluster.env, cluster.logdir, exact, rounds)

            t, g = _interleaved(s.reps, tidal, gloo)
            wire = " (bf16 both ways" if codec == "bf16" else " (float32"
            wire += ", shared memory)" if transport == "shared_memory" else ", gRPC)"
            rows.append(
                Row(
                    f"sync step W=2 {exact / 1e6:.1f}M params, {shards} shard{'s' * (shards > 1)}",
                    "communication ms per step" + wire, Spread.of([x * 1e3 for x in t]), "gloo all_reduce W=2",
                    Spread.of([x * 1e3 for x in g]), ratios(t, g), SYNC_GOALS[transport],
                )
            )  # fmt: skip
    return rows


def _tensorpipe_updates(
    env: dict[str, str],
    logdir: Path,
    numel: int,
    window_s: float,
    prefixes: Sequence[list[str]] = ([], [], []),
    extra: Sequence[str] = (),
    quick: bool = False,
) -> float:
    """The TensorPipe parameter server's updates/s at its best: the better of its default
    worker threads and one per core, each measured (on 2 cores, 2 threads made it up to 1.6x
    faster than its default 16; bench/NOTES.md). `prefixes`: what each rank's command runs
    behind (rank 0 serves); `extra`: more arguments."""
    runs = (
        _tensorpipe_run(env, logdir, numel, window_s, prefixes, [*extra, "--threads", t]) for t in tp_threads(quick)
    )
    return max(runs)


def _tensorpipe_run(
    env: dict[str, str],
    logdir: Path,
    numel: int,
    window_s: float,
    prefixes: Sequence[list[str]],
    extra: Sequence[str | int],
) -> float:
    init = logdir / f"tp-{uuid.uuid4().hex[:8]}"
    cmds = [
        [*prefixes[r], *module_cmd("bench.tensorpipe_ps", "--rank", r, "--world-size", 3, "--init-file", init,
                                   "--numel", numel, *extra)]
        for r in range(3)
    ]  # fmt: skip
    try:
        with procs(cmds, env, logdir, "tensorpipe") as started:
            trainers = started[1:]
            open_window(trainers, window_s, 180)
            results = [p.result(window_s + 120) for p in trainers]
            for p in started:
                p.process.wait(60)
    finally:
        init.unlink(missing_ok=True)
    return sum(r["rounds_in_window"] for r in results) / window_s


def async_updates(cluster: BenchCluster, s: Settings, numel: int, window_s: float) -> list[Row]:
    """Updates applied per second with 2 trainers: tidal async (1 shard) vs the TensorPipe
    parameter server; tidal with float32 and with bf16 gradients on the wire. Every side's
    trainers start together, once all are warm (bench.procs.open_window)."""
    variants = [(t, c) for t in ("shared_memory", "grpc") for c in ("none", *([] if s.quick else ["bf16"]))]
    figures: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    tp: list[float] = []
    for r in range(s.reps):
        for side in ("tidal", "tp") if r % 2 == 0 else ("tp", "tidal"):
            if side == "tp":
                tp.append(_tensorpipe_updates(cluster.env, cluster.logdir, numel, window_s, quick=s.quick))
                continue
            for transport, codec in variants:
                spec, _ = driver_spec(numel, "async", 2, 1, codec)
                args = ["--window", "--wire", codec, "--transport", transport]
                results = cluster.run_drivers(spec, [args, args], window_s + 180, window_s=window_s)
                figures[transport, codec].append(sum(x["rounds_in_window"] for x in results) / window_s)
    _, _, exact = mlp_of(numel)
    rows = []
    for (transport, codec), figure in figures.items():
        wire = "float32" if codec == "none" else "bf16 both ways: gradients up, parameters down"
        wire += ", shared memory" if transport == "shared_memory" else ", gRPC"
        rows.append(
            Row(
                f"async 2 trainers {exact / 1e6:.1f}M params, 1 shard", f"updates/s ({wire})",
                Spread.of(figure), tensorpipe_label(s.quick), Spread.of(tp),
                ratios(figure, tp), ASYNC_GOALS[transport, codec],
            )
        )  # fmt: skip
    return rows
