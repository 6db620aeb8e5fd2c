"""Starting child processes safely from a process that uses gRPC, and tying their lives to it.

Why not `subprocess.Popen(..., preexec_fn=...)`: a `preexec_fn` forces a real `fork()`, and
`fork()` runs every `pthread_atfork` handler. gRPC registers such handlers unless fork support
was switched off before grpc was first imported, which a library cannot guarantee (a notebook
or a test may import grpc first). In the child they restart gRPC's poller threads, which then
die on the descriptors the child closes before exec (`epoll_wait: Bad file descriptor`) or on
state the fork copied half-written: a few percent of spawns were killed by SIGABRT or SIGSEGV
before exec while a gRPC call was in flight. Without `preexec_fn`, CPython spawns through
vfork/posix_spawn, which run no fork handlers, so gRPC's fork setting no longer matters.

The child then arranges its own death with the launcher: `start_child` runs the command behind
`python -m tidal.spawn PID -- CMD...`, which asks the kernel for SIGKILL when its parent dies
(`PR_SET_PDEATHSIG`, kept across exec), checks that its parent is still PID (the launcher may
have died before the request took effect), and execs CMD in the same process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
# Exit status of a child whose launcher was gone before it could tie itself to it.
ORPHANED_EXIT = 125
_Stream = int | IO[bytes] | None


def start_child(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: _Stream = subprocess.DEVNULL,
    stdout: _Stream = None,
    stderr: _Stream = None,
    cwd: Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Starts CMD as a child that the kernel kills (SIGKILL) when this process dies.

    `new_session` puts it in its own session, so a terminal's Ctrl-C reaches only the launcher.
    The returned process's pid is CMD's own (the wrapper execs it)."""
    wrapped = [sys.executable, "-m", "tidal.spawn", str(os.getpid()), "--", *cmd]
    # Children run with gRPC's fork support off unless the caller says otherwise (tidal/__main__.py).
    env = {"GRPC_ENABLE_FORK_SUPPORT": "false", **env}
    return subprocess.Popen(
        wrapped,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        cwd=cwd,
        start_new_session=new_session,
    )


def _set_parent_death_signal(sig: signal.Signals) -> bool:
    """True if the kernel will send `sig` when this process's parent dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    return False


def _exec_tied_to(launcher_pid: int, cmd: Sequence[str]) -> None:
    if _set_parent_death_signal(signal.SIGKILL) and os.getppid() != launcher_pid:
        # The launcher died before the request took effect: nobody would ever stop CMD.
        print(f"tidal.spawn: launcher {launcher_pid} is gone; not starting {cmd[0]}", file=sys.stderr)
        sys.exit(ORPHANED_EXIT)
    os.execvp(cmd[0], list(cmd))


def main(argv: Sequence[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.exit("usage: python -m tidal.spawn LAUNCHER_PID -- CMD [ARG...]")
    _exec_tied_to(int(argv[0]), argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
