"""The README's "Using it" block as a new user runs it: on one host, with TLS as the README says,
every command as written (through bash, with `tidal` on PATH), the fixed ports included.

`tidal certs pki && export ...`, the coordinator, two shards and two workers (their default
/metrics ports must not collide), then submit --wait, status, cancel, cluster, health and the
curl. Only the placeholders are filled in (`[JOB]`, `JOB`: real job ids) and `tidal compare`,
which starts a cluster of its own and runs every mode, is left to tests/integration/test_compare.py.
A line added to the block that this test neither runs nor names fails it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Using it"
# Process start-up (torch imports) on 2 busy cores, then ~150 steps of training.
COMMAND_TIMEOUT_S = 240.0
START_TIMEOUT_S = 180.0
# The ports the block binds: gRPC, REST, and the roles' default /metrics ports.
FIXED_PORTS = (50051, 8080, 50052, 50062, 50053, 50063, 9464, 9465, 9466)
SERVICES = ("tidal coordinator", "tidal shard", "tidal worker")
NOT_RUN = {"tidal compare": "starts its own cluster and runs every mode: tests/integration/test_compare.py"}


def readme_lines() -> list[str]:
    """The block's commands, one per line: continuations joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    block = re.search(r"^```bash\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert block, f"no bash block under {SECTION!r}"
    joined = block.group(1).replace("\\\n", " ")
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def _busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


class Shell:
    """Runs README lines through bash in one folder, keeping what `export` sets."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        shim = cwd / "bin"
        shim.mkdir()
        # `tidal` as the README types it: this interpreter, this checkout (PYTHONPATH is inherited).
        (shim / "tidal").write_text(f'#!/bin/sh\nexec {sys.executable} -m tidal "$@"\n')
        (shim / "tidal").chmod(0o755)
        # A new user's shell: no TLS or plaintext settings of the machine running the tests.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
        self.env["PATH"] = f"{shim}{os.pathsep}{self.env['PATH']}"
        self.background: list[tuple[str, subprocess.Popen[bytes]]] = []

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        env_file = self.cwd / ".env-after"
        script = f"set -e\n{line}\nenv -0 > {env_file}\n"
        done = subprocess.run(
            ["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode == 0 and env_file.exists():
            self.env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        return done

    def start(self, line: str) -> subprocess.Popen[bytes]:
        log = (self.cwd / f"service-{len(self.background)}.log").open("wb")
        process = subprocess.Popen(
            ["bash", "-c", f"exec {line}"], cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.background.append((line, process))
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {line}\n{(self.cwd / f'service-{i}.log').read_text(errors='replace')[-3000:]}"
            for i, (line, _) in enumerate(self.background)
        )

    def stop(self) -> None:
        for _, process in reversed(self.background):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.background:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    busy = [port for port in FIXED_PORTS if _busy(port)]
    if busy:
        message = f"the README's fixed ports {busy} are in use on this host"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    shell = Shell(tmp_path)
    yield shell
    shell.stop()


def _cluster_ready(shell: Shell, shards: int, workers: int) -> bool:
    done = shell.run("tidal cluster")
    return done.returncode == 0 and done.stdout.count(" shard ") >= shards and done.stdout.count(" worker ") >= workers


def _ok(done: subprocess.CompletedProcess[str], line: str) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{line!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_using_it_commands_work_as_written(shell: Shell) -> None:  # one walk through the block
    lines = readme_lines()
    unhandled = [
        line
        for line in lines
        if not line.startswith(("tidal certs", "curl", *SERVICES, *NOT_RUN))
        and not line.startswith(("tidal submit", "tidal status", "tidal cancel", "tidal cluster", "tidal health"))
    ]
    assert not unhandled, f"README lines this test does not run: {unhandled}"
    assert sum(line.startswith("tidal shard") for line in lines) == 2
    assert sum(line.startswith("tidal worker") for line in lines) == 2

    job_id = ""
    for line in lines:
        if line.startswith("tidal certs"):
            _ok(shell.run(line), line)
            assert shell.env.get("TIDAL_TLS_DIR") == str(shell.cwd / "pki"), "the export did not stick"
        elif line.startswith(SERVICES):
            shell.start(line)
            if line == [x for x in lines if x.startswith(SERVICES)][-1]:
                deadline = time.monotonic() + START_TIMEOUT_S
                while not _cluster_ready(shell, shards=2, workers=2):
                    dead = [(cmd, p.returncode) for cmd, p in shell.background if p.poll() is not None]
                    assert not dead, f"services exited: {dead}\n{shell.logs()}"
                    assert time.monotonic() < deadline, f"cluster not up in {START_TIMEOUT_S}s\n{shell.logs()}"
                    time.sleep(1.0)
        elif line.startswith("tidal submit"):
            done = _ok(shell.run(line), line)
            job_id = done.stdout.split()[0]
            assert "succeeded" in done.stderr, done.stderr
        elif line.startswith("tidal status"):
            assert job_id, "status before any submit"
            one = _ok(shell.run(line.replace("[JOB]", job_id).replace("[--json]", "--json")), line)
            assert json.loads(one.stdout)[0]["state"] == "JOB_STATE_SUCCEEDED"
            every = _ok(shell.run(line.replace(" [JOB]", "").replace(" [--json]", "")), line)
            assert job_id in every.stdout
        elif line.startswith("tidal cancel"):
            # Something to cancel: a job that cannot start (more workers than there are) waits.
            spec = shell.cwd / "wide.json"
            spec.write_text(json.dumps({"name": "wide", "num_workers": 5, "steps": 10}))
            pending = _ok(shell.run(f"tidal submit {spec}"), "tidal submit wide.json").stdout.split()[0]
            status = json.loads(_ok(shell.run(f"tidal status {pending} --json"), "status").stdout)[0]
            assert status["state"] == "JOB_STATE_PENDING"
            assert re.search(r"waiting for workers: 5 wanted, \d idle of 2 registered", status.get("message", ""))
            assert _ok(shell.run(line.replace("JOB", pending)), line).stdout.strip() == "cancelled"
        elif line.startswith("tidal cluster"):
            assert _cluster_ready(shell, shards=2, workers=2)
        elif line.startswith("tidal health"):
            assert _ok(shell.run(line), line).stdout.strip() == "SERVING"
        elif line.startswith("curl"):
            done = _ok(shell.run(line), line)
            created = json.loads(done.stdout)
            assert created["job_id"], created
    dead = [(cmd, p.returncode) for cmd, p in shell.background if p.poll() is not None]
    assert not dead, f"services exited: {dead}\n{shell.logs()}"
    logs = shell.logs()
    # The second shard and worker yielded their default /metrics ports and said where they went.
    assert "/metrics is on port" in logs
    # The coordinator logged what the pending job waited for.
    assert re.search(r"job wide-\d+ is pending, waiting for workers: 5 wanted", logs), logs
