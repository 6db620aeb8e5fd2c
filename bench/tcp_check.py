"""Checks an emulated link's shaping: one TCP stream for a few seconds, its rate as the receiver
saw it (first byte to end of stream).

    python -m bench.tcp_check receive --host H --port P
    python -m bench.tcp_check send --host H --port P --seconds S

The receiver prints one JSON line, {"gbit_s": ...}; the sender retries connecting for 60 s,
so both can start together.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

_BUFFER = 4 << 20


def receive(host: str, port: int) -> dict[str, float]:
    with socket.create_server((host, port)) as server:
        server.settimeout(120)
        conn, _ = server.accept()
    buf = bytearray(_BUFFER)
    total, first = 0, 0.0
    with conn:
        while n := conn.recv_into(buf):
            if not total:
                first = time.perf_counter()
            total += n
        last = time.perf_counter()
    return {"bytes": total, "gbit_s": total * 8 / max(last - first, 1e-9) / 1e9}


def send(host: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    payload = memoryview(bytes(_BUFFER))
    with conn:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the receiver closes once it has read everything


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tcp_check")
    parser.add_argument("role", choices=["receive", "send"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if args.role == "receive":
        print(json.dumps(receive(args.host, args.port)), flush=True)
    else:
        send(args.host, args.port, args.seconds)
        print(json.dumps({"sent": True}), flush=True)


if __name__ == "__main__":
    main()
