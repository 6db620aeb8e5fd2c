"""A worker's embedding tables for one job (docs/embeddings.md, "The worker's step"): the row
client over the job's shards, bound to the model's `ShardedEmbedding` layers, and the push of
each step's row gradients beside the dense exchange.

The layers pull from the thread the worker computes in (the client's blocking `pull`, run on
the worker's event loop while that thread waits); the pushes go from the event loop
(`push_async`), right after the step's backward. Sync tables: the client's per-step protocol,
one push per sync table per step to every shard, empty where the batch read none of it.

Metrics: the bytes are the gRPC messages the client sent and received (counted by the client,
not computed from sizes); a training step's pulls and pushes are recorded with the step, an
evaluation's pulls (a forward under `torch.no_grad()`) apart from them.
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


@dataclass(frozen=True)
class StepRows:
    """One step's reads of one table: ids with repeats, the unique ids pulled, their gradients,
    and the message bytes of the step's pulls."""

    table: str
    seen: int
    unique: int
    grad: RowGradient | None
    pulled_bytes: int = 0


class _MeteredSource:
    """The model's row source: the client's pulls, their bytes kept for the step (training) or
    recorded as an evaluation's (a forward under no_grad, where the layers record nothing)."""

    def __init__(self, client: ShardRowClient, metrics: JobWorkerMetrics) -> None:
        self.client = client
        self.metrics = metrics
        # This step's pull bytes per table, until `take` (only the compute thread touches it).
        self.step_bytes: dict[str, int] = {}

    def pull(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        pulled = self.client.pull_counted(table, ids)
        if torch.is_grad_enabled():
            self.step_bytes[table] = self.step_bytes.get(table, 0) + pulled.wire_bytes
        else:
            self.metrics.record_eval_rows(table, len(ids), pulled.wire_bytes)
        return pulled.rows

    def take(self) -> dict[str, int]:
        taken, self.step_bytes = self.step_bytes, {}
        return taken


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
        self._source = _MeteredSource(self.client, metrics)
        bind_rows(model, self._source)

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
        pulled = self._source.take()
        tables = sorted(set(stats) | set(grads) | set(self.sync_tables))
        return [
            StepRows(
                t, stats[t].seen if t in stats else 0, stats[t].unique if t in stats else 0, grads.get(t),
                pulled.get(t, 0),
            )
            for t in tables
        ]  # fmt: skip

    def forget_step(self) -> None:
        """A step that failed before its rows were taken: drop its pulls."""
        reset_rows(self.model)
        self._source.take()

    async def push(self, step: list[StepRows]) -> None:
        """Pushes one step's row gradients to the shards (every table at once) and records them."""

        async def one(rows: StepRows) -> int:
            """The message bytes of the table's push."""
            if rows.grad is not None:
                acks = await self.client.push_async(rows.table, rows.grad.ids, rows.grad.grad)
            elif rows.table in self.sync_tables:
                empty = torch.zeros(0, dtype=torch.int64)
                acks = await self.client.push_async(rows.table, empty, torch.zeros(0, self.dims[rows.table]))
            else:
                acks = []
            return sum(ack.wire_bytes for ack in acks)

        pushed_bytes = await fan_out(*(one(rows) for rows in step))  # one table failing cancels the others
        for rows, push_bytes in zip(step, pushed_bytes, strict=True):
            pushed = len(rows.grad.ids) if rows.grad is not None else 0
            self.metrics.record_rows(rows.table, rows.unique, pushed, rows.seen, rows.pulled_bytes + push_bytes)

    async def close(self) -> None:
        bind_rows(self.model, None)
        results = await asyncio.gather(*(c.close() for c in self._channels), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("closing a row channel: %s", result)
