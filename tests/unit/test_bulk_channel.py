"""transport/bulk.py on real loopback sockets: blocks both ways, the token handshake, what a bad
or silent peer gets, TLS with the development bundle, and the setting's parsing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import torch

from tidal.core.errors import InvalidArgumentError, UnavailableError
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.security.bundle import create_bundle, environment
from tidal.transport import bulk, socket_io
from tidal.transport.bulk_listener import BulkListener
from tidal.transport.shm import HEADER_BYTES
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb
from tidal.worker.links import ShardLink

PLAINTEXT = SecurityConfig()
PAYLOAD = 4096


@asynccontextmanager
async def listening(
    security: SecurityConfig = PLAINTEXT, handshake_timeout_s: float = 10.0
) -> AsyncIterator[BulkListener]:
    listener = BulkListener.open("127.0.0.1", 0, security, handshake_timeout_s)
    listener.start()
    try:
        yield listener
    finally:
        await listener.close()


async def pair(listener: BulkListener, client: SecurityConfig = PLAINTEXT) -> tuple[bulk.BulkStream, bulk.BulkStream]:
    """A worker's and a shard's end of one stream's channel."""
    token, waiter = listener.expect()
    offer = shard_pb.BulkChannel(port=listener.port, token=token)
    worker = await bulk.connect("127.0.0.1", offer, client, PAYLOAD, timeout_s=10)
    shard = bulk.BulkStream(await asyncio.wait_for(waiter, 10), PAYLOAD, 10, listener.executor)
    return worker, shard


def test_blocks_travel_both_ways_and_land_where_the_regions_say() -> None:
    async def main() -> None:
        async with listening() as listener:
            worker, shard = await pair(listener)
            grad = torch.arange(256, dtype=torch.float32)
            sent = await worker.send(grad)
            assert sent == 8 + 1024
            assert await shard.receive("push.chunks") == sent
            got = shard.inbound.region(HEADER_BYTES, 1024, "push.chunks[0]")
            assert torch.equal(torch.frombuffer(got, dtype=torch.float32), grad)
            # The shard snapshots what it serves into `outbound`, then sends that block.
            shard.outbound.tensor(torch.bfloat16, 100).copy_(torch.linspace(-1, 1, 100))
            await shard.send_outbound(200)
            await worker.receive("params.chunks")
            back = torch.frombuffer(worker.inbound.region(HEADER_BYTES, 200, "params.chunks[0]"), dtype=torch.bfloat16)
            assert torch.equal(back, torch.linspace(-1, 1, 100).to(torch.bfloat16))
            # Regions past the block last received are refused, naming the field.
            with pytest.raises(InvalidArgumentError, match=r"params.chunks\[0\].shared: bytes \[64, 265\)"):
                worker.inbound.region(HEADER_BYTES, 201, "params.chunks[0]")
            worker.close()
            shard.close()

    asyncio.run(main())


def test_a_block_longer_than_the_slice_is_refused_before_it_is_read() -> None:
    async def main() -> None:
        async with listening() as listener:
            worker, shard = await pair(listener)
            await worker.send(torch.zeros(PAYLOAD // 4 + 1))
            with pytest.raises(
                InvalidArgumentError, match=r"push.chunks: a bulk block of 4100 bytes, more than the 4096"
            ):
                await shard.receive("push.chunks")
            worker.close()
            shard.close()

    asyncio.run(main())


def test_a_peer_that_goes_away_mid_block_is_unavailable() -> None:
    async def main() -> None:
        async with listening() as listener:
            worker, shard = await pair(listener)
            receiving = asyncio.ensure_future(shard.receive("push.chunks"))
            worker.close()
            with pytest.raises(UnavailableError, match="bulk channel"):
                await receiving
            shard.close()

    asyncio.run(main())


def test_a_wrong_token_gets_no_channel_and_the_stream_keeps_waiting() -> None:
    async def main() -> None:
        async with listening() as listener:
            _, waiter = listener.expect()
            wrong = shard_pb.BulkChannel(port=listener.port, token=b"\x00" * 16)
            with pytest.raises(UnavailableError, match=r"bulk channel to 127\.0\.0\.1"):
                await bulk.connect("127.0.0.1", wrong, PLAINTEXT, PAYLOAD, timeout_s=10)
            assert not waiter.done()

    asyncio.run(main())


def test_a_refused_return_connection_closes_the_first_one_too() -> None:
    """A piecewise TLS channel is two connections: if the second is refused, the worker closes
    the first as well (the shard reads its end as closed) and carries on inline."""

    async def main() -> None:
        async with listening() as listener:
            token, waiter = listener.expect()
            offer = shard_pb.BulkChannel(port=listener.port, token=token, return_token=b"\x00" * 16)
            with pytest.raises(UnavailableError, match=r"bulk channel to 127\.0\.0\.1"):
                await bulk.connect("127.0.0.1", offer, PLAINTEXT, PAYLOAD, timeout_s=10, piecewise=True)
            shard_end = await asyncio.wait_for(waiter, 10)
            shard_end.settimeout(10)
            assert shard_end.recv(1) == b""  # the worker closed it
            shard_end.close()

    asyncio.run(main())


def test_a_malformed_offer_is_unavailable_not_a_crash() -> None:
    async def main() -> None:
        bad = shard_pb.BulkChannel(port=0, token=b"short")
        with pytest.raises(UnavailableError, match="malformed"):
            await bulk.connect("127.0.0.1", bad, PLAINTEXT, PAYLOAD, timeout_s=1)

    asyncio.run(main())


def test_a_connection_that_never_sends_its_token_is_dropped() -> None:
    async def main() -> None:
        async with listening(handshake_timeout_s=0.2) as listener:
            silent = socket.create_connection(("127.0.0.1", listener.port))
            silent.settimeout(30)
            # The listener closes it once its handshake times out: the read sees the end.
            assert await asyncio.to_thread(silent.recv, 1) == b""
            silent.close()

    asyncio.run(main())


def test_mutual_tls_channels_and_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    create_bundle(pki)
    shard_side = SecurityConfig.from_env(environment(pki), default_name="shard")
    worker_side = SecurityConfig.from_env(environment(pki), default_name="worker")
    no_certificate = SecurityConfig(ca_path=worker_side.ca_path)

    async def main() -> None:
        async with listening(shard_side) as listener:
            worker, shard = await pair(listener, worker_side)
            await worker.send(torch.ones(8))
            await shard.receive("push.chunks")
            assert torch.equal(
                torch.frombuffer(shard.inbound.region(HEADER_BYTES, 32, "x"), dtype=torch.float32), torch.ones(8)
            )
            worker.close()
            shard.close()
            _, waiter = listener.expect()
            with pytest.raises(UnavailableError):
                offer = shard_pb.BulkChannel(port=listener.port, token=b"\x01" * 16)
                await bulk.connect("127.0.0.1", offer, no_certificate, PAYLOAD, timeout_s=10)
            assert not waiter.done()

    asyncio.run(main())


@pytest.mark.parametrize(("value", "expected"), [("on", True), (" OFF ", False), ("1", True), ("0", False)])
def test_the_setting_is_on_or_off(value: str, expected: bool) -> None:
    assert bulk.parse_setting(value) is expected


def test_a_bad_setting_names_the_variable() -> None:
    with pytest.raises(InvalidArgumentError, match="TIDAL_BULK_CHANNEL: expected on or off, got 'auto'"):
        bulk.parse_setting("auto")


def test_a_link_that_cannot_reach_the_offered_channel_stops_asking_and_goes_inline() -> None:
    """A firewall between the hosts, say: the stream is given up (the shard expects blocks on
    it) and the link's reconnection opens the next one without asking."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now

    async def main() -> None:
        shard_map = build_shard_map((TensorInfo("w", (4, 5), "float32"),), 1)
        link = ShardLink(
            "job", "w0", 0, 0, "127.0.0.1:1", shard_map, torch.zeros(20), 5.0,
            security=PLAINTEXT, shared_memory=False, bulk_channel=True,
        )  # fmt: skip
        with pytest.raises(UnavailableError, match=rf"shard 0 \(127\.0\.0\.1:1\): bulk channel to 127\.0\.0\.1:{port}"):
            offer = shard_pb.BulkChannel(port=port, token=b"\x01" * 16)
            await link.payloads.agree(shard_pb.ExchangeOpened(bulk=offer), "127.0.0.1", "shard 0 (127.0.0.1:1)")
        assert link.payloads.ask_bulk_channel is False
        assert link.transport == "inline (gRPC)"
        await link.close()

    asyncio.run(main())


def test_a_drained_send_waits_until_the_peer_took_the_bytes() -> None:
    """A worker's upload counts as done once the peer acknowledged it, not once it is queued
    in this host's send buffer (the next shard's upload must not share the link with its tail)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # the accepted socket's
        with socket.create_connection(server.getsockname()) as sender:
            receiver, _ = server.accept()
            with receiver:
                sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
                sender.sendall(b"\x01" * (2 << 20))  # queued here: the peer reads nothing yet
                queued = socket_io.unacknowledged_bytes(sender)
                assert queued is not None and queued > bulk.DRAINED_BYTES, queued
                with pytest.raises(TimeoutError):
                    socket_io.wait_drained(sender, bulk.DRAINED_BYTES, timeout_s=0.2)
                received = 0
                while received < 2 << 20:
                    received += len(receiver.recv(1 << 20))
                socket_io.wait_drained(sender, 0, timeout_s=30)
                assert socket_io.unacknowledged_bytes(sender) == 0
