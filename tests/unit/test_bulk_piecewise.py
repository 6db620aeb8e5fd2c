"""A plain sync step on a piecewise bulk channel (transport/bulk.py): each push message's payload
follows it on the socket, the shard takes the push range by range as the pieces arrive, and
the parameters of each applied range go back, each message's payload after it, while the rest
of the gradient still comes up. Real loopback sockets, the shard's ExchangeSession and the
worker's LinkPayloads; the result is the whole step's, bit for bit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from tests.unit.test_bulk_channel import PLAINTEXT, listening, pair
from tests.unit.test_ranged_sync import EPOCH, TENSORS, TOTAL, WORKERS, FakeNode, grad, make_state, whole_clock
from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import build_shard_map
from tidal.security.bundle import create_bundle, environment
from tidal.shard.exchange import ExchangeSession
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.transport import frames, serde
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb
from tidal.worker.payloads import LinkPayloads

SEGMENTS = build_shard_map(TENSORS, 1).segments(0)
FLOAT = torch.float32


def _runtime() -> ShardRuntime:
    return ShardRuntime("job", make_state(), ShardMetrics(CollectorRegistry()).for_job("job", "sync", 0))


async def _open(
    session: ExchangeSession, worker: str, security: SecurityConfig = PLAINTEXT
) -> tuple[shard_pb.ExchangeOpened, LinkPayloads]:
    """Opens `session` as `worker` asking for a bulk channel and range replies; the worker's
    side of the payloads, connected."""
    opening = shard_pb.ExchangeOpen(
        job_id="job", worker_id=worker, membership_epoch=EPOCH, range_replies=True, bulk=True
    )
    frame = frames.decode_request(shard_pb.ExchangeRequest(open=opening).SerializeToString())
    opened = (await session.open(frame)).opened
    payloads = LinkPayloads(torch.empty(TOTAL), SEGMENTS, 0, security, 10.0, shared_memory=False, bulk_channel=True)
    await payloads.agree(opened, "127.0.0.1", worker)
    return opened, payloads


async def _push(
    session: ExchangeSession, payloads: LinkPayloads, worker: str, clock: int, g: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """One push as a link sends it (each message, then its piece) with the replies read as they
    come (each parameters message, then its piece). The parameters it got back, and how many
    parameters messages came before the push's last message was sent."""
    payloads.stage(g, FLOAT)
    groups = payloads.push_headers(FLOAT)
    replies: asyncio.Queue[frames.Frame | None] = asyncio.Queue()
    got = torch.empty(TOTAL)
    early = 0

    async def handle(frame: frames.Frame) -> None:
        async for r in session.handle(frame):
            ack = isinstance(r, shard_pb.ExchangeResponse)
            await replies.put(None if ack else frames.decode_response(r))

    async def send() -> None:
        nonlocal early
        for i, group in enumerate(groups):
            last = i == len(groups) - 1
            if last:
                early = replies.qsize() + received
            message = frames.encode_push(f"{worker}:{clock}", clock, EPOCH, clock, 1, group, last)
            await asyncio.gather(handle(frames.decode_request(message)), payloads.sent(i, FLOAT))

    received = 0

    async def receive() -> None:
        nonlocal received
        assembler = serde.SliceAssembler(SEGMENTS, 0, got, "params.chunks")
        block_read, done = False, False
        while not done:
            reply = await replies.get()
            if reply is None:
                continue
            _, block_read = await payloads.resolve(reply.body.chunks, block_read, "params.chunks")
            assembler.add(reply.body.chunks)
            received += 1
            done = reply.body.last
        assembler.finish()

    await asyncio.gather(send(), receive())
    return got, early


def test_a_ranged_push_on_a_plaintext_bulk_channel_goes_piece_by_piece() -> None:
    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        async with listening() as listener:
            node = FakeNode(runtime)
            sessions = {w: ExchangeSession(node, False, lambda *_: None, bulk_port=listener) for w in WORKERS}
            links = {}
            for w, session in sessions.items():
                opened, links[w] = await _open(session, w)
                assert opened.range_replies and opened.HasField("bulk")
            results = await asyncio.gather(*(_push(sessions[w], links[w], w, 1, grad(w, 1)) for w in WORKERS))
            for session in sessions.values():
                session.close()
            for payloads in links.values():
                payloads.drop()
        reference = make_state()
        whole_clock(reference, 0)
        whole_clock(reference, 1)
        assert torch.equal(runtime.state.params.detach(), reference.params.detach())
        for got, early in results:
            assert torch.equal(got, reference.params.detach())
            # Parameters came back while push messages were still to be sent.
            assert early > 0
        # Every byte of both directions went on the channels: 2 pushes and 2 replies of the slice.
        assert runtime.metrics.received._value.get() >= 2 * TOTAL * 4

    asyncio.run(main())


def test_a_tls_bulk_channel_keeps_one_block_per_push(tmp_path: Path) -> None:
    """One TLS connection cannot carry both directions at once from two threads: no range
    replies there, and each push and reply travels as one block."""
    create_bundle(tmp_path)
    shard_security = SecurityConfig.from_env(environment(tmp_path), default_name="shard")
    worker_security = SecurityConfig.from_env(environment(tmp_path), default_name="worker")

    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        async with listening(shard_security) as listener:
            session = ExchangeSession(FakeNode(runtime), False, lambda *_: None, bulk_port=listener)
            opened, payloads = await _open(session, "w0", worker_security)
            assert opened.HasField("bulk") and not opened.range_replies
            assert len(payloads.push_headers(FLOAT)) == 1  # one message of headers, one block
            session.close()
            payloads.drop()

    asyncio.run(main())


def test_a_piece_past_the_slice_is_refused_before_it_is_read() -> None:
    async def main() -> None:
        async with listening() as listener:
            worker, shard = await pair(listener)  # a slice of 4096 bytes
            await worker.send(torch.zeros(512))  # 2048 bytes: half the slice
            await shard.receive("push.chunks")
            await worker.send(torch.zeros(1024))  # the whole slice again, after the first half
            with pytest.raises(InvalidArgumentError, match=r"a bulk block of 4096 bytes after 2048 of the same push"):
                await shard.receive("push.chunks", append=True)
            worker.close()
            shard.close()

    asyncio.run(main())
