"""A job that cannot be scheduled says what it waits for (status, `submit --wait`, the log), a
`schedule_timeout_s` fails it with that message, and Ctrl-C on `submit --wait` says the job
keeps running: a real coordinator with no members, and the real `tidal submit`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import coordinator_stub, submit, wait_for_job, wait_until
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

WAITING = "waiting for shards: 1 wanted, 0 idle of 0 registered; workers: 2 wanted, 0 idle of 0 registered"


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}, "TIDAL_ALLOW_PLAINTEXT": "1"}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ready, log_path = tmp_path / "ready.json", tmp_path / "coordinator.log"
    command = [sys.executable, "-m", "tidal", "coordinator", "--host", "127.0.0.1", "--port", "0"]
    command += ["--http-port", "0", "--metrics-port", "0", "--ready-file", str(ready)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(ready.exists, 60.0, "the coordinator's ready file")
        yield f"127.0.0.1:{json.loads(ready.read_text())['grpc_port']}", log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def _status(address: str, job_id: str) -> coord_pb.JobStatus:
    return coordinator_stub(address).GetJob(coord_pb.GetJobRequest(job_id=job_id), timeout=5).job


def test_a_pending_job_says_what_it_waits_for_and_its_timeout_fails_it(coordinator: tuple[str, Path]) -> None:
    address, log_path = coordinator
    waiting = submit(address, {"name": "wait", "num_workers": 2, "steps": 5})
    wait_until(lambda: _status(address, waiting.job_id).message == WAITING, 30.0, "the waiting reason")
    assert _status(address, waiting.job_id).state == common_pb.JOB_STATE_PENDING
    doomed = submit(address, {"name": "doomed", "num_workers": 1, "steps": 5, "schedule_timeout_s": 1})
    final = wait_for_job(address, doomed.job_id, timeout_s=60.0)
    assert final.state == common_pb.JOB_STATE_FAILED
    assert (
        final.message
        == f"not scheduled within schedule_timeout_s=1s, waiting for job {waiting.job_id}, queued first, to start"
    )
    log = log_path.read_text()
    # Logged once per change of the reason, not every tick.
    assert log.count(f"job {waiting.job_id} is pending, {WAITING}") == 1, log
    assert f"job {doomed.job_id} failed: not scheduled within schedule_timeout_s=1s" in log


def test_ctrl_c_on_submit_wait_says_the_job_keeps_running(coordinator: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = coordinator
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"name": "waits", "num_workers": 2, "steps": 5}))
    command = [sys.executable, "-m", "tidal", "submit", str(spec), "--wait", "--coordinator", address]
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    assert process.stdout is not None
    job_id = process.stdout.readline().strip()
    # --wait prints what the job waits for, whole, however narrow the terminal.
    wait_until(lambda: f"{job_id} pending: {WAITING}" in err_path.read_text(), 60.0, "the waiting reason")
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    stderr = err_path.read_text()
    assert f"stopped waiting; job {job_id} keeps running (tidal cancel {job_id} stops it)" in stderr
    assert "Traceback" not in stderr
    assert _status(address, job_id).state == common_pb.JOB_STATE_PENDING
