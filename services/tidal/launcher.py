"""Runs a local tidal cluster as real subprocesses on loopback (demo, tests, benchmarks).

Every service binds port 0 and reports its real port in a ready file. Children are put in
their own session (so the terminal's Ctrl-C reaches only the launcher, which then shuts
them down in order) and get SIGKILL from the kernel if the launcher itself dies; they are
started without fork handlers, so a launcher whose gRPC threads are busy is safe
(`tidal.spawn` says why that matters).

Security: give the cluster the variables of a bundle (`tidal.security.bundle.environment`,
as `tidal demo` does) and every service runs with mutual TLS. Without any TLS variable the
launcher asks for plaintext explicitly (TIDAL_ALLOW_PLAINTEXT=1 for each child it starts):
its services bind 127.0.0.1 only, and each of them logs the loud warning. That is what the
integration tests, `tidal compare` and `tidal advise` use (docs/security.md says why).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tidal.config import SECURITY_ENV
from tidal.core.errors import DeadlineExceededError, UnavailableError
from tidal.spawn import start_child
from tidal.transport.tls import SecurityConfig

HOST = "127.0.0.1"
# Every service binds loopback and lets the kernel pick its ports; ready files report them.
EPHEMERAL = ["--host", HOST, "--port", "0", "--metrics-port", "0"]
# Any of these set means TLS (transport/tls.py: TLS_FILE_VARS).
_TLS_VARS = tuple(SECURITY_ENV[k] for k in ("tls_dir", "tls_ca", "tls_cert", "tls_key"))


def uses_tls(env: dict[str, str]) -> bool:
    return any(env.get(var) for var in _TLS_VARS)


@dataclass
class Service:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    log: IO[bytes]
    info: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    def __init__(
        self,
        workdir: Path,
        num_shards: int = 2,
        worker_slowdowns: tuple[float, ...] = (1.0, 1.0),
        heartbeat_timeout_s: float = 10.0,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 90.0,
        python_path: tuple[str, ...] = (),
        worker_env: Mapping[str, str] | None = None,
        worker_python_path: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.num_shards = num_shards
        self.worker_slowdowns = worker_slowdowns
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.start_timeout_s = start_timeout_s
        # The children's environment: this process's, plus `env` (they build their settings from it).
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if python_path:  # folders the children import from first (a user's model package)
            self.env["PYTHONPATH"] = os.pathsep.join([*python_path, *filter(None, [self.env.get("PYTHONPATH")])])
        # What the workers get on top: only workers run user code (a data source, a model), so
        # a test can give the coordinator and the shards an environment that cannot import it.
        self.worker_env = dict(worker_env or {})
        if worker_python_path:
            paths = [*worker_python_path, *filter(None, [self.env.get("PYTHONPATH")])]
            self.worker_env["PYTHONPATH"] = os.pathsep.join(paths)
        self.services: dict[str, Service] = {}
        # The address the services bind and are reached at (a subclass may run them elsewhere).
        self.host = HOST

    @property
    def coordinator_address(self) -> str:
        return self.address_of("coordinator")

    @property
    def tls(self) -> bool:
        """The cluster's services run with TLS (the environment names certificates)."""
        return uses_tls(self.env)

    def client_security(self, name: str = "admin") -> SecurityConfig:
        """How a client reaches this cluster's services: the certificate `name` of the cluster's
        TLS folder (or its TIDAL_TLS_* files) and token; plaintext, like the services, without TLS."""
        return SecurityConfig.from_env({**self.env, SECURITY_ENV["tls_name"]: name}, default_name=name)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def rest_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.services['coordinator'].info['http_port']}"

    def address_of(self, name: str) -> str:
        return f"{self.host}:{self.services[name].info['grpc_port']}"

    def metrics_url(self, name: str) -> str:
        return f"{self.scheme}://{self.host}:{self.services[name].info['metrics_port']}/metrics"

    def scrape_configs(self) -> list[dict[str, Any]]:
        """Prometheus scrape jobs for this cluster, named as in deploy/prometheus/prometheus.yml."""
        targets: dict[str, list[str]] = {}
        for name, service in self.services.items():
            role = service.info.get("role", name)
            targets.setdefault(f"tidal-{role}", []).append(f"{self.host}:{service.info['metrics_port']}")
        tls: dict[str, Any] = {}
        if self.tls and (ca := self._ca_file()):
            # /metrics is HTTPS with the service's certificate; no client certificate needed.
            tls = {"scheme": "https", "tls_config": {"ca_file": ca}}
        return [{"job_name": job, "static_configs": [{"targets": t}], **tls} for job, t in sorted(targets.items())]

    def _ca_file(self) -> str:
        if ca := self.env.get(SECURITY_ENV["tls_ca"]):
            return ca
        folder = self.env.get(SECURITY_ENV["tls_dir"])
        return str(Path(folder) / "ca.crt") if folder else ""

    def start(self) -> LocalCluster:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        timeout = str(self.heartbeat_timeout_s)
        self.spawn("coordinator", ["coordinator", *EPHEMERAL, "--http-port", "0", "--heartbeat-timeout", timeout])
        self.wait_ready(["coordinator"])
        for i in range(self.num_shards):
            self.spawn_shard(f"shard-{i}")
        for i, slowdown in enumerate(self.worker_slowdowns):
            self.spawn_worker(f"worker-{i}", slowdown)
        self.wait_ready(list(self.services))
        return self

    def spawn_shard(self, name: str) -> Service:
        return self.spawn(name, ["shard", "--coordinator", self.coordinator_address, *EPHEMERAL])

    def spawn_worker(
        self, name: str, slowdown: float = 1.0, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Service:
        """Starts a worker with the cluster's `worker_env`, then `env`, added to its environment;
        `cwd`: its working folder (where relative data paths resolve), else this process's."""
        args = ["worker", "--coordinator", self.coordinator_address, *EPHEMERAL, "--slowdown", str(slowdown)]
        return self.spawn(name, args, env={**self.worker_env, **(env or {})}, cwd=cwd)

    def spawn(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> Service:
        """Starts `tidal ARGS` in the background; `env` adds to the cluster's environment;
        `prefix` wraps the command (e.g. `ip netns exec NS` to run it in a network namespace)."""
        ready_file = self.workdir / f"{name}.ready.json"
        ready_file.unlink(missing_ok=True)
        log_path = self.workdir / "logs" / f"{name}.log"
        log = log_path.open("ab")
        cmd = [*prefix, sys.executable, "-m", "tidal", *args, "--ready-file", str(ready_file)]
        child_env = {**self.env, **(env or {})}
        if not uses_tls(child_env):
            # Explicit, on loopback only; the service logs the loud warning (module docstring).
            child_env[SECURITY_ENV["allow_plaintext"]] = "1"
        process = start_child(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, new_session=True)
        service = Service(name, args, process, ready_file, log_path, log)
        self.services[name] = service
        return service

    def wait_ready(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        for name in names:
            service = self.services[name]
            while not service.ready_file.exists():
                if not service.alive():
                    raise UnavailableError(f"{name} exited with {service.process.returncode}: {self.tail(name)}")
                if time.monotonic() > deadline:
                    raise DeadlineExceededError(
                        f"{name} not ready within {self.start_timeout_s:.0f}s: {self.tail(name)}"
                    )
                time.sleep(0.05)
            service.info = json.loads(service.ready_file.read_text())

    def tail(self, name: str, lines: int = 5) -> str:
        text = self.services[name].log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        self.services[name].process.send_signal(sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM in reverse start order (workers, shards, coordinator); SIGKILL stragglers."""
        order = [s for s in reversed(self.services.values()) if s.alive()]
        for service in order:
            service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for service in order:
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        for service in self.services.values():
            service.log.close()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
