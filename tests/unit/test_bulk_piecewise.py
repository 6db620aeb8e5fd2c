"""A plain sync step on a piecewise bulk channel (transport/bulk.py): each push message's payload
follows it on the socket, the shard takes the push range by range as the pieces arrive, and
the parameters of each applied range go back, each message's payload after it, while the rest
of the gradient still comes up. Real loopback sockets, the shard's ExchangeSession and the
worker's LinkPayloads; the result is the whole step's, bit for bit."""

from __future__ import annotations

import asyncio

import pytest
import torch
from prometheus_client import CollectorRegistry

from tests.unit.test_bulk_channel import PLAINTEXT, listening, pair
from tests.unit.test_ranged_sync import EPOCH, TENSORS, TOTAL, WORKERS, FakeNode, grad, make_state, whole_clock
from tidal.core.errors import InvalidArgumentError, UnavailableError
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
    session: ExchangeSession, worker: str, security: SecurityConfig = PLAINTEXT, return_connection: bool = True
) -> tuple[shard_pb.ExchangeOpened, LinkPayloads]:
    """Opens `session` as `worker` asking for a bulk channel and range replies (and, unless
    told otherwise, offering a return connection, as a worker of this version does); the
    worker's side of the payloads, connected."""
    opening = shard_pb.ExchangeOpen(
        job_id="job",
        worker_id=worker,
        membership_epoch=EPOCH,
        range_replies=True,
        bulk=True,
        bulk_return_connection=return_connection,
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


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[SecurityConfig, SecurityConfig]:
    """The shard's and the worker's mutual TLS, from one fresh bundle."""
    pki = tmp_path_factory.mktemp("pki")
    create_bundle(pki)
    env = environment(pki)
    return SecurityConfig.from_env(env, default_name="shard"), SecurityConfig.from_env(env, default_name="worker")


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "mutual-tls"])
def test_a_ranged_push_on_a_bulk_channel_goes_piece_by_piece(
    tls: bool, mutual_tls: tuple[SecurityConfig, SecurityConfig]
) -> None:
    """In plaintext on one socket; over TLS on two connections, the shard's blocks on the
    return connection (one TLS connection must not be read and written from two threads)."""
    shard_security, worker_security = mutual_tls if tls else (PLAINTEXT, PLAINTEXT)

    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        async with listening(shard_security) as listener:
            node = FakeNode(runtime)
            sessions = {w: ExchangeSession(node, False, lambda *_: None, bulk_port=listener) for w in WORKERS}
            links = {}
            for w, session in sessions.items():
                opened, links[w] = await _open(session, w, worker_security)
                assert opened.range_replies and opened.HasField("bulk")
                assert bool(opened.bulk.return_token) == tls
                assert links[w].transport == "on a bulk channel, message by message"
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


def test_a_tls_bulk_channel_without_a_return_connection_keeps_one_block_per_push(
    mutual_tls: tuple[SecurityConfig, SecurityConfig],
) -> None:
    """A worker that cannot open a return connection (an older one) gets no range replies on a
    TLS channel: each push and reply travels as one block, on the one connection."""
    shard_security, worker_security = mutual_tls

    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        async with listening(shard_security) as listener:
            session = ExchangeSession(FakeNode(runtime), False, lambda *_: None, bulk_port=listener)
            opened, payloads = await _open(session, "w0", worker_security, return_connection=False)
            assert opened.HasField("bulk") and not opened.range_replies and not opened.bulk.return_token
            assert len(payloads.push_headers(FLOAT)) == 1  # one message of headers, one block
            assert payloads.transport == "on a bulk channel"
            session.close()
            payloads.drop()

    asyncio.run(main())


def test_a_worker_refuses_range_replies_on_one_tls_connection(
    mutual_tls: tuple[SecurityConfig, SecurityConfig],
) -> None:
    """A shard that agreed to range replies on a TLS channel but offered no return connection
    (not this version's) would have both directions on one TLS connection: the worker refuses
    the channel and goes inline."""
    _, worker_security = mutual_tls
    payloads = LinkPayloads(
        torch.empty(TOTAL), SEGMENTS, 0, worker_security, 10.0, shared_memory=False, bulk_channel=True
    )
    opened = shard_pb.ExchangeOpened(range_replies=True, bulk=shard_pb.BulkChannel(port=1, token=bytes(16)))
    with pytest.raises(UnavailableError, match="range replies on one TLS connection"):
        asyncio.run(payloads.agree(opened, "127.0.0.1", "shard 0"))
    assert not payloads.ask_bulk_channel


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
