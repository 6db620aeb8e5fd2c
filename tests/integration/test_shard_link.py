"""A worker's first connection to a shard that does not answer: retried with backoff, bounded.

On a loaded host a shard can miss the first HTTP/2 handshake ("connection attempt timed out
before receiving SETTINGS frame"); that once failed a whole job at version 0. The peer here is
a loopback TCP listener that accepts and hangs up without speaking HTTP/2, so every attempt
fails: the link must try again and again, then give up at its deadline with an error that
names the shard.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import torch

from tidal.core.errors import UnavailableError
from tidal.core.shard_map import build_shard_map
from tidal.core.torch_dtypes import tensor_infos
from tidal.transport.tls import SecurityConfig
from tidal.worker.links import ShardLink

pytestmark = pytest.mark.integration


async def _connect_to_a_peer_that_hangs_up(deadline_s: float) -> tuple[str, int]:
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, family=socket.AF_INET)
    port = server.sockets[0].getsockname()[1]
    params = torch.zeros(10)
    shard_map = build_shard_map(tensor_infos([("w", params)]), 1)
    link = ShardLink(
        "job-1", "worker-1", 1, 0, f"127.0.0.1:{port}", shard_map, params, timeout_s=2.0,
        security=SecurityConfig(), shared_memory=False,
    )  # fmt: skip
    try:
        with pytest.raises(UnavailableError) as caught:
            # The link must give up by itself (UnavailableError), not be cut off here
            # (TimeoutError): the guard only keeps a regression from hanging the suite.
            await asyncio.wait_for(link.connect(deadline_s), deadline_s + 60)
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
    return str(caught.value), attempts


def test_the_first_connection_is_retried_until_the_deadline() -> None:
    message, attempts = asyncio.run(_connect_to_a_peer_that_hangs_up(deadline_s=2.0))
    # Ended by its own deadline, not by gRPC's connection backoff (which would leave it waiting).
    assert "shard 0 (127.0.0.1:" in message and "not back within 2s" in message, message
    assert attempts >= 3, attempts  # the first try and retries with backoff
