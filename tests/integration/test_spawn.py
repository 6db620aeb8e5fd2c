"""How tidal starts processes (tidal.spawn): no fork handlers run, and children die with their
launcher. The first test is the reproduction of services aborting inside gRPC at spawn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tidal.spawn import ORPHANED_EXIT, start_child

STRESS = Path(__file__).with_name("spawn_stress.py")


def test_children_started_while_grpc_threads_are_busy_all_reach_exec() -> None:
    # gRPC's own fork setting, in a process that imported grpc before tidal: with the old
    # `Popen(preexec_fn=...)` about 8% of these children died of SIGABRT/SIGSEGV before exec.
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    out = subprocess.run(
        [sys.executable, str(STRESS), "300"], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["children"] == 300
    assert result["failed"] == []
    # gRPC logs this from its fork handlers only: none ran.
    assert "skipping fork() handlers" not in out.stderr


def test_the_child_is_the_command_itself(tmp_path: Path) -> None:
    child = start_child(["sh", "-c", "echo $$"], env=os.environ, stdout=subprocess.PIPE)
    stdout, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert int(stdout) == child.pid  # the wrapper execs in place: signals reach the command


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in {"Z", "X"}  # a zombie waits only for its new parent to reap it


def test_a_child_dies_when_its_launcher_is_killed(tmp_path: Path) -> None:
    launcher_code = (
        "import os, subprocess, time\n"
        "from tidal.spawn import start_child\n"
        "child = start_child(['sleep', '600'], env=os.environ, new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        child_pid = int(launcher.stdout.readline())
        assert not _gone(child_pid)
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(30)
    deadline = time.monotonic() + 30
    while not _gone(child_pid):
        assert time.monotonic() < deadline, f"child {child_pid} outlived its launcher"
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux only")
def test_a_child_whose_launcher_is_already_gone_does_not_start(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    not_the_parent = 1
    out = subprocess.run(
        [sys.executable, "-m", "tidal.spawn", str(not_the_parent), "--", "touch", str(marker)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == ORPHANED_EXIT
    assert "launcher 1 is gone" in out.stderr
    assert not marker.exists()


def test_the_wrapper_refuses_a_malformed_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tidal.spawn", "not-a-pid", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0
    assert "usage: python -m tidal.spawn LAUNCHER_PID -- CMD" in out.stderr
