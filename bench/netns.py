"""Emulated hosts on one machine, for the between-hosts case: network namespaces joined by veth
pairs that tc shapes (tbf) to a link rate on both ends. Root only (namespaces, veth, tc).

Per run, with names no leftover can collide with (a random tag):

- a server namespace (coordinator, shards, the TensorPipe server) whose address sits on the
  server end of an unshaped management link to the bench's own namespace: the bench submits
  jobs and reads /metrics over it, never over the shaped links;
- one namespace per worker, joined to the server by a veth pair shaped to the rate in both
  directions; workers reach each other through the server namespace (ip_forward there), so
  gloo between workers crosses the same shaped links as the parameter traffic.

What it cannot show: propagation delay (netem is not available here, tbf only limits the rate)
and separate CPUs (every "host" shares the machine's cores, softirq included).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

# Wait on the shaper at most this long before dropping (tc-tbf's latency), as in the manual run.
_LATENCY = "20ms"
# tbf's bucket: at least 1 MiB, else 3.2 ms of the rate (4 MiB at 10 Gbit/s): smaller buckets
# fell short of the rate in the manual measurement (perf-between-hosts).
_MIN_BURST = 1 << 20
_BURST_S = 0.0032
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(gbit|mbit)$")


@dataclass(frozen=True)
class Rate:
    text: str  # as tc reads it: "10gbit"
    bits_per_s: float

    @property
    def label(self) -> str:
        gbit = self.bits_per_s / 1e9
        return f"{gbit:g} Gbit/s" if gbit >= 1 else f"{self.bits_per_s / 1e6:g} Mbit/s"

    @property
    def burst_bytes(self) -> int:
        return max(_MIN_BURST, int(self.bits_per_s / 8 * _BURST_S))


def parse_rates(text: str) -> list[Rate] | str:
    """Rates such as "10gbit,1gbit" (gbit or mbit), or the reason they are not."""
    rates = []
    for part in (p.strip().lower() for p in text.split(",")):
        match = _RATE.match(part)
        if not match or float(match.group(1)) <= 0:
            return f"{part!r} is not a link rate (e.g. 1gbit, 10gbit, 25gbit, 500mbit)"
        scale = 1e9 if match.group(2) == "gbit" else 1e6
        rates.append(Rate(part, float(match.group(1)) * scale))
    return rates or "no rate given (e.g. 10gbit,1gbit)"


@dataclass(frozen=True)
class Host:
    ns: str  # network namespace
    ifname: str  # its end of its link (the server: the management link's end)
    address: str  # its IPv4 address there


@dataclass
class Hosts:
    tag: str
    rate: Rate
    server: Host
    workers: list[Host]
    namespaces: list[str] = field(default_factory=list)
    root_link: str = ""  # the management link's end in the bench's namespace

    def run_in(self, host: Host, env: dict[str, str] | None = None) -> list[str]:
        """The command prefix that runs a program in `host`'s namespace with `env` added."""
        extra = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
        return ["ip", "netns", "exec", host.ns, *extra]


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["netns", "exec", ns] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")


def _in(ns: str, *cmd: str) -> None:
    _ip("netns", "exec", ns, *cmd)


def unavailable() -> str | None:
    """Why namespaces with shaped veth pairs cannot be made here, or None if they can (it makes
    and removes a probe namespace with one shaped pair inside)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    probe = f"tbprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
        _in(probe, "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        _in(probe, "tc", "qdisc", "replace", "dev", "p0", "root", "tbf", "rate", "1gbit", "burst", "1mb",
            "latency", _LATENCY)  # fmt: skip
    except (OSError, RuntimeError) as exc:
        return f"cannot make a network namespace with a tc-shaped veth pair: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _free_subnet() -> int:
    """A third octet N such that 10.251.N.0/24 is not used in this namespace."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=False).stdout
    free = [n for n in range(256) if f"10.251.{n}." not in used]
    if not free:
        raise RuntimeError("no free 10.251.N.0/24 subnet for the emulated hosts")
    return random.choice(free)


def _shape(ns: str, ifname: str, rate: Rate) -> None:
    _in(ns, "tc", "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", rate.text, "burst",
        str(rate.burst_bytes), "latency", _LATENCY)  # fmt: skip


def _build(hosts: Hosts, net: str) -> None:
    server, tag = hosts.server, hosts.tag
    for ns in hosts.namespaces:
        _ip("netns", "add", ns)
        _in(ns, "ip", "link", "set", "lo", "up")
    # Management link: the bench's namespace <-> the server's address (unshaped).
    _ip("link", "add", hosts.root_link, "type", "veth", "peer", "name", server.ifname, "netns", server.ns)
    _ip("addr", "add", f"{net}.2/30", "dev", hosts.root_link)
    _ip("link", "set", hosts.root_link, "up")
    _in(server.ns, "ip", "addr", "add", f"{server.address}/30", "dev", server.ifname)
    _in(server.ns, "ip", "link", "set", server.ifname, "up")
    _in(server.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for i, worker in enumerate(hosts.workers):
        near = f"{tag}s{i}"  # the server's end of worker i's link
        gateway = f"{net}.{4 * i + 5}"
        _ip("link", "add", near, "netns", server.ns, "type", "veth", "peer", "name", worker.ifname, "netns", worker.ns)
        _in(server.ns, "ip", "addr", "add", f"{gateway}/30", "dev", near)
        _in(server.ns, "ip", "link", "set", near, "up")
        _in(worker.ns, "ip", "addr", "add", f"{worker.address}/30", "dev", worker.ifname)
        _in(worker.ns, "ip", "link", "set", worker.ifname, "up")
        _in(worker.ns, "ip", "route", "add", f"{net}.0/24", "via", gateway)
        _shape(server.ns, near, hosts.rate)
        _shape(worker.ns, worker.ifname, hosts.rate)


def _teardown(hosts: Hosts) -> None:
    """Ends what still runs in the namespaces (all started by this run), then removes them and
    the management link; every step is tried even if one fails."""
    for ns in hosts.namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    # Gone with its peer already, unless the server namespace was never made.
    subprocess.run(["ip", "link", "del", hosts.root_link], capture_output=True, check=False)


@contextlib.contextmanager
def emulated_hosts(rate: Rate, workers: int = 2) -> Iterator[Hosts]:
    """A server namespace and `workers` worker namespaces on links shaped to `rate`; removed on
    exit, also when the body fails or is interrupted (Ctrl-C, or SIGTERM while it is open)."""
    tag = f"tb{secrets.token_hex(3)}"  # interface names stay under 16 characters
    net = f"10.251.{_free_subnet()}"
    hosts = Hosts(
        tag=tag,
        rate=rate,
        server=Host(f"{tag}-srv", f"{tag}m1", f"{net}.1"),
        workers=[Host(f"{tag}-w{i}", f"{tag}w{i}", f"{net}.{4 * i + 6}") for i in range(workers)],
        root_link=f"{tag}m0",
    )
    hosts.namespaces = [hosts.server.ns, *(w.ns for w in hosts.workers)]

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        _build(hosts, net)
        yield hosts
    finally:
        _teardown(hosts)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
