"""A whole tidal cluster on this machine for a script: `with local_cluster() as cluster:`.

Real processes on 127.0.0.1 (launcher.py: a coordinator, shards, workers), stopped when the
block ends. User model code: `user_modules` is the allow-list the services apply to a spec's
`model.name: "package.module:factory"` (TIDAL_MODEL_MODULES; empty: built-in models only), and
`module_dirs` go first on every service's PYTHONPATH so those packages import there.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tidal.api.sync_client import Client
from tidal.client import TidalClient
from tidal.config import SECURITY_ENV
from tidal.core.errors import InvalidArgumentError
from tidal.launcher import LocalCluster
from tidal.security.bundle import create_bundle, environment
from tidal.transport.tls import SecurityConfig

_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class Cluster:
    """A running local cluster: where it listens and how to talk to it."""

    def __init__(self, launcher: LocalCluster, security: SecurityConfig) -> None:
        self.launcher = launcher  # the processes themselves (kill one to test fault tolerance)
        self.security = security  # what a client needs: TLS files and token, or plaintext

    @property
    def address(self) -> str:
        """host:port of the coordinator's gRPC API."""
        return self.launcher.coordinator_address

    @property
    def rest_url(self) -> str:
        return self.launcher.rest_url

    @property
    def logs(self) -> Path:
        return self.launcher.workdir / "logs"

    def client(self, timeout_s: float = 30.0) -> Client:
        """A blocking client (close it, or use it in a `with`)."""
        return Client(self.address, self.security, timeout_s)

    def async_client(self, timeout_s: float = 30.0) -> TidalClient:
        """The async client; make it inside the coroutine that uses it (its channel binds the running loop)."""
        return TidalClient(self.address, security=self.security, timeout_s=timeout_s)


def _check_arguments(shards: int, workers: int, user_modules: Sequence[str], module_dirs: Sequence[str | Path]) -> None:
    if shards < 1:
        raise InvalidArgumentError(f"local_cluster.shards: must be >= 1, got {shards}")
    if workers < 0:
        raise InvalidArgumentError(f"local_cluster.workers: must be >= 0, got {workers}")
    if isinstance(user_modules, str):
        raise InvalidArgumentError("local_cluster.user_modules: a list of package names, not one string")
    for name in user_modules:
        if not _MODULE_NAME.match(name):
            raise InvalidArgumentError(f"local_cluster.user_modules: {name!r} is not a dotted module name")
    for folder in module_dirs:
        if not Path(folder).is_dir():
            raise InvalidArgumentError(f"local_cluster.module_dirs: {folder} is not a folder")


@contextmanager
def local_cluster(
    shards: int = 1,
    workers: int = 2,
    *,
    user_modules: Sequence[str] = (),
    module_dirs: Sequence[str | Path] = (),
    tls: bool = False,
    workdir: str | Path | None = None,
    start_timeout_s: float = 90.0,
) -> Iterator[Cluster]:
    """Starts 1 coordinator, `shards` shards and `workers` workers, and stops them on exit.

    Without `tls` the services talk plaintext on 127.0.0.1 only (each logs a warning); with it a
    development CA and certificates are made in `workdir/pki` and everything uses mutual TLS.
    Logs go to `workdir/logs`; `workdir` defaults to a temporary folder removed on exit.
    """
    _check_arguments(shards, workers, user_modules, module_dirs)
    with ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tidal-cluster-"))
        root = Path(workdir)
        # The allow-list always: empty means built-in models only, whatever this shell has set.
        env = {SECURITY_ENV["model_modules"]: ",".join(user_modules)}
        if tls:
            pki = root / "pki"
            create_bundle(pki, force=True)
            env |= environment(pki)
        launcher = LocalCluster(
            root,
            num_shards=shards,
            worker_slowdowns=(1.0,) * workers,
            env=env,
            start_timeout_s=start_timeout_s,
            python_path=tuple(str(Path(d).resolve()) for d in module_dirs),
        )
        stack.enter_context(launcher)
        security = SecurityConfig.from_env(environment(root / "pki", "admin")) if tls else launcher.client_security()
        yield Cluster(launcher, security)
