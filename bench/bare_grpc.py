"""The ceiling tidal's wire is compared with: a bare grpc.aio bidi stream of raw bytes.

No protobuf, no framing, no copies: the server and client send one preallocated `bytes`
object per chunk (`--chunk-bytes`, default tidal's message size). A round is what a tidal
push+pull moves: the client streams `--bytes` up in chunks and an empty end marker, the
server answers with the same number of bytes down, in chunks of the size that came up, and
an end marker.

    python -m bench.bare_grpc server --ready-file F
    python -m bench.bare_grpc client --address A --bytes B --rounds N [--chunk-bytes C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from tidal.transport.limits import CHUNK_BYTES
from tidal.transport.server import CHANNEL_OPTIONS, SERVER_OPTIONS

METHOD = "/bench.Bare/Exchange"
END = b""


def _chunks(total: int, chunk: bytes) -> list[bytes]:
    if total == 0:
        return []
    full, rest = divmod(total, len(chunk))
    return [chunk] * full + ([chunk[:rest]] if rest else [])


async def _exchange(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    chunk = b""
    received = 0
    async for msg in requests:
        if msg != END:
            if len(msg) > len(chunk):  # the client's chunk size: answer in pieces of it
                chunk = bytes(len(msg))
            received += len(msg)
            continue
        for piece in _chunks(received, chunk):
            yield piece
        yield END
        received = 0


async def serve(ready_file: Path) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.stream_stream_rpc_method_handler(_exchange)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Bare", {"Exchange": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(ready_file.write_text, json.dumps({"port": port}))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


async def run_client(address: str, total: int, rounds: int, warmup: int, chunk_bytes: int) -> dict[str, object]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = channel.stream_stream(METHOD)()
        pieces = _chunks(total, bytes(chunk_bytes))
        times = []
        for i in range(warmup + rounds):
            t0 = time.perf_counter()
            for piece in pieces:
                await call.write(piece)
            await call.write(END)
            got = 0
            while (msg := await call.read()) != END:
                got += len(msg)
            if got != total:
                raise RuntimeError(f"bare stream: expected {total} bytes back, got {got}")
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        await call.done_writing()
        call.cancel()
    return {"round_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_grpc")
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--ready-file", type=Path, required=True)
    c = sub.add_parser("client")
    c.add_argument("--address", required=True)
    c.add_argument("--bytes", type=int, required=True)
    c.add_argument("--rounds", type=int, required=True)
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(serve(args.ready_file))
    else:
        result = asyncio.run(run_client(args.address, args.bytes, args.rounds, args.warmup, args.chunk_bytes))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
