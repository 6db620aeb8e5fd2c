"""All the embedding tables of one job on one shard: checks, pushes, sync steps, snapshots.

Requests name a table and carry unique int64 ids (the worker's layer deduplicates a batch's
ids and sums their gradients, so a repeated id in one request is a bug on the sender's side
and is refused, not summed). Every check runs before anything changes.

Pushes carry a push id; the last `PUSH_IDS_KEPT` of each worker and table are remembered (and
checkpointed), so a retried push is acknowledged as a duplicate instead of being applied
twice.

Tables in mode `sync`: a push names its step (the worker's step number, counted from 0, as
its dense pushes do). Every worker pushes every step to every shard, with no ids when its
batch has none there, and in several parts (`more`) when a batch exceeds the request limits.
The shard buffers the step's parts and, once every member of the job sent its last part for
that step, sums them per id and applies them in one optimizer step
(`applied_step` then says so; a pull may wait for it). A member that leaves no longer holds a
step up (`settle`). A push for a step already applied is dropped as late. Buffered gradients
are not in a checkpoint: they are lost with the process, as a dense barrier's are.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from tidal.core.embeddings.budget import check_fits
from tidal.core.embeddings.delta import DELTA, DELTAS_PER_FULL, FULL
from tidal.core.embeddings.routing import shard_of
from tidal.core.embeddings.spec import EmbeddingTableSpec
from tidal.core.embeddings.table import RowTable
from tidal.core.errors import DataLossError, InvalidArgumentError, NonFiniteGradientError
from tidal.core.spec import JobSpec

# Push ids remembered per worker for deduplication.
PUSH_IDS_KEPT = 64
# How far ahead of a sync table's last applied step a push may be. An honest worker is at most
# one step ahead (it pulls step s + 1 only once step s was applied), so this bounds what a
# table buffers to a few steps x members x one request each.
MAX_PENDING_STEPS = 4
# Ids named in an error message; the rest are counted.
IDS_NAMED = 5


class RowPushOutcome(Enum):
    APPLIED = "applied"
    BUFFERED = "buffered"
    DUPLICATE = "duplicate"
    DROPPED_LATE = "dropped_late"


@dataclass(frozen=True)
class RowPushResult:
    outcome: RowPushOutcome
    # Rows changed by this push (all of the step's rows when it completed a sync step).
    rows_applied: int = 0
    # Sync tables: the newest step applied after this push (-1: none); async tables: -1.
    applied_step: int = -1


@dataclass
class RowsSnapshot:
    """A copy of a shard's rows: tensors named `<table>/<key>` and JSON-ready metadata.
    `kind` "delta": only the rows changed since the previous snapshot, plus `<table>/deleted`
    (core/embeddings/delta.py); the metadata is always whole."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    kind: str = FULL


@dataclass
class _SyncStep:
    # Each worker's parts of this step, and the workers whose last part came.
    parts: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    done: set[str] = field(default_factory=set)


def name_ids(ids: Iterable[int], total: int) -> str:
    """A few ids and how many more: '3, 9, 12 and 40 more'."""
    named = list(ids)[:IDS_NAMED]
    more = total - len(named)
    return ", ".join(str(i) for i in named) + (f" and {more} more" if more > 0 else "")


class RowShard:
    def __init__(self, spec: JobSpec, shard_index: int, num_shards: int, max_bytes: int = 0) -> None:
        """`max_bytes`: the most bytes of rows this shard holds over all the job's tables (0: no
        bound; core/embeddings/budget.py). A job whose share may not fit is refused here."""
        check_fits(spec, shard_index, num_shards, max_bytes)
        self.spec = spec
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.max_bytes = max_bytes
        self.tables: dict[str, RowTable] = {}
        for table in spec.embeddings:
            # A hashed table's capacity is spread over the shards, each holding its share.
            limit = table.num_embeddings if table.bounded else math.ceil((table.capacity or 1) / num_shards)
            self.tables[table.name] = RowTable(table, spec.seed, int(limit or 1), self.room if max_bytes else None)
        self.refused_ids = {name: 0 for name in self.tables}
        self.applied_step = {t.name: -1 for t in spec.embeddings if t.mode == "sync"}
        self._pending: dict[str, OrderedDict[int, _SyncStep]] = {name: OrderedDict() for name in self.applied_step}
        # Per (worker, table): its last push ids, oldest first, and what each came to.
        self._pushes: dict[tuple[str, str], deque[str]] = {}
        self._push_results: dict[tuple[str, str, str], RowPushResult] = {}
        # Delta snapshots taken since the last full one (None: the next one is full).
        self._deltas: int | None = None

    def room(self) -> int:
        """Bytes the tables may still allocate under the shard's bound."""
        return self.max_bytes - sum(t.held_bytes for t in self.tables.values())

    # --- checks --------------------------------------------------------------------------
    def table(self, name: str) -> RowTable:
        table = self.tables.get(name)
        if table is None:
            known = ", ".join(sorted(self.tables)) or "none"
            raise InvalidArgumentError(
                f"table: job {self.spec.name!r} has no embedding table {name!r} (tables: {known})"
            )
        return table

    def check_ids(self, table: RowTable, ids: torch.Tensor, field_name: str = "ids") -> None:
        """Unique int64 ids, in range for a bounded table, held by this shard."""
        if ids.dtype != torch.int64 or ids.dim() != 1:
            raise InvalidArgumentError(f"{field_name}: expected 1-D int64, got {ids.dtype} {tuple(ids.shape)}")
        spec: EmbeddingTableSpec = table.spec
        name = spec.name
        if spec.num_embeddings is not None:
            bad = ids[(ids < 0) | (ids >= spec.num_embeddings)]
            if len(bad):
                self._refuse(name, len(bad))
                raise InvalidArgumentError(
                    f"{field_name}: {len(bad)} ids outside table {name!r}'s range [0, {spec.num_embeddings}): "
                    f"{name_ids(bad.tolist(), len(bad))}"
                )
        if len(ids) > 1:
            ordered = torch.sort(ids).values
            repeated = torch.unique(ordered[1:][ordered[1:] == ordered[:-1]])
            if len(repeated):
                self._refuse(name, len(repeated))
                raise InvalidArgumentError(
                    f"{field_name}: {len(repeated)} ids appear more than once (send each id once, gradients "
                    f"summed): {name_ids(repeated.tolist(), len(repeated))}"
                )
        owner = shard_of(name, ids, self.num_shards)
        elsewhere = ids[owner != self.shard_index]
        if len(elsewhere):
            self._refuse(name, len(elsewhere))
            raise InvalidArgumentError(
                f"{field_name}: {len(elsewhere)} ids of table {name!r} belong to other shards, not shard "
                f"{self.shard_index} (route with tidal.core.embeddings.routing.shard_of): "
                f"{name_ids(elsewhere.tolist(), len(elsewhere))}"
            )

    def _refuse(self, table: str, count: int) -> None:
        self.refused_ids[table] = self.refused_ids.get(table, 0) + count

    def check_grads(self, table: RowTable, ids: torch.Tensor, grads: torch.Tensor) -> None:
        if grads.dtype != torch.float32 or tuple(grads.shape) != (len(ids), table.dim):
            raise InvalidArgumentError(
                f"grads: expected float32 ({len(ids)}, {table.dim}) (one row of dim {table.dim} per id), "
                f"got {grads.dtype} {tuple(grads.shape)}"
            )
        finite = torch.isfinite(grads).all(dim=1)
        if not bool(finite.all()):
            bad = ids[~finite]
            self._refuse(table.spec.name, len(bad))
            raise NonFiniteGradientError(
                f"grads: NaN or Inf in the rows of {len(bad)} ids of table {table.spec.name!r}: "
                f"{name_ids(bad.tolist(), len(bad))}"
            )

    # --- requests ------------------------------------------------------------------------
    def pull(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """The current rows `ids` of table `name`, float32 (len(ids), dim)."""
        table = self.table(name)
        self.check_ids(table, ids)
        return table.read(ids)[0]

    def read(self, name: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `pull`, read-only (not a use for eviction), and which rows are held (bool)."""
        table = self.table(name)
        self.check_ids(table, ids)
        return table.read(ids, touch=False)

    def push(
        self,
        worker_id: str,
        name: str,
        push_id: str,
        ids: torch.Tensor,
        grads: torch.Tensor,
        step: int,
        members: Iterable[str],
        more: bool = False,
    ) -> RowPushResult:
        """Applies (async) or buffers (sync) one worker's gradients for rows `ids`. Sync tables:
        `more` says further parts of this worker's step follow (a batch split to fit the
        limits); the step waits for each member's last part."""
        table = self.table(name)
        if not push_id:
            raise InvalidArgumentError("push_id: must not be empty (it makes a retried push harmless)")
        previous = self._push_results.get((worker_id, name, push_id))
        if previous is not None:
            return RowPushResult(RowPushOutcome.DUPLICATE, 0, previous.applied_step)
        self.check_ids(table, ids)
        self.check_grads(table, ids, grads)
        if table.spec.mode == "sync":
            result = self._push_sync(worker_id, table, ids, grads, step, set(members), more)
        else:
            if len(ids):
                table.apply(ids, grads)
            result = RowPushResult(RowPushOutcome.APPLIED, len(ids))
        self._remember(worker_id, name, push_id, result)
        return result

    def _remember(self, worker_id: str, table: str, push_id: str, result: RowPushResult) -> None:
        kept = self._pushes.setdefault((worker_id, table), deque())
        kept.append(push_id)
        self._push_results[(worker_id, table, push_id)] = result
        while len(kept) > PUSH_IDS_KEPT:
            self._push_results.pop((worker_id, table, kept.popleft()), None)

    def _push_sync(
        self,
        worker_id: str,
        table: RowTable,
        ids: torch.Tensor,
        grads: torch.Tensor,
        step: int,
        members: set[str],
        more: bool,
    ) -> RowPushResult:
        name = table.spec.name
        applied = self.applied_step[name]
        if step <= applied:
            return RowPushResult(RowPushOutcome.DROPPED_LATE, 0, applied)
        pending = self._pending[name]
        if step not in pending and step > applied + MAX_PENDING_STEPS:
            raise InvalidArgumentError(
                f"step: {step} is more than {MAX_PENDING_STEPS} steps ahead of table {name!r}'s last applied "
                f"step {applied}"
            )
        entry = pending.get(step) or _SyncStep()
        if worker_id in entry.done:
            raise InvalidArgumentError(f"step: {worker_id} pushed table {name!r} for step {step} already")
        pending[step] = entry
        entry.parts.append((ids, grads))
        if not more:
            entry.done.add(worker_id)
        rows = self.settle(members, only=name)
        if self.applied_step[name] >= step:
            return RowPushResult(RowPushOutcome.APPLIED, rows, self.applied_step[name])
        return RowPushResult(RowPushOutcome.BUFFERED, 0, self.applied_step[name])

    def settle(self, members: Iterable[str], only: str | None = None) -> int:
        """Applies every sync step, oldest first, that each current member pushed for; returns
        the rows changed. Called on every push, and when membership may have changed."""
        members = set(members)
        changed = 0
        for name, pending in self._pending.items():
            if only is not None and name != only:
                continue
            while pending:
                step, entry = next(iter(pending.items()))
                if not members <= entry.done:
                    break
                pending.popitem(last=False)
                changed += self._apply_summed(self.tables[name], entry.parts)
                self.applied_step[name] = step
        return changed

    @staticmethod
    def _apply_summed(table: RowTable, pushes: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        ids = torch.cat([i for i, _ in pushes])
        grads = torch.cat([g for _, g in pushes])
        if not len(ids):
            return 0
        unique, inverse = torch.unique(ids, return_inverse=True)
        summed = torch.zeros((len(unique), table.dim), dtype=torch.float32).index_add_(0, inverse, grads)
        table.apply(unique, summed)
        return len(unique)

    # --- snapshots -----------------------------------------------------------------------
    def force_full(self) -> None:
        """The next snapshot is full: the previous one was not written (a failed checkpoint),
        so a delta would miss its changes."""
        self._deltas = None

    def snapshot(self) -> RowsSnapshot:
        """A copy of the push ids remembered and of every table's rows (between two pushes):
        the rows changed since the previous snapshot (a delta), or all of them (full) for the
        first snapshot, after `force_full`, and after `DELTAS_PER_FULL` deltas."""
        delta = self._deltas is not None and self._deltas < DELTAS_PER_FULL
        self._deltas = self._deltas + 1 if delta and self._deltas is not None else 0
        tensors: dict[str, torch.Tensor] = {}
        tables: dict[str, Any] = {}
        for name, table in self.tables.items():
            tensors.update({f"{name}/{key}": t for key, t in table.snapshot(delta).items()})
            tables[name] = {
                "spec": table.spec.model_dump(mode="json"),
                "rows": len(table),
                "applied_step": self.applied_step.get(name, -1),
            }
        pushes = []
        for (worker, table_name), kept in self._pushes.items():
            for push_id in kept:
                result = self._push_results[(worker, table_name, push_id)]
                pushes.append({
                    "worker": worker, "table": table_name, "push_id": push_id, "outcome": result.outcome.value,
                    "applied_step": result.applied_step,
                })  # fmt: skip
        meta = {"shard_index": self.shard_index, "tables": tables, "recent_pushes": pushes}
        return RowsSnapshot(tensors, meta, DELTA if delta else FULL)

    def restore(self, snapshot: RowsSnapshot, where: str) -> None:
        """Loads a full snapshot of this job's shard into this fresh one (checks each table's
        spec); a chain of files is merged into one first (core/embeddings/delta.py)."""
        if snapshot.kind != FULL:
            raise DataLossError(f"{where}: a {snapshot.kind} snapshot of rows cannot be restored alone")
        tables = snapshot.meta.get("tables", {})
        if set(tables) != set(self.tables) or snapshot.meta.get("shard_index") != self.shard_index:
            raise DataLossError(
                f"{where}: rows of tables {sorted(tables)} for shard {snapshot.meta.get('shard_index')}, the job has "
                f"{sorted(self.tables)} on shard {self.shard_index}"
            )
        for name, table in self.tables.items():
            saved, now = tables[name].get("spec"), table.spec.model_dump(mode="json")
            if saved != now:
                raise DataLossError(f"{where}: table {name!r} was {saved}, the job has {now}")
        for name, table in self.tables.items():
            prefix = f"{name}/"
            table.restore({k.removeprefix(prefix): t for k, t in snapshot.tensors.items() if k.startswith(prefix)},
                          f"{where} table {name!r}")  # fmt: skip
            if name in self.applied_step:
                self.applied_step[name] = int(tables[name].get("applied_step", -1))
        for push in snapshot.meta.get("recent_pushes", []):
            result = RowPushResult(RowPushOutcome(push["outcome"]), 0, int(push["applied_step"]))
            self._remember(str(push["worker"]), str(push["table"]), str(push["push_id"]), result)
