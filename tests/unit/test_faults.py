"""Fault injection behind one seam (core/faults.py): the knobs are parsed in one place, the one
way a process kills itself is `kill_now`, and only the test-only options reach it."""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidal.cli import app
from tidal.core import faults
from tidal.core.errors import InvalidArgumentError

SERVICES = Path(faults.__file__).resolve().parents[1]  # services/tidal


def test_a_checkpoint_fault_is_a_kind_and_the_write_it_fires_at() -> None:
    assert faults.parse_checkpoint_fault("") == faults.NO_CHECKPOINT_FAULT == ("", 0)
    fault = faults.parse_checkpoint_fault("kill_before_rename:2")
    assert fault == ("kill_before_rename", 2)
    assert fault.fires(faults.KILL_BEFORE_RENAME, 2)
    assert not fault.fires(faults.KILL_BEFORE_RENAME, 1)
    assert not fault.fires(faults.KILL_BEFORE_MANIFEST, 2)
    assert not faults.NO_CHECKPOINT_FAULT.fires("", 0)


@pytest.mark.parametrize("bad", ["explode:1", "kill_before_rename", "kill_before_rename:0", "kill_before_rename:x"])
def test_a_bad_checkpoint_fault_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="checkpoint fault"):
        faults.parse_checkpoint_fault(bad)


def test_the_coordinator_fault_is_one_known_name_or_none() -> None:
    assert faults.parse_coordinator_fault("") == ""
    assert faults.parse_coordinator_fault("crash_control_loop") == faults.CRASH_CONTROL_LOOP
    with pytest.raises(InvalidArgumentError, match="coordinator fault"):
        faults.parse_coordinator_fault("nope")


def test_kill_now_sigkills_the_process_after_saying_why() -> None:
    script = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from tidal.core.faults import kill_now\n"
        "kill_now('the test asks')\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "fault injection: killing this process (SIGKILL): the test asks" in done.stderr
    assert "not reached" not in done.stdout


def _kills_itself(tree: ast.AST) -> bool:
    """Whether the module calls os.kill (a process sending a signal to itself or a pid)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "kill":
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "os":
                return True
    return False


def test_only_the_fault_seam_kills_its_own_process() -> None:
    killers = sorted(
        str(path.relative_to(SERVICES))
        for path in SERVICES.rglob("*.py")
        if _kills_itself(ast.parse(path.read_text(), str(path)))
    )
    assert killers == ["core/faults.py"]


def _text(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_the_coordinators_control_fault_is_a_hidden_option_checked_before_start() -> None:
    runner = CliRunner()
    refused = runner.invoke(app, ["coordinator", "--control-fault", "nope", "--allow-plaintext"])
    assert refused.exit_code == 2, refused.output
    assert "coordinator fault: expected one of crash_control_loop, got 'nope'" in _text(refused.output)
    shown = runner.invoke(app, ["coordinator", "--help"])
    assert shown.exit_code == 0 and "--control-fault" not in shown.output
