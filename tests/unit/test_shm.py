"""Shared-memory segments (transport/shm.py): created private, mapped only with the token,
every region checked; the names vanish once both sides hold the mapping."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest
import torch

from tidal.core.errors import InvalidArgumentError
from tidal.transport import frames, shm

TOKEN = bytes(range(shm.TOKEN_BYTES))


@pytest.fixture
def segment() -> Iterator[shm.Segment]:
    created = shm.Segment.create(1024, TOKEN)
    assert created is not None, "/dev/shm is needed for these tests"
    yield created
    created.unlink()
    created.close()


def test_the_setting_reads_auto_or_off() -> None:
    assert shm.parse_setting("auto")
    assert not shm.parse_setting(" OFF ")
    with pytest.raises(InvalidArgumentError, match="TIDAL_SHARED_MEMORY: expected auto or off, got 'maybe'"):
        shm.parse_setting("maybe")


def test_a_segment_is_private_and_starts_with_its_token(segment: shm.Segment) -> None:
    info = os.stat(shm.SHM_DIR / segment.name)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == segment.size == shm.HEADER_BYTES + 1024
    with open(shm.SHM_DIR / segment.name, "rb") as raw:
        assert raw.read(shm.TOKEN_BYTES) == TOKEN


def test_what_one_mapping_writes_the_other_reads_also_after_unlink(segment: shm.Segment) -> None:
    other = shm.Segment.attach(segment.name, segment.size, TOKEN, "f")
    assert other is not None
    segment.unlink()
    assert not (shm.SHM_DIR / segment.name).exists()
    values = torch.arange(256, dtype=torch.float32)
    segment.tensor(torch.float32, 256).copy_(values)
    seen = torch.frombuffer(other.region(shm.HEADER_BYTES, 1024, "f"), dtype=torch.float32)
    assert torch.equal(seen, values)
    other.close()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"token": b"x" * shm.TOKEN_BYTES}, "another token"),
        ({"size": shm.HEADER_BYTES + 2048}, "another size"),
        ({"name": "tidal-" + "f" * 32}, "no such file (another host)"),
    ],
)
def test_attach_declines_what_is_not_the_offered_segment(segment: shm.Segment, change: dict, why: str) -> None:
    args = {"name": segment.name, "size": segment.size, "token": TOKEN, **change}
    assert shm.Segment.attach(args["name"], args["size"], args["token"], "f") is None, why


@pytest.mark.parametrize("name", ["../../etc/passwd", "tidal-XYZ", "tidal-" + "0" * 31, "", "tidal-" + "0" * 32 + "/x"])
def test_attach_refuses_names_that_are_not_tidal_segments(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"open\.shared_memory\.push_segment: .* is not a tidal segment"):
        shm.Segment.attach(name, 128, TOKEN, "open.shared_memory.push_segment")


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 16), (shm.HEADER_BYTES - 1, 8), (shm.HEADER_BYTES, 0), (shm.HEADER_BYTES, 1025), (1 << 63, 8)],
)
def test_regions_outside_the_payload_are_refused(segment: shm.Segment, offset: int, length: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"push\.chunks\[0\]\.shared: bytes .* are not inside"):
        segment.region(offset, length, "push.chunks[0]")


def test_resolve_points_chunks_at_the_segment_and_refuses_mixed_or_unagreed_ones(segment: shm.Segment) -> None:
    inline = frames.ChunkView(name="b", data=memoryview(b"ab"))
    chunks = [frames.ChunkView(name="w", shared=(shm.HEADER_BYTES, 400)), inline]
    assert shm.resolve(chunks, segment, "push.chunks") == 400
    assert len(chunks[0].data) == 400 and bytes(chunks[1].data) == b"ab"
    with pytest.raises(InvalidArgumentError, match=r"push\.chunks\[0\]\.shared: this stream did not agree"):
        shm.resolve([frames.ChunkView(shared=(shm.HEADER_BYTES, 4))], None, "push.chunks")
    mixed = frames.ChunkView(data=memoryview(b"abcd"), shared=(shm.HEADER_BYTES, 4))
    with pytest.raises(InvalidArgumentError, match=r"push\.chunks\[0\]\.shared: a shared chunk carries no data"):
        shm.resolve([mixed], segment, "push.chunks")


def test_a_stream_offer_is_accepted_only_with_room_for_the_slice() -> None:
    stream = shm.SharedStream.create(4000)
    assert stream is not None
    try:
        offer = stream.offer()
        needs = r"open\.shared_memory\.push_segment_bytes: 4064 bytes, the slice needs 8064"
        with pytest.raises(InvalidArgumentError, match=needs):
            shm.SharedStream.accept(offer, 8000, "open.shared_memory")
        accepted = shm.SharedStream.accept(offer, 4000, "open.shared_memory")
        assert accepted is not None
        stream.unlink()
        assert not (shm.SHM_DIR / stream.push.name).exists() and not (shm.SHM_DIR / stream.params.name).exists()
        accepted.params.tensor(torch.float32, 1000).fill_(2.5)
        assert torch.equal(stream.params.tensor(torch.float32, 1000), torch.full((1000,), 2.5))
        accepted.close()
    finally:
        stream.unlink()
        stream.close()
