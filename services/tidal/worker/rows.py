"""A worker's embedding tables for one job (docs/embeddings.md, "The worker's step"): the row
client over the job's shards, bound to the model's `ShardedEmbedding` layers, and the push of
each step's row gradients beside the dense exchange.

The layers pull from the thread the worker computes in (the client's blocking `pull`, run on
the worker's event loop while that thread waits); the pushes go from the event loop
(`push_async`), right after the step's backward. Sync tables: the client's per-step protocol,
one push per sync table per step to every shard, empty where the batch read none of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import torch
from torch import nn

from tidal.core.spec import JobSpec
from tidal.nn import RowGradient, bind_rows, reset_rows, row_gradients, row_stats
from tidal.transport.server import create_channel
from tidal.transport.tls import SecurityConfig
from tidal.worker.fanout import fan_out
from tidal.worker.metrics import JobWorkerMetrics
from tidal.worker.rows_client import ShardRowClient

log = logging.getLogger(__name__)
ID_BYTES = 8  # an id on the wire: little-endian int64
FLOAT_BYTES = 4  # a row element on the wire: little-endian float32


@dataclass(frozen=True)
class StepRows:
    """One step's reads of one table: ids with repeats, the unique ids pulled, and their gradients."""

    table: str
    seen: int
    unique: int
    grad: RowGradient | None


class WorkerRows:
    """The job's embedding tables as this worker reads and writes them. Made on the event loop
    (channels belong to it)."""

    def __init__(
        self,
        spec: JobSpec,
        job_id: str,
        worker_id: str,
        epoch: int,
        addresses: Sequence[str],
        model: nn.Module,
        security: SecurityConfig,
        metrics: JobWorkerMetrics,
    ) -> None:
        self._security = security
        self._channels: list[grpc.aio.Channel] = [create_channel(a, security) for a in addresses]
        self.client = ShardRowClient(
            self._channels, job_id, worker_id, epoch, spec.embeddings, spec.step_timeout_s,
            loop=asyncio.get_running_loop(), restart_s=spec.checkpoint.restart_timeout_s,
        )  # fmt: skip
        self.model = model
        self.dims = {t.name: t.dim for t in spec.embeddings}
        self.sync_tables = [t.name for t in spec.embeddings if t.mode == "sync"]
        self.metrics = metrics
        bind_rows(model, self.client)

    def set_epoch(self, epoch: int) -> None:
        self.client.membership_epoch = epoch

    def retarget(self, shard_index: int, address: str) -> None:
        """Shard `shard_index` restarted at `address`: its calls (and their retries) go there."""
        if not 0 <= shard_index < len(self._channels):
            return
        old = self._channels[shard_index]
        self._channels[shard_index] = create_channel(address, self._security)
        self.client.set_channels(self._channels)
        # Closed later: a call in flight on it ends with UNAVAILABLE and is retried on the new one.
        asyncio.get_running_loop().create_task(old.close(grace=1.0))

    def take_step(self) -> list[StepRows]:
        """After backward (in the compute thread): this step's reads and row gradients per table,
        sync tables the batch did not read included (they are pushed empty)."""
        stats = row_stats(self.model)
        grads = {g.table: g for g in row_gradients(self.model)}
        tables = sorted(set(stats) | set(grads) | set(self.sync_tables))
        return [
            StepRows(t, stats[t].seen if t in stats else 0, stats[t].unique if t in stats else 0, grads.get(t))
            for t in tables
        ]

    def forget_step(self) -> None:
        """A step that failed before its rows were taken: drop its pulls."""
        reset_rows(self.model)

    async def push(self, step: list[StepRows]) -> None:
        """Pushes one step's row gradients to the shards (every table at once) and records them."""

        async def one(rows: StepRows) -> None:
            if rows.grad is not None:
                await self.client.push_async(rows.table, rows.grad.ids, rows.grad.grad)
            elif rows.table in self.sync_tables:
                empty = torch.zeros(0, dtype=torch.int64)
                await self.client.push_async(rows.table, empty, torch.zeros(0, self.dims[rows.table]))

        await fan_out(*(one(rows) for rows in step))  # one table failing cancels the others
        for rows in step:
            dim = self.dims[rows.table]
            pushed = len(rows.grad.ids) if rows.grad is not None else 0
            # Pulled: the unique ids of the step's forwards (ids out, rows back); pushed: ids and gradients.
            payload = (rows.unique + pushed) * (ID_BYTES + dim * FLOAT_BYTES)
            self.metrics.record_rows(rows.table, rows.unique, pushed, rows.seen, payload)

    async def close(self) -> None:
        bind_rows(self.model, None)
        results = await asyncio.gather(*(c.close() for c in self._channels), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("closing a row channel: %s", result)
