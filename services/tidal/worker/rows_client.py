"""The worker's side of the row RPCs: a `RowSource` (pull rows by id, push their gradients)
over PullRows and PushRows on the job's shards (docs/embeddings.md).

A pull or push routes the ids to their shards (core/embeddings/routing.py) and sends one
request per shard holding any of them, all concurrently: one round trip per shard per table
(more only for a batch beyond transport/limits.py's MAX_ROW_IDS or MAX_ROW_PAYLOAD_BYTES,
split into requests that fit). Every call is made on the worker's event loop: `pull_async`
and `push_async` there, `pull` and `push` from another thread (the worker computes in
`asyncio.to_thread`, where the embedding layer calls them).

Sync tables: the client counts its steps per table (pushes made). A pull for step s waits on
the shard until step s - 1 was applied with every worker's gradients; a push says it is for
step s and goes to every shard, with no ids where the batch has none (each shard's step waits
for every worker), its parts to one shard in order, all but the last marked `more`. A worker
that joins late learns the table's applied step from its first pull and continues from there;
a push the shard dropped as late moves it on too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import torch

from tidal.core.embeddings.routing import split_by_shard
from tidal.core.embeddings.spec import EmbeddingTableSpec
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from tidal.transport import rows as wire
from tidal.transport.errors import error_from_rpc
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc
from tidal.worker.fanout import fan_out

# A reply is waited for this much longer than the shard's own waits (step_timeout_s), so the
# shard's DEADLINE_EXCEEDED, which says what it waits for, arrives first.
REPLY_GRACE_S = 5.0
# Retrying a shard that went away (restart_s > 0): jittered exponential backoff, in seconds.
RETRY_FIRST_DELAY_S = 0.1
RETRY_MAX_DELAY_S = 2.0
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowPushAck:
    """One shard's answer to (a part of) a push."""

    shard: int
    outcome: str
    rows_applied: int
    applied_step: int
    # gRPC message bytes of the request and its reply (serialized; HTTP/2 framing not counted).
    wire_bytes: int = 0


@dataclass(frozen=True)
class RowPull:
    """The rows of a pull and the gRPC message bytes its requests and replies took."""

    rows: torch.Tensor
    wire_bytes: int


class ShardRowClient:
    """Pulls and pushes rows of the job's embedding tables; one instance per worker and job.
    `channels[i]` is a channel to shard i (transport/server.py's `create_channel`)."""

    def __init__(
        self,
        channels: Sequence[grpc.aio.Channel],
        job_id: str,
        worker_id: str,
        membership_epoch: int,
        tables: Sequence[EmbeddingTableSpec],
        timeout_s: float,
        loop: asyncio.AbstractEventLoop | None = None,
        restart_s: float = 0.0,
    ) -> None:
        if not channels:
            raise InvalidArgumentError("channels: a row client needs one channel per shard, got none")
        self._stubs = [shard_grpc.ParameterShardStub(c) for c in channels]
        self.job_id, self.worker_id = job_id, worker_id
        # The worker updates it when its membership epoch changes.
        self.membership_epoch = membership_epoch
        self.tables = {t.name: t for t in tables}
        self.timeout_s = timeout_s + REPLY_GRACE_S
        # How long a shard may be away (restarting) before a call fails; 0: fail at once.
        self.restart_s = restart_s
        # The loop the channels belong to (for calls from other threads); None: the running one.
        self._loop = loop
        # Sync tables: the step this worker is at, per table (pushes made, or the table's
        # applied step + 1 once the shard said it is further).
        self.steps = {t.name: 0 for t in tables if t.mode == "sync"}
        self._pushes = {t.name: 0 for t in tables}

    def set_channels(self, channels: Sequence[grpc.aio.Channel]) -> None:
        """New channels, one per shard in the same order (a shard restarted on another
        address). Push numbering goes on, so a retried push id stays a retry."""
        if len(channels) != len(self._stubs):
            raise InvalidArgumentError(f"channels: {len(channels)}, the job has {len(self._stubs)} shards")
        self._stubs = [shard_grpc.ParameterShardStub(c) for c in channels]

    @property
    def num_shards(self) -> int:
        return len(self._stubs)

    def _table(self, name: str) -> EmbeddingTableSpec:
        table = self.tables.get(name)
        if table is None:
            known = ", ".join(sorted(self.tables)) or "none"
            raise InvalidArgumentError(f"table: no embedding table {name!r} in the job (tables: {known})")
        return table

    @staticmethod
    def _check_ids(ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype != torch.int64 or ids.dim() != 1:
            raise InvalidArgumentError(f"ids: expected a 1-D int64 tensor, got {ids.dtype} {tuple(ids.shape)}")
        return ids.detach().cpu()

    def _parts(self, table: EmbeddingTableSpec, ids: torch.Tensor, every_shard: bool) -> dict[int, list[torch.Tensor]]:
        """Per shard, the positions in `ids` of each request to send it: its ids, split to fit.
        `every_shard`: shards without ids get one empty request (a sync table's push)."""
        per_request = wire.rows_per_request(table.dim)
        parts = {}
        for shard, positions in enumerate(split_by_shard(table.name, ids, self.num_shards)):
            if len(positions):
                parts[shard] = list(torch.split(positions, per_request))
            elif every_shard:
                parts[shard] = [positions]
        return parts

    # --- on the event loop ---------------------------------------------------------------
    async def pull_async(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """The rows `ids` (1-D int64, unique) of `table`: float32 (len(ids), dim)."""
        return (await self.pull_counted_async(table, ids)).rows

    async def pull_counted_async(self, table: str, ids: torch.Tensor) -> RowPull:
        """`pull_async`, with the message bytes its requests and replies took (the metrics')."""
        spec = self._table(table)
        ids = self._check_ids(ids)
        out = torch.empty((len(ids), spec.dim), dtype=torch.float32)
        step = self.steps.get(table, 0)
        wire_bytes = 0

        async def one(shard: int, positions: torch.Tensor) -> None:
            nonlocal wire_bytes
            request = shard_pb.PullRowsRequest(
                job_id=self.job_id, worker_id=self.worker_id, membership_epoch=self.membership_epoch, table=table,
                ids=wire.encode_ids(ids[positions]), min_step=step,
            )  # fmt: skip
            reply = await self._call(shard, "PullRows", request)
            wire_bytes += request.ByteSize() + reply.ByteSize()
            if reply.dim != spec.dim:
                raise InvalidArgumentError(
                    f"dim: shard {shard} serves table {table!r} with dim {reply.dim}, not {spec.dim}"
                )
            out[positions] = wire.decode_rows(reply.rows, len(positions), spec.dim, "rows")
            if table in self.steps:  # a late joiner learns where the table is
                self.steps[table] = max(self.steps[table], reply.applied_step + 1)

        parts = self._parts(spec, ids, every_shard=False)
        # One shard's failure cancels the other shards' requests (worker/fanout.py).
        await fan_out(*(one(shard, p) for shard, pieces in parts.items() for p in pieces))
        return RowPull(out, wire_bytes)

    async def push_async(self, table: str, ids: torch.Tensor, grads: torch.Tensor) -> list[RowPushAck]:
        """Pushes the gradients `grads` (float32 (len(ids), dim)) of rows `ids` (unique)."""
        spec = self._table(table)
        ids = self._check_ids(ids)
        grads = grads.detach().cpu().to(torch.float32)
        if tuple(grads.shape) != (len(ids), spec.dim):
            raise InvalidArgumentError(
                f"grads: expected ({len(ids)}, {spec.dim}) for {len(ids)} ids of table {table!r}, "
                f"got {tuple(grads.shape)}"
            )
        number = self._pushes[table]
        self._pushes[table] += 1
        step = self.steps.get(table, 0)
        sync = table in self.steps

        async def to_shard(shard: int, pieces: list[torch.Tensor]) -> list[RowPushAck]:
            # One shard's parts in order: a sync step completes with the part without `more`.
            acks = []
            for index, positions in enumerate(pieces):
                request = shard_pb.PushRowsRequest(
                    job_id=self.job_id, worker_id=self.worker_id, membership_epoch=self.membership_epoch,
                    table=table, push_id=f"{self.worker_id}:{table}:{number}:{index}",
                    ids=wire.encode_ids(ids[positions]), grads=wire.encode_rows(grads[positions]), dim=spec.dim,
                    step=step, more=sync and index < len(pieces) - 1,
                )  # fmt: skip
                reply = await self._call(shard, "PushRows", request)
                outcome = shard_pb.PushOutcome.Name(reply.outcome).removeprefix("PUSH_OUTCOME_").lower()
                size = request.ByteSize() + reply.ByteSize()
                acks.append(RowPushAck(shard, outcome, reply.rows_applied, reply.applied_step, size))
            return acks

        parts = self._parts(spec, ids, every_shard=sync)
        replies = await fan_out(*(to_shard(shard, pieces) for shard, pieces in parts.items()))
        acks = [ack for shard_acks in replies for ack in shard_acks]
        if sync:
            self.steps[table] = max([step + 1, *(a.applied_step + 1 for a in acks)])
        return acks

    async def _call(self, shard: int, method: str, request: Any) -> Any:
        """One RPC to `shard`. Within `restart_s` (the job's checkpoint.restart_timeout_s) a
        shard that went away or does not hold the job yet (restarting from its checkpoint) is
        retried with backoff, on the stub of the moment (`set_channels` swaps it), with the same
        request: a push id seen before is answered DUPLICATE, so a retry is never applied twice."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.restart_s
        delay = RETRY_FIRST_DELAY_S
        while True:
            try:
                return await getattr(self._stubs[shard], method)(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc(exc)
                if not isinstance(error, (UnavailableError, FailedPreconditionError)) or loop.time() + delay > give_up:
                    raise error from None
                log.warning("%s to shard %d: %s; retrying for up to %.0fs", method, shard, error,
                            give_up - loop.time())  # fmt: skip
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, RETRY_MAX_DELAY_S)

    # --- from another thread -------------------------------------------------------------
    def pull(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """`pull_async` from a thread other than the event loop's (the `RowSource` call)."""
        return self._run(self.pull_async(table, ids))

    def pull_counted(self, table: str, ids: torch.Tensor) -> RowPull:
        """`pull_counted_async` from a thread other than the event loop's."""
        return self._run(self.pull_counted_async(table, ids))

    def push(self, table: str, ids: torch.Tensor, grads: torch.Tensor) -> list[RowPushAck]:
        """`push_async` from a thread other than the event loop's."""
        return self._run(self.push_async(table, ids, grads))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            coro.close()
            why = "needs the client's event loop (loop=...)" if loop is None else "would block the event loop"
            raise RuntimeError(f"ShardRowClient: pull/push from a thread {why}; on the loop use pull_async/push_async")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
