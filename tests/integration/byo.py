"""A cluster where only the workers can import a team's own package (tests/byo_pkg/byo_team),
as on a real cluster where only the workers' image holds the team's code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tidal.config import SECURITY_ENV
from tidal.launcher import LocalCluster

BYO_DIR = Path(__file__).resolve().parents[1] / "byo_pkg"
PACKAGE = "byo_team"
# Each worker reads its own value: a worker-local setting that can make workers disagree.
WIDTH_ENV = "BYO_TEAM_WIDTH"
WORKER_WIDTHS = (8, 12)
WORKERS = tuple(f"worker-{i}" for i in range(len(WORKER_WIDTHS)))


@contextmanager
def byo_cluster(workdir: Path) -> Iterator[LocalCluster]:
    """A coordinator and two shards that cannot import `byo_team`; two workers with it on their
    PYTHONPATH and allow-listed (TIDAL_MODEL_MODULES), each in its own working folder
    (`worker_home`) with its own WIDTH_ENV."""
    cluster = LocalCluster(
        workdir,
        num_shards=2,
        worker_slowdowns=(),
        worker_env={SECURITY_ENV["model_modules"]: PACKAGE},
        worker_python_path=(str(BYO_DIR),),
    )
    with cluster:
        for name, width in zip(WORKERS, WORKER_WIDTHS, strict=True):
            home = worker_home(cluster, name)
            home.mkdir()
            cluster.spawn_worker(name, env={WIDTH_ENV: str(width)}, cwd=home)
        cluster.wait_ready(list(WORKERS))
        yield cluster


def worker_home(cluster: LocalCluster, name: str) -> Path:
    """The working folder of worker `name`: where relative data paths resolve for it alone."""
    return cluster.workdir / f"{name}-home"


def member_id(cluster: LocalCluster, name: str) -> str:
    return str(cluster.services[name].info["member_id"])


def can_import_package(cluster: LocalCluster, name: str) -> bool:
    """Whether a Python started with service `name`'s own environment and working folder (read
    from /proc) can import `byo_team`."""
    pid = cluster.services[name].info["pid"]
    proc = Path("/proc") / str(pid)
    env = dict(entry.split("=", 1) for entry in (proc / "environ").read_text().split("\0") if "=" in entry)
    probe = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}"],
        check=False,
        env=env,
        cwd=os.readlink(proc / "cwd"),
        capture_output=True,
    )
    return probe.returncode == 0
