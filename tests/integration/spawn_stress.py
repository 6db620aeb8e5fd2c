"""Run by test_spawn.py in a fresh interpreter: imports grpc before tidal, with gRPC's own fork
setting (the caller removes GRPC_ENABLE_FORK_SUPPORT), keeps a gRPC server and a client thread
busy, and starts many short children through tidal's launcher path (`tidal.spawn.start_child`).
Prints one JSON line: how many children there were and which did not exit 0 (a child killed
between fork and exec shows as a negative status: SIGABRT in epoll_wait, or SIGSEGV).

One busy client thread is what reproduces best: with several, gRPC usually finds another thread
inside a call and skips its fork handlers altogether (about 8% of `preexec_fn` spawns died here
with one thread, none with four)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import grpc  # first, before anything of tidal's: as a notebook or a test might
from grpc import aio

assert "tidal" not in sys.modules

from tidal.spawn import start_child  # noqa: E402

BATCH = 10


def _serve(ready: threading.Event, ports: list[int]) -> None:
    async def serve() -> None:
        server = aio.server()
        echo = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("stress.Echo", {"Echo": echo}),))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(serve())


def _call_forever(port: int, stop: threading.Event) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/stress.Echo/Echo")
        while not stop.is_set():
            echo(b"x" * 100, timeout=10)


def main(children: int) -> None:
    ready, ports, stop = threading.Event(), [], threading.Event()
    threading.Thread(target=_serve, args=(ready, ports), daemon=True).start()
    if not ready.wait(30):
        sys.exit("the gRPC server did not start")
    threading.Thread(target=_call_forever, args=(ports[0], stop), daemon=True).start()
    failed: list[dict[str, object]] = []
    batches = children // BATCH
    for _ in range(batches):
        batch = [
            start_child(["sleep", "0.05"], env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(BATCH)
        ]
        for child in batch:
            _, stderr = child.communicate(timeout=60)
            if child.returncode != 0:
                failed.append({"status": child.returncode, "stderr": stderr.decode(errors="replace")[-300:]})
    stop.set()
    print(json.dumps({"children": batches * BATCH, "failed": failed}), flush=True)
    # The server thread and its event loop are daemons; leave without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
