"""What one healthcheck costs: CPU seconds and wall time per probe, before and after tidal-probe.

Starts a real coordinator with mutual TLS (certificates from `tidal certs` in a temporary
folder), then runs each probe command N times one after another and reports, per probe, the
CPU time of the probe process (user + system, from the kernel's rusage of the child) and its
wall time, as the median and the worst of N, plus the coordinator's own CPU per probe. The
"kubelet httpGet" row is a GET /healthz made from this process: what the service pays when
Kubernetes probes it natively (no process in the container at all).

  .venv/bin/python scripts/probe_cost.py [--runs 20] [--venv .venv]

Figures from a shared machine vary: compare rows of one run, never across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# A minimal gRPC health client, for comparison: what option (a), "import grpc and the health
# stub only", would cost.
GRPC_ONLY = """
import os, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
d = os.environ["TIDAL_TLS_DIR"]
read = lambda n: open(os.path.join(d, n), "rb").read()
creds = grpc.ssl_channel_credentials(read("ca.crt"), read("admin.key"), read("admin.crt"))
with grpc.secure_channel(sys.argv[1], creds) as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
"""


def cpu_ticks(pid: int) -> float:
    """User + system CPU seconds of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(cpu s, wall s, exit status) of one run of `argv`."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, wall, proc.returncode


def native_get(port: int, context: ssl.SSLContext) -> Callable[[], int]:
    """GET /healthz from this process, as the kubelet's httpGet probe does (no certificate check)."""

    def get() -> int:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return 0 if answer.startswith(b"HTTP/1.1 200") else 1

    return get


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--venv", type=Path, default=Path(".venv"), help="venv with tidal and tidal-probe")
    args = parser.parse_args()
    if args.runs < 1:
        sys.exit("probe_cost.py: --runs: expected at least 1")
    bin_dir = args.venv.resolve() / "bin"
    with tempfile.TemporaryDirectory(prefix="tidal-probe-cost-") as tmp:
        pki, ready = Path(tmp) / "pki", Path(tmp) / "ready.json"
        subprocess.run([bin_dir / "tidal", "certs", pki], check=True, stdout=subprocess.DEVNULL)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
        env |= {"TIDAL_TLS_DIR": str(pki), "TIDAL_TLS_NAME": "coordinator", "TIDAL_LOG_LEVEL": "WARNING"}
        coordinator = subprocess.Popen(
            [bin_dir / "tidal", "coordinator", "--port", "0", "--http-port", "0", "--metrics-port", "0",
             "--ready-file", ready],
            env=env | {"TIDAL_TOKENS_FILE": str(pki / "tokens.yaml")},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not ready.exists():
                if coordinator.poll() is not None or time.monotonic() > deadline:
                    sys.exit("probe_cost.py: the coordinator did not start")
                time.sleep(0.2)
            ports = json.loads(ready.read_text())
            grpc_addr, metrics = f"127.0.0.1:{ports['grpc_port']}", str(ports["metrics_port"])
            python = str(bin_dir / "python")
            probes: dict[str, list[str]] = {
                "tidal health (before)": [str(bin_dir / "tidal"), "health", grpc_addr],
                "python + grpc health stub only": [python, "-c", GRPC_ONLY, grpc_addr],
                "tidal-probe (after)": [str(bin_dir / "tidal-probe"), "--port", metrics],
                "python -c pass (interpreter alone)": [python, "-c", "pass"],
            }
            context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            print(f"{args.runs} runs each, against a coordinator with mutual TLS; CPU = user + system")
            header = f"{'probe':38} {'CPU s median':>12} {'max':>6} {'wall s median':>13} {'max':>6}"
            print(f"{header} {'service CPU s':>13}")
            for name, argv in probes.items():
                results, before = [], cpu_ticks(coordinator.pid)
                for _ in range(args.runs):
                    cpu, wall, code = run_child(argv, env | {"TIDAL_TLS_NAME": "admin"})
                    if code != 0 and "pass" not in name:
                        sys.exit(f"probe_cost.py: {name} failed (exit {code})")
                    results.append((cpu, wall))
                served = (cpu_ticks(coordinator.pid) - before) / args.runs
                cpus, walls = [r[0] for r in results], [r[1] for r in results]
                print(
                    f"{name:38} {statistics.median(cpus):12.3f} {max(cpus):6.3f} "
                    f"{statistics.median(walls):13.3f} {max(walls):6.3f} {served:13.4f}"
                )
            get, walls, before = native_get(int(metrics), context), [], cpu_ticks(coordinator.pid)
            for _ in range(args.runs):
                start = time.perf_counter()
                if get() != 0:
                    sys.exit("probe_cost.py: GET /healthz did not answer 200")
                walls.append(time.perf_counter() - start)
            served = (cpu_ticks(coordinator.pid) - before) / args.runs
            print(f"{'kubelet httpGet (no process)':38} {0.0:12.3f} {0.0:6.3f} {statistics.median(walls):13.3f} "
                  f"{max(walls):6.3f} {served:13.4f}")  # fmt: skip
        finally:
            coordinator.send_signal(signal.SIGTERM)
            coordinator.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
