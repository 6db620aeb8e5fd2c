"""Shared memory between a worker and a shard on one host: the data plane's fast path.

Over loopback gRPC every payload byte is copied into gRPC's buffers, framed as HTTP/2, copied
through the kernel and out again into Python `bytes`, on both sides. A worker on the shard's
host offers two files under /dev/shm instead (ExchangeOpen.shared_memory): it writes its
gradients into one, the shard writes the parameters into the other, and the Exchange messages
carry only where each payload lies (TensorChunk.shared). Everything else stays as it is: the
stream still orders requests and replies, and a payload read from shared memory goes through
the same checks as one that came inline.

No locks are needed because the stream already serializes the two sides: the worker writes a
push only after the previous one was acknowledged (the shard had copied it out by then), and
the shard writes parameters only in answer to a request, which the worker sends only after it
copied the previous parameters out.

The files are created with mode 0600 under an unguessable name and unlinked as soon as the
shard answered the offer; both processes keep their mappings, so nothing is left behind when
either dies. A shard on another host or in another container (its own /dev/shm) does not find
the file, or finds one without the offer's token: it declines, and payloads travel inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from tidal.config import ENV
from tidal.core.errors import InvalidArgumentError
from tidal.transport import frames
from tidal.v1 import shard_pb2 as shard_pb

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# Every segment starts with this header (the token, then padding), so payloads are aligned.
HEADER_BYTES = 64
TOKEN_BYTES = 16
_NAME = re.compile(r"tidal-[0-9a-f]{32}")
_SETTINGS = {"auto": True, "on": True, "1": True, "off": False, "0": False}


def parse_setting(value: str, source: str = ENV["shared_memory"]) -> bool:
    """Whether a process offers (worker) or accepts (shard) shared memory, from its setting
    (`--shared-memory` or TIDAL_SHARED_MEMORY, named by `source`): "auto" (the default: used
    where the peer can map it) or "off"."""
    try:
        return _SETTINGS[value.strip().lower()]
    except KeyError:
        raise InvalidArgumentError(f"{source}: expected auto or off, got {value.strip()!r}") from None


class Segment:
    """One mapped file under /dev/shm: a header, then payload bytes."""

    def __init__(self, name: str, mapping: mmap.mmap) -> None:
        self.name = name
        self.size = len(mapping)
        self._map = mapping

    @classmethod
    def create(cls, payload_bytes: int, token: bytes) -> Segment | None:
        """A new file with room for `payload_bytes`, its pages allocated now (a full /dev/shm
        fails here, not with SIGBUS at a later write); None where that is not possible."""
        name = f"tidal-{secrets.token_hex(16)}"
        path = SHM_DIR / name
        size = HEADER_BYTES + payload_bytes
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.info("no shared memory (%s): tensors travel inline", exc)
            return None
        try:
            os.posix_fallocate(fd, 0, size)
            mapping = mmap.mmap(fd, size)
        except OSError as exc:
            log.info("no shared memory for %d bytes (%s): tensors travel inline", size, exc)
            path.unlink(missing_ok=True)
            return None
        finally:
            os.close(fd)
        mapping[:TOKEN_BYTES] = token
        return cls(name, mapping)

    @classmethod
    def attach(cls, name: str, size: int, token: bytes, field: str) -> Segment | None:
        """Maps the worker's file `name`; None if this process cannot see it or it is not the
        one offered (another host or container, another owner, another size or token)."""
        if not _NAME.fullmatch(name):
            raise InvalidArgumentError(f"{field}: {name!r} is not a tidal segment name ('tidal-' and 32 hex digits)")
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size != size:
                return None
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if mapping[:TOKEN_BYTES] != token:
            mapping.close()
            return None
        return cls(name, mapping)

    def tensor(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """The first `numel` payload elements as a writable tensor over the mapping."""
        return torch.frombuffer(self._map, dtype=dtype, count=numel, offset=HEADER_BYTES)

    def region(self, offset: int, length: int, where: str) -> memoryview:
        """Payload bytes [offset, offset + length), checked against the segment."""
        if length <= 0 or offset < HEADER_BYTES or offset + length > self.size:
            raise InvalidArgumentError(
                f"{where}.shared: bytes [{offset}, {offset + length}) are not inside the payload "
                f"[{HEADER_BYTES}, {self.size}) of this stream's shared memory"
            )
        return memoryview(self._map)[offset : offset + length]

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (SHM_DIR / self.name).unlink()

    def close(self) -> None:
        # Tensors or views still alive keep the mapping; it goes with the last of them.
        with contextlib.suppress(BufferError):
            self._map.close()


@dataclass
class SharedStream:
    """The two segments of one Exchange stream: gradients up, parameters down."""

    push: Segment
    params: Segment
    token: bytes

    @classmethod
    def create(cls, payload_bytes: int) -> SharedStream | None:
        """The worker's side: both segments, each with room for `payload_bytes`."""
        token = secrets.token_bytes(TOKEN_BYTES)
        push = Segment.create(payload_bytes, token)
        if push is None:
            return None
        params = Segment.create(payload_bytes, token)
        if params is None:
            push.unlink()
            push.close()
            return None
        return cls(push, params, token)

    def offer(self) -> shard_pb.SharedMemoryOffer:
        return shard_pb.SharedMemoryOffer(
            push_segment=self.push.name,
            params_segment=self.params.name,
            push_segment_bytes=self.push.size,
            params_segment_bytes=self.params.size,
            token=self.token,
        )

    @classmethod
    def accept(cls, offer: shard_pb.SharedMemoryOffer, payload_bytes: int, field: str) -> SharedStream | None:
        """The shard's side: maps an offer whose segments hold `payload_bytes` each; None if
        they are not reachable from here (the stream then carries payloads inline)."""
        if len(offer.token) != TOKEN_BYTES:
            raise InvalidArgumentError(f"{field}.token: {len(offer.token)} bytes, expected {TOKEN_BYTES}")
        needed = HEADER_BYTES + payload_bytes
        for name, size in (("push", offer.push_segment_bytes), ("params", offer.params_segment_bytes)):
            if size < needed:
                raise InvalidArgumentError(f"{field}.{name}_segment_bytes: {size} bytes, the slice needs {needed}")
        token = offer.token
        push = Segment.attach(offer.push_segment, offer.push_segment_bytes, token, f"{field}.push_segment")
        if push is None:
            return None
        params = Segment.attach(offer.params_segment, offer.params_segment_bytes, token, f"{field}.params_segment")
        if params is None:
            push.close()
            return None
        return cls(push, params, offer.token)

    def unlink(self) -> None:
        """Removes the names; the mappings stay valid in every process that has them."""
        self.push.unlink()
        self.params.unlink()

    def close(self) -> None:
        self.push.close()
        self.params.close()


def resolve(chunks: Iterable[frames.ChunkView], segment: Segment | None, field: str) -> int:
    """Points every chunk that names a `shared` region at those bytes of `segment` (checked),
    so the chunk reads like an inline one; returns the payload bytes found in shared memory."""
    found = 0
    for i, chunk in enumerate(chunks):
        if chunk.shared is None:
            continue
        where = f"{field}[{i}]"
        if segment is None:
            raise InvalidArgumentError(f"{where}.shared: this stream did not agree on shared memory")
        if chunk.data or chunk.indices or chunk.span:
            raise InvalidArgumentError(f"{where}.shared: a shared chunk carries no data, indices or span")
        chunk.data = segment.region(*chunk.shared, where)
        found += len(chunk.data)
    return found


async def create_off_loop(payload_bytes: int) -> SharedStream | None:
    """`SharedStream.create` off the event loop (allocating a large slice's pages takes a
    while). Cancelled meanwhile (a sibling link failed), the thread still finishes: what it
    made is removed then, or its files would stay in /dev/shm."""
    creating = asyncio.ensure_future(asyncio.to_thread(SharedStream.create, payload_bytes))
    try:
        return await asyncio.shield(creating)
    except asyncio.CancelledError:
        creating.add_done_callback(_drop_created)
        raise


def _drop_created(creating: asyncio.Future[SharedStream | None]) -> None:
    shared = None if creating.cancelled() or creating.exception() else creating.result()
    if shared is not None:
        shared.unlink()
        shared.close()
