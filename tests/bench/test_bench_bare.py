"""The wire case's ceiling: the bare gRPC stream answers in the client's message size, and the
bench tries several sizes and names them in the rows (bench/NOTES.md item 18)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bench.bare_grpc import END, _exchange
from bench.dataplane import bare_chunk_sizes, bare_label

from tidal.transport.limits import CHUNK_BYTES


async def _replies(requests: list[bytes]) -> list[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for message in requests:
            yield message

    return [reply async for reply in _exchange(stream(), None)]  # type: ignore[arg-type]


def test_bare_server_answers_each_round_with_its_bytes_in_the_clients_message_size() -> None:
    rounds = [b"a" * 3, b"b" * 3, b"c", END, b"d" * 5, b"e" * 5, END]
    replies = asyncio.run(_replies(rounds))
    assert [len(r) for r in replies] == [3, 3, 1, 0, 5, 5, 0]


def test_bare_server_answers_an_empty_round_with_the_end_marker_alone() -> None:
    assert asyncio.run(_replies([END])) == [END]


def test_a_full_run_tries_larger_messages_than_tidals_and_names_them() -> None:
    sizes = bare_chunk_sizes(quick=False)
    assert CHUNK_BYTES in sizes and {1 << 20, 2 << 20, 4 << 20} <= set(sizes)
    assert bare_label(quick=False) == "bare grpc.aio bytes stream, best of 1, 2 and 4 MiB messages"
    assert bare_chunk_sizes(quick=True) == [CHUNK_BYTES]
    assert bare_label(quick=True) == f"bare grpc.aio bytes stream, {CHUNK_BYTES >> 20} MiB messages"
