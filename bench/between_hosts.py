"""The between-hosts case on emulated hosts (bench/netns.py): per link rate, a TCP check of the
shaping, then tidal's sync step against gloo all_reduce and tidal's async updates against the
TensorPipe parameter server, all over the same shaped links, with the drivers and baselines the
same-host cases use, each run in its own namespace.

Placement: coordinator and shards in the server namespace, each bench driver (a worker) in its
own; gloo's two ranks in the two worker namespaces (GLOO_SOCKET_IFNAME: their link); TensorPipe's
server in the server namespace, its trainers in the worker namespaces, TCP only (--no-shm).
tidal's shards run with TIDAL_SHARED_MEMORY=off; the drivers run once with --transport grpc
(payloads inline in the gRPC messages, the interoperable default) and once with --transport bulk
(payloads on the bulk channel beside the stream, transport/bulk.py). Then a second cluster with
mutual TLS (a fresh bundle whose certificates name the server's address) measures the sync step
on the bulk channel again, float32: what TLS costs there, where a piecewise channel is two
connections, one per direction.

Time to target (`time_to_target_between_hosts`): real tidal workers, one per worker namespace,
train a model to a validation loss against DistributedDataParallel whose ranks sit in the same
namespaces, so both cross the same links.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.cluster import BenchCluster, driver_spec, mlp_of
from bench.dataplane import _gloo_round_s, _interleaved, _tensorpipe_updates, tensorpipe_label
from bench.e2e import TargetRun, time_to_target
from bench.netns import Hosts, Rate, emulated_hosts
from bench.procs import module_cmd, run_all
from bench.results import Goal, Row, Settings
from bench.stats import Spread, ratios
from tidal.launcher import HOST, LocalCluster, Service
from tidal.security.bundle import create_bundle, environment

WORKERS = 2
SHARDS = 2
_TCP_PORT = 5201  # fresh namespaces: nothing else listens there
# Issue 18's goals between hosts, the same at every link rate: a sync step within 1.2x gloo
# all_reduce (float32, with bf16 as a second row); async 1.2x the TensorPipe parameter server
# in float32 and 2x with bf16 on the wire.
SYNC_GOAL = Goal("<=", 1.2)
# How tidal's payloads travel, each measured: inline gRPC, then the bulk channel.
TRANSPORTS = {"grpc": "gRPC", "bulk": "bulk channel"}
# The sync rows measured again on a cluster with mutual TLS: (transport, codec) -> label.
TLS_SYNC_ROWS = {("bulk", "none"): "bulk channel, mutual TLS"}
ASYNC_GOALS = {"none": Goal(">=", 1.2), "bf16": Goal(">=", 2.0)}


class NetCluster(LocalCluster):
    """A LocalCluster whose coordinator and shards run in the server namespace and bind its
    address; its real workers (end-to-end jobs) run one per worker namespace, in turn."""

    def __init__(self, workdir: Path, hosts: Hosts, env: dict[str, str], num_shards: int) -> None:
        super().__init__(workdir, num_shards=num_shards, worker_slowdowns=(), env=env)
        self.hosts = hosts
        self.host = hosts.server.address

    def spawn(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> Service:
        host = self.hosts.server
        if name.startswith("worker-"):
            host = self.hosts.workers[int(name.removeprefix("worker-")) % len(self.hosts.workers)]
        args = [host.address if a == HOST else a for a in args]
        return super().spawn(name, args, env, prefix or tuple(self.hosts.run_in(host)), cwd)


def _tcp_gbit_s(hosts: Hosts, env: dict[str, str], logdir: Path, seconds: float) -> tuple[float, float]:
    """One TCP stream worker 0 -> server, then server -> worker 0: the receiver's Gbit/s."""
    rates = []
    worker, server = hosts.workers[0], hosts.server
    for sender, receiver in ((worker, server), (server, worker)):
        cmds = [
            [*hosts.run_in(receiver), *module_cmd("bench.tcp_check", "receive", "--host", receiver.address,
                                                  "--port", _TCP_PORT)],
            [*hosts.run_in(sender), *module_cmd("bench.tcp_check", "send", "--host", receiver.address,
                                                "--port", _TCP_PORT, "--seconds", seconds)],
        ]  # fmt: skip
        received, _ = run_all(cmds, env, logdir, "tcp-check", 120 + seconds)
        rates.append(received["gbit_s"])
    return rates[0], rates[1]


def _sync_rows(
    cluster: BenchCluster,
    hosts: Hosts,
    s: Settings,
    numel: int,
    rounds: int,
    where: str,
    runs: Mapping[tuple[str, str], str],
) -> list[Row]:
    """One row per (transport, codec) of `runs` (its value: the transport's label)."""
    drivers = [hosts.run_in(w) for w in hosts.workers]
    gloo_ranks = [hosts.run_in(w, {"GLOO_SOCKET_IFNAME": w.ifname}) for w in hosts.workers]
    rows = []
    for (transport, codec), label in runs.items():
        spec, exact = driver_spec(numel, "sync", WORKERS, SHARDS, codec)

        def tidal(spec=spec, codec=codec, transport=transport) -> float:
            args = ["--rounds", rounds, "--wire", codec, "--transport", transport]
            results = cluster.run_drivers(spec, [args] * WORKERS, 300, prefixes=drivers)
            return statistics.median(results[0]["round_s"] + results[1]["round_s"])

        def gloo(exact=exact) -> float:
            return _gloo_round_s(cluster.env, cluster.logdir, exact, rounds, gloo_ranks)

        t, g = _interleaved(s.reps, tidal, gloo)
        wire = "bf16 both ways" if codec == "bf16" else "float32"
        rows.append(
            Row(
                f"{where}: sync step W={WORKERS} {exact / 1e6:.1f}M params, {SHARDS} shards",
                f"communication ms per step ({wire}, {label})", Spread.of([x * 1e3 for x in t]),
                f"gloo all_reduce W={WORKERS}, float32", Spread.of([x * 1e3 for x in g]), ratios(t, g),
                SYNC_GOAL,
            )
        )  # fmt: skip
    return rows


def _async_rows(cluster: BenchCluster, hosts: Hosts, s: Settings, numel: int, window_s: float, where: str) -> list[Row]:
    drivers = [hosts.run_in(w) for w in hosts.workers]
    # Rank 0 serves; init_rpc also builds a gloo group (its barriers): both on the host's link.
    links = ({"TP_SOCKET_IFNAME": h.ifname, "GLOO_SOCKET_IFNAME": h.ifname} for h in (hosts.server, *hosts.workers))
    tp_ranks = [hosts.run_in(h, env) for h, env in zip((hosts.server, *hosts.workers), links, strict=True)]
    figures: dict[tuple[str, str], list[float]] = {(t, c): [] for t in TRANSPORTS for c in ("none", "bf16")}
    tp: list[float] = []
    for r in range(s.reps):
        for side in ("tidal", "tp") if r % 2 == 0 else ("tp", "tidal"):
            if side == "tp":
                tp.append(
                    _tensorpipe_updates(cluster.env, cluster.logdir, numel, window_s, tp_ranks, ["--no-shm"], s.quick)
                )
                continue
            for (transport, codec), figure in figures.items():
                spec, _ = driver_spec(numel, "async", WORKERS, SHARDS, codec)
                args = ["--window", "--wire", codec, "--transport", transport]
                results = cluster.run_drivers(spec, [args] * WORKERS, window_s + 180, window_s, drivers)
                figure.append(sum(x["rounds_in_window"] for x in results) / window_s)
    _, _, exact = mlp_of(numel)
    rows = []
    for (transport, codec), figure in figures.items():
        wire = "float32" if codec == "none" else "bf16 both ways: gradients up, parameters down"
        rows.append(
            Row(
                f"{where}: async {WORKERS} trainers {exact / 1e6:.1f}M params, {SHARDS} shards",
                f"updates/s ({wire}, {TRANSPORTS[transport]})", Spread.of(figure),
                tensorpipe_label(s.quick, tcp_only=True), Spread.of(tp), ratios(figure, tp), ASYNC_GOALS[codec],
            )
        )  # fmt: skip
    return rows


def between_hosts(
    s: Settings,
    env: dict[str, str],
    rate: Rate,
    numel: int,
    rounds: int,
    window_s: float,
    log: Callable[[str], None],
) -> list[Row]:
    """Every row of one link rate, on emulated hosts made for it and removed afterwards. Below
    10 Gbit/s the async window grows (3x at 1 Gbit/s): a few updates per second counted over the
    same window would leave the ratio a step of 10% or more per round."""
    env = {**env, "TIDAL_SHARED_MEMORY": "off"}
    workdir = s.workdir / f"network-{rate.text}"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    with emulated_hosts(rate, WORKERS) as hosts:
        log(f"{rate.label}: namespaces {', '.join(hosts.namespaces)}; checking the shaping")
        up, down = _tcp_gbit_s(hosts, env, workdir / "logs", 0.5 if s.quick else 2.0)
        where = f"{rate.label} link"
        check = Row(
            where, "TCP check: Gbit/s, one stream worker -> server", Spread.of([up]), "tc tbf rate",
            Spread.of([rate.bits_per_s / 1e9]), Spread.of([up / (rate.bits_per_s / 1e9)]), digits=2,
            note=f"server -> worker {down:.2f} Gbit/s",
        )  # fmt: skip
        log(f"{rate.label}: TCP {up:.2f} Gbit/s up, {down:.2f} down; starting a coordinator and {SHARDS} shards")
        local = NetCluster(workdir, hosts, env, SHARDS)
        with BenchCluster(workdir, env, SHARDS, local=local) as cluster:
            runs = {(t, c): label for t, label in TRANSPORTS.items() for c in ("none", "bf16")}
            sync = _sync_rows(cluster, hosts, s, numel, rounds, where, runs)
            window_s *= min(3.0, max(1.0, 10e9 / rate.bits_per_s))
            asynchronous = _async_rows(cluster, hosts, s, numel, window_s, where)
        log(f"{rate.label}: a coordinator and {SHARDS} shards with mutual TLS")
        pki = workdir / "pki"
        create_bundle(pki, sans=[hosts.server.address], force=True)
        tls_env = {**env, **environment(pki)}
        tls_dir = workdir / "tls"
        (tls_dir / "logs").mkdir(parents=True, exist_ok=True)
        local = NetCluster(tls_dir, hosts, tls_env, SHARDS)
        with BenchCluster(tls_dir, tls_env, SHARDS, local=local) as cluster:
            sync += _sync_rows(cluster, hosts, s, numel, rounds, where, TLS_SYNC_ROWS)
    return [check, *sync, *asynchronous]


def time_to_target_between_hosts(
    s: Settings,
    env: dict[str, str],
    rate: Rate,
    runs: list[TargetRun],
    log: Callable[[str], None],
) -> list[Row]:
    """Time to a target validation loss, tidal sync and async against DDP over gloo, on emulated
    hosts with as many worker namespaces as the largest run has workers."""
    env = {**env, "TIDAL_SHARED_MEMORY": "off"}
    workdir = s.workdir / f"network-target-{rate.text}"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    workers = max(run.workers for run in runs)
    rows = []
    with emulated_hosts(rate, workers) as hosts:
        log(f"{rate.label}: namespaces {', '.join(hosts.namespaces)}; time to target")
        ranks = [hosts.run_in(w, {"GLOO_SOCKET_IFNAME": w.ifname}) for w in hosts.workers]
        local = NetCluster(workdir, hosts, env, max(run.shards for run in runs))
        with BenchCluster(workdir, env, local.num_shards, local=local) as cluster:
            for run in runs:
                rows += time_to_target(cluster, s, run, f"{rate.label} link: ", ranks[: run.workers])
    return rows
