"""Fault injection, behind one seam: the knobs tests and chaos runs may turn, and the one way a
process is made to die on purpose.

Only these reach it: the hidden `--checkpoint-fault` of `tidal shard` (a SIGKILL inside the
N-th checkpoint write), the hidden `--control-fault` of `tidal coordinator` (its control loop
raises, as a bug in it would) and a job spec's `stragglers[].kill_at_step` (a worker SIGKILLs
itself at that step). Nothing else in tidal kills its own process.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import NamedTuple

from tidal.core.errors import InvalidArgumentError

log = logging.getLogger(__name__)

# Checkpoint writes (core/checkpoint.py): die after the tensor file is written and fsynced
# under its temporary name, or once it is in place but before its manifest is written.
KILL_BEFORE_RENAME = "kill_before_rename"
KILL_BEFORE_MANIFEST = "kill_before_manifest"
CHECKPOINT_FAULTS = (KILL_BEFORE_RENAME, KILL_BEFORE_MANIFEST)
# The coordinator (coordinator/main.py): its control loop raises after a tick.
CRASH_CONTROL_LOOP = "crash_control_loop"
COORDINATOR_FAULTS = (CRASH_CONTROL_LOOP,)


class CheckpointFault(NamedTuple):
    """Die at point `kind` of this process's `nth` checkpoint write; ("", 0): never."""

    kind: str = ""
    nth: int = 0

    def fires(self, kind: str, write: int) -> bool:
        """Whether point `kind` of the `write`-th write (counting from 1) is where to die."""
        return bool(self.kind) and (self.kind, self.nth) == (kind, write)


NO_CHECKPOINT_FAULT = CheckpointFault()


def parse_checkpoint_fault(text: str) -> CheckpointFault:
    """`kind:n` (die at the n-th checkpoint write of this process); '' is no fault."""
    if not text:
        return NO_CHECKPOINT_FAULT
    kind, _, nth = text.partition(":")
    if kind not in CHECKPOINT_FAULTS or not nth.isdigit() or int(nth) < 1:
        expected = ", ".join(CHECKPOINT_FAULTS)
        raise InvalidArgumentError(f"checkpoint fault: expected one of {expected} then ':N', got {text!r}")
    return CheckpointFault(kind, int(nth))


def parse_coordinator_fault(text: str) -> str:
    """One of COORDINATOR_FAULTS, or '' for none."""
    if text not in ("", *COORDINATOR_FAULTS):
        raise InvalidArgumentError(f"coordinator fault: expected one of {', '.join(COORDINATOR_FAULTS)}, got {text!r}")
    return text


def kill_now(why: str) -> None:
    """SIGKILLs this process at once, after logging `why`: no handler, no cleanup, as a lost
    machine would die. Returns only where the kill was refused (never, for its own pid)."""
    log.error("fault injection: killing this process (SIGKILL): %s", why)
    for handler in logging.getLogger().handlers:
        handler.flush()  # the line must reach the log before the process is gone
    os.kill(os.getpid(), signal.SIGKILL)
