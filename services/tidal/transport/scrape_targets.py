"""Where a service's /metrics is, as a Prometheus file-based service discovery file.

With --scrape-target-dir, the coordinator, each shard and each worker writes
`DIR/ROLE-PORT.json` (`[{"targets": ["HOST:PORT"]}]`, file_sd's format) once it
serves, so that a Prometheus reading `DIR/ROLE-*.json` (file_sd_configs) finds every service,
however its ports were chosen: on the host network, replicas of one compose service bind free
ports (deploy/prometheus/host-network.yml).

A service on the port it was given keeps its file when it stops: it comes back on that port,
and until then Prometheus shows it down (`up == 0`), as a static target would. A service on a
free port removes its file when it stops, and deletes the files of stopped services of its role
that a crash left behind (nothing accepts connections on their port any more).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from tidal.config import ENV
from tidal.core.errors import FailedPreconditionError
from tidal.transport.metrics import PreferredPort

log = logging.getLogger(__name__)
# Connecting to a live /metrics on this host is immediate; a refusal is too.
PROBE_TIMEOUT_S = 2.0


def scrape_host(bound_host: str) -> str:
    """The address Prometheus on this host dials for a service bound to `bound_host`."""
    return "127.0.0.1" if bound_host in ("", "0.0.0.0", "::") else bound_host


def target_file(directory: Path, role: str, port: int) -> Path:
    return directory / f"{role}-{port}.json"


def _target_of(path: Path) -> tuple[str, int] | None:
    try:
        host, _, port = json.loads(path.read_text())[0]["targets"][0].rpartition(":")
        return host.strip("[]"), int(port)
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return None  # being replaced, or not ours: left alone


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # unreachable or slow is not proof that it stopped


def prune_stopped(directory: Path, role: str, keep: Path) -> list[Path]:
    """Deletes the files of `role` whose target refuses connections; returns them."""
    removed = []
    for path in sorted(directory.glob(f"{role}-*.json")):
        target = _target_of(path)
        if path == keep or target is None or _accepts(*target):
            continue
        with contextlib.suppress(FileNotFoundError):  # another service pruned it first
            path.unlink()
            removed.append(path)
    if removed:
        log.info("removed scrape targets of stopped %ss: %s", role, ", ".join(p.name for p in removed))
    return removed


def publish(directory: Path, role: str, host: str, port: int, *, fixed: bool) -> Path:
    """Writes this service's target file atomically; returns its path."""
    path = target_file(directory, role, port)
    address = scrape_host(host)
    address = f"[{address}]" if ":" in address else address
    # No labels: the scrape job (one per role) names the role, as in prometheus.yml.
    groups = [{"targets": [f"{address}:{port}"]}]
    tmp = path.with_name(f".{path.name}.tmp")  # not *.json: Prometheus never reads it half written
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(groups))
        tmp.replace(path)
    except OSError as exc:
        raise FailedPreconditionError(
            f"--scrape-target-dir / {ENV['scrape_target_dir']}: cannot write {path}: {exc.strerror or exc}"
        ) from None
    if not fixed:
        prune_stopped(directory, role, keep=path)
    return path


@dataclass(frozen=True)
class Published:
    path: Path
    # On the port it was given (not 0, not a fallback from a taken default port).
    fixed: bool


def publish_metrics(
    directory: Path | None, role: str, host: str, requested: int | PreferredPort, bound: int
) -> Published | None:
    """Publishes the /metrics a service bound (`bound`, asked for as `requested`), if it was
    given a folder (--scrape-target-dir)."""
    if directory is None:
        return None
    wanted = requested.port if isinstance(requested, PreferredPort) else requested
    fixed = wanted != 0 and wanted == bound
    return Published(publish(directory, role, host, bound, fixed=fixed), fixed)


def withdraw(published: Published | None) -> None:
    """At a graceful stop: removes the file of a service on a free port (see the module's doc)."""
    if published is not None and not published.fixed:
        published.path.unlink(missing_ok=True)
