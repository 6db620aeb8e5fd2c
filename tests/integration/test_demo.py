"""`tidal demo` as a user runs it: trains both modes, prints the table, leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers import processes_mentioning, wait_until

pytestmark = pytest.mark.integration


def test_demo_trains_sync_and_async_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "tidal", "demo", "--steps", "40", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout
    for expected in ("sync", "async", "succeeded", "val acc", "stale max"):
        assert expected in table, table
    assert not processes_mentioning(str(workdir)), "demo left processes behind"


def test_demo_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "tidal", "demo", "--steps", "100000", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Wait until the whole cluster is up (ready files) and a job is training.
        wait_until(lambda: len(list(workdir.glob("*.ready.json"))) == 6, timeout_s=90, what="cluster ready")
        time.sleep(3)
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, out.decode(errors="replace")
    assert b"interrupted" in out
    wait_until(lambda: not processes_mentioning(str(workdir)), timeout_s=10, what="all services gone")
