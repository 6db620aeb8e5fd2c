"""A real worker stops on SIGTERM even while a user factory is building its model, and a real
coordinator exits non-zero, with the traceback in its log, when its control loop crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.helpers import coordinator_stub, wait_until
from tidal.core.faults import CRASH_CONTROL_LOOP
from tidal.launcher import EPHEMERAL, LocalCluster
from tidal.spawn import start_child
from tidal.transport.limits import SHUTDOWN_GRACE_S
from tidal.v1 import coordinator_pb2 as coord_pb

pytestmark = pytest.mark.integration

# What every deployment gives the coordinator between SIGTERM and SIGKILL (the Kubernetes
# manifests and the compose file: 30 s); the coordinator's own shutdown takes SHUTDOWN_GRACE_S
# for in-flight calls plus a little more for the rest.
GRACE_S = 30.0
_SLOW_MODULE = "tidal_test_slow_models"


def test_sigterm_stops_a_worker_while_its_user_factory_builds_a_slow_model(tmp_path: Path) -> None:
    # Only workers run user code (core/layout.py); one whose factory takes an hour still stops
    # on SIGTERM within the grace every deployment gives it.
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{_SLOW_MODULE}.py").write_text(
        textwrap.dedent(
            """
            import os, pathlib, time

            def slow(input_shape, num_classes, started):
                pathlib.Path(started).write_text(str(os.getpid()))
                time.sleep(3600)  # a factory that takes an hour to build its model
            """
        )
    )
    started = tmp_path / "build-started"
    spec = {
        "model": {"name": f"{_SLOW_MODULE}:slow", "args": {"started": str(started)}},
        "dataset": {"name": "synthetic", "args": {"num_samples": 64}},
        "num_workers": 1,
    }
    env = {"PYTHONPATH": str(models)}
    with LocalCluster(tmp_path / "cluster", num_shards=1, worker_slowdowns=(1.0,), env=env) as c:
        # The coordinator takes the job without importing the module: the worker builds it.
        coordinator_stub(c.coordinator_address).SubmitJob(
            coord_pb.SubmitJobRequest(spec_json=json.dumps(spec)), timeout=GRACE_S
        )
        worker = c.services["worker-0"].process
        wait_until(lambda: started.exists() or worker.poll() is not None, 60, "the worker's build to start")
        assert started.exists(), c.tail("worker-0")
        c.kill("worker-0", signal.SIGTERM)
        try:
            code = worker.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker still runs {GRACE_S:.0f}s after SIGTERM: {c.tail('worker-0')}")
        assert code == 0, c.tail("worker-0", 20)


def test_a_crashing_control_loop_ends_the_coordinator_non_zero_with_the_traceback(tmp_path: Path) -> None:
    log_path = tmp_path / "coordinator.log"
    with log_path.open("wb") as log:
        # The real command, with the hidden test-only option (core/faults.py).
        process = start_child(
            [sys.executable, "-m", "tidal", "coordinator", *EPHEMERAL, "--http-port", "0",
             "--control-fault", CRASH_CONTROL_LOOP, "--ready-file", str(tmp_path / "ready.json")],
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TIDAL_ALLOW_PLAINTEXT": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            code = process.wait(60 + SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"the coordinator serves on after its control loop crashed: {log_path.read_text()}")
    text = log_path.read_text()
    assert code == 1, text
    assert "control loop crashed; the process stops" in text
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: fault injected (crash_control_loop)" in text
