"""`tidal ... --help` as a user reads it: no typer type labels beside flags, arguments as NAME."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("command", "argument"), [("submit", "SPEC_FILE"), ("certs", "OUT_DIR")])
def test_help_shows_plain_labels(command: str, argument: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidal", command, "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    usage = next(line for line in done.stdout.splitlines() if "Usage:" in line)
    assert usage.split()[-1] == argument, usage
    assert "<bool>" not in done.stdout and "{" not in usage, done.stdout
