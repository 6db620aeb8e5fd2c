"""Blocking calls on a connected TCP socket (plain or TLS) that the standard library lacks:
read exactly a buffer's length, and wait until the peer acknowledged what was sent. The bulk
channel (transport/bulk.py) runs them in threads.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time

# How often `wait_drained` asks the kernel (a syscall; the thread sleeps in between).
_DRAIN_POLL_S = 0.0005


def unacknowledged_bytes(sock: socket.socket) -> int | None:
    """Bytes sent on the socket that its peer has not acknowledged yet, queued ones included
    (Linux's SIOCOUTQ); None where the platform cannot say."""
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", answer)[0])


def wait_drained(sock: socket.socket, below: int, timeout_s: float) -> None:
    """Blocks until the peer acknowledged all but `below` bytes of what was sent."""
    give_up = time.monotonic() + timeout_s
    while (queued := unacknowledged_bytes(sock)) is not None and queued > below:
        if time.monotonic() > give_up:
            raise TimeoutError
        time.sleep(_DRAIN_POLL_S)


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fills `view` from the socket; ConnectionError if the peer closes first."""
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionError("the peer closed the connection")
        view = view[got:]
