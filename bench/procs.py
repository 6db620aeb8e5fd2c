"""Subprocesses of the bench: one environment for both sides of every ratio, JSON results,
bounded waits, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tidal.spawn import start_child
from tidal.transport.process import MALLOC_ENV

REPO = Path(__file__).resolve().parent.parent


def bench_env(tuned_malloc: bool) -> dict[str, str]:
    """The environment of every process the bench starts, tidal's and the baselines' alike:
    one torch thread each, and glibc malloc either tuned (what tidal's services set for
    themselves) or left at its defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TIDAL_TORCH_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    )
    if tuned_malloc:
        env.update(MALLOC_ENV)
    else:
        env["TIDAL_MALLOC_TUNING"] = "0"
    return env


def module_cmd(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *(str(a) for a in args)]


class Proc:
    """A child whose stdout lines are JSON results; stderr goes to a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log = log.open("ab")
        # The child dies with the bench (tidal.spawn).
        self.process = start_child(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO
        )

    def wait_for(self, word: str, timeout_s: float) -> None:
        """Blocks until the child prints a line that is exactly `word` (a start barrier)."""
        timer = threading.Timer(timeout_s, self.process.kill)
        timer.start()
        try:
            assert self.process.stdout is not None
            for raw in self.process.stdout:
                if raw.decode(errors="replace").strip() == word:
                    return
        finally:
            timer.cancel()
        raise RuntimeError(f"{self.log.stem}: never printed {word} (exit {self.process.poll()}): {self.tail()}")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def result(self, timeout_s: float) -> dict[str, Any]:
        """The first JSON line the child prints; kills it if none comes within `timeout_s`."""
        timer = threading.Timer(timeout_s, self.process.kill)
        timer.start()
        try:
            assert self.process.stdout is not None
            for raw in self.process.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("{"):
                    return json.loads(line)
        finally:
            timer.cancel()
        raise RuntimeError(f"{self.log.stem}: no result (exit {self.process.poll()}): {self.tail()}")

    def tail(self, lines: int = 5) -> str:
        self._log.flush()
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()


@contextmanager
def procs(cmds: Sequence[list[str]], env: dict[str, str], logdir: Path, name: str) -> Iterator[list[Proc]]:
    started = [Proc(cmd, env, logdir / f"{name}-{i}.log") for i, cmd in enumerate(cmds)]
    try:
        yield started
    finally:
        for p in started:
            p.stop()


READY = "READY"


def open_window(started: Sequence[Proc], window_s: float, timeout_s: float) -> None:
    """Waits until every child printed READY, then tells them all the same measuring window
    ("START STOP" in unix seconds, starting a moment from now) on stdin."""
    for p in started:
        p.wait_for(READY, timeout_s)
    start = time.time() + 0.2
    for p in started:
        p.send(f"{start} {start + window_s}")


def read_window() -> tuple[float, float]:
    """The child's side of `open_window`."""
    print(READY, flush=True)
    start, stop = (float(x) for x in sys.stdin.readline().split())
    return start, stop


def run_all(cmds: Sequence[list[str]], env: dict[str, str], logdir: Path, name: str, timeout_s: float) -> list[dict]:
    """Runs the commands together and returns each one's JSON result (all must print one)."""
    with procs(cmds, env, logdir, name) as started:
        deadline = time.monotonic() + timeout_s
        results = [p.result(max(1.0, deadline - time.monotonic())) for p in started]
        for p in started:
            p.process.wait(max(1.0, deadline - time.monotonic()))
        return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_bytes(pid: int, field: str) -> int:
    """A size from /proc/PID/status (VmRSS, VmHWM, RssShmem, ...), in bytes; 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")
