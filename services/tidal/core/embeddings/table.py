"""One embedding table's rows on one shard: held by id, created on first push, evicted LRU.

Rows live in slot-indexed tensors (values, optimizer state, per-row step counts, last use)
that grow by doubling up to the table's limit on this shard, and a dict maps ids to slots.
A pull reads held rows and computes absent ones from their id (core/embeddings/init.py)
without storing them, so reads never grow the table; a push creates the rows it touches.

Memory is bounded: a bounded table holds at most `num_embeddings` rows, a hashed one at most
`max_rows`. When a push needs slots and none is free, the least recently used rows (pull or
push) not in that push are evicted: their values and optimizer state are dropped, and the id,
pulled again, starts over from its initial values. With a shard's bound in bytes
(core/embeddings/budget.py), `room` says what the shard's tables may still allocate: slots
grow no further, and a push that needs more is refused.

For incremental checkpoints (core/embeddings/delta.py) the table remembers the ids it changed
since its last snapshot: created or updated by a push, or evicted. A set of ids, not of slots:
an evicted row's slot is reused by another id, and the delete must still be recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tidal.core.embeddings.budget import row_bytes
from tidal.core.embeddings.init import initial_rows
from tidal.core.embeddings.optim import STATE_NAMES, initial_state, step_rows
from tidal.core.embeddings.spec import EmbeddingTableSpec
from tidal.core.errors import DataLossError, InvalidArgumentError, ResourceExhaustedError

# Slots allocated when a table first grows (then doubled as needed, up to its limit).
FIRST_SLOTS = 1024
IDS, VALUES, STEPS, LAST_USED = "ids", "values", "steps", "last_used"
# In a delta snapshot: ids held at the previous snapshot (or created since) that are gone now.
DELETED = "deleted"


@dataclass
class TableCounters:
    rows_pulled: int = 0
    rows_pushed: int = 0
    evictions: int = 0


class RowTable:
    def __init__(
        self, spec: EmbeddingTableSpec, seed: int, max_rows: int, room: Callable[[], int | None] | None = None
    ) -> None:
        self.spec = spec
        self.seed = seed
        self.dim = spec.dim
        # Most rows this table holds on this shard.
        self.max_rows = max_rows
        # Bytes the shard's tables may still allocate under its bound (None: no bound).
        self.room = room or (lambda: None)
        self.row_bytes = row_bytes(spec)
        self.counters = TableCounters()
        self._slot: dict[int, int] = {}
        self._ids = torch.empty(0, dtype=torch.int64)
        self._values = torch.empty((0, self.dim), dtype=torch.float32)
        self._state = initial_state(spec.optimizer, 0, self.dim)
        self._steps = torch.empty(0, dtype=torch.int64)
        self._last_used = torch.empty(0, dtype=torch.int64)
        self._free: list[int] = []
        # Bumped by every pull and push: a row's last use is the tick it was last touched at.
        self._tick = 0
        # Ids created, updated or evicted since the last snapshot (incremental checkpoints).
        self._changed: set[int] = set()

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def held_bytes(self) -> int:
        """Bytes of the slots allocated (values, optimizer state, bookkeeping), each with the
        id -> slot index entry of the row it holds or will hold (an estimate, budget.py)."""
        return self.row_bytes * len(self._ids)

    # --- reading -------------------------------------------------------------------------
    def _slots(self, ids: torch.Tensor) -> torch.Tensor:
        """The slot of each id, -1 where the row is not held."""
        get = self._slot.get
        return torch.tensor([get(i, -1) for i in ids.tolist()], dtype=torch.int64)

    def read(self, ids: torch.Tensor, touch: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `ids` (checked by the caller): held ones as they are, others as they would be
        created; and which are held (bool). `touch` counts it as a use for eviction (a pull;
        not a read-only look)."""
        slots = self._slots(ids)
        held = slots >= 0
        rows = torch.empty((len(ids), self.dim), dtype=torch.float32)
        rows[held] = self._values[slots[held]]
        if not bool(held.all()):
            absent = ~held
            rows[absent] = initial_rows(self.seed, self.spec.name, ids[absent], self.dim, self.spec.init)
        if touch:
            self._tick += 1
            self._last_used[slots[held]] = self._tick
            self.counters.rows_pulled += len(ids)
        return rows, held

    # --- writing -------------------------------------------------------------------------
    def apply(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """One optimizer step on rows `ids` (unique, checked by the caller) with `grads`
        (float32, (len(ids), dim), finite), creating the rows not held yet."""
        if len(ids) > self.max_rows:
            raise InvalidArgumentError(
                f"ids: {len(ids)} rows in one push, more than table {self.spec.name!r} holds on this shard "
                f"({self.max_rows})"
            )
        self._tick += 1
        id_list = ids.tolist()
        self._changed.update(id_list)
        get = self._slot.get
        slots = torch.tensor([get(i, -1) for i in id_list], dtype=torch.int64)
        held = slots >= 0
        self._last_used[slots[held]] = self._tick  # before eviction: this push's rows stay
        absent = torch.nonzero(~held, as_tuple=True)[0]
        if len(absent):
            new_ids = ids[absent]
            new_slots = self._allocate(len(new_ids))
            self._values[new_slots] = initial_rows(self.seed, self.spec.name, new_ids, self.dim, self.spec.init)
            for name, tensor in initial_state(self.spec.optimizer, len(new_ids), self.dim).items():
                self._state[name][new_slots] = tensor
            self._steps[new_slots] = 0
            self._ids[new_slots] = new_ids
            self._slot.update(zip(new_ids.tolist(), new_slots.tolist(), strict=True))
            slots[absent] = new_slots
        self._last_used[slots] = self._tick
        self._steps[slots] += 1
        values = self._values[slots]
        state = {name: tensor[slots] for name, tensor in self._state.items()}
        step_rows(self.spec.optimizer, values, grads, state, self._steps[slots])
        self._values[slots] = values
        for name, tensor in state.items():
            self._state[name][slots] = tensor
        self.counters.rows_pushed += len(ids)

    def _allocate(self, count: int) -> torch.Tensor:
        """`count` free slots: free ones first, then by growing, then by evicting."""
        if len(self._free) < count and len(self._ids) < self.max_rows:
            self._grow(len(self._slot) + count)
        if len(self._free) < count:
            self._evict(count - len(self._free))
        taken, self._free = self._free[-count:], self._free[:-count]
        return torch.tensor(taken, dtype=torch.int64)

    def _grow(self, needed: int) -> None:
        old = len(self._ids)
        new = min(self.max_rows, max(FIRST_SLOTS, 2 * old, needed))
        room = self.room()
        if room is not None:
            affordable = old + max(0, room) // self.row_bytes
            if min(needed, self.max_rows) > affordable:
                raise ResourceExhaustedError(
                    f"ids: table {self.spec.name!r} needs {needed - len(self._slot)} more rows on this shard, "
                    f"which has {room:,} bytes left of its bound (--max-embedding-bytes; {self.row_bytes} bytes "
                    "a row): spread the table over more shards (num_shards) or raise the bound"
                )
            new = min(new, affordable)
        extra = new - old
        self._ids = torch.cat([self._ids, torch.full((extra,), -1, dtype=torch.int64)])
        self._values = torch.cat([self._values, torch.zeros((extra, self.dim))])
        self._state = {n: torch.cat([t, torch.zeros((extra, self.dim))]) for n, t in self._state.items()}
        self._steps = torch.cat([self._steps, torch.zeros(extra, dtype=torch.int64)])
        # Free slots read as most recently used: eviction never picks them.
        self._last_used = torch.cat([self._last_used, torch.full((extra,), torch.iinfo(torch.int64).max)])
        self._free.extend(range(new - 1, old - 1, -1))  # popped from the end: lowest slot first

    def _evict(self, count: int) -> None:
        """Drops the `count` least recently used rows (the current push's are the most recent)."""
        victims = torch.topk(self._last_used, count, largest=False).indices
        victim_ids = self._ids[victims].tolist()
        for victim_id in victim_ids:
            del self._slot[victim_id]
        self._changed.update(victim_ids)
        self._ids[victims] = -1
        self._last_used[victims] = torch.iinfo(torch.int64).max
        self._free.extend(victims.tolist())
        self.counters.evictions += count

    # --- snapshots -----------------------------------------------------------------------
    def snapshot(self, delta: bool = False) -> dict[str, torch.Tensor]:
        """Copies of the held rows: ids, values, per-row steps and last use (as ranks, oldest
        first), and the optimizer state, in slot order. `delta`: only the rows changed since
        the previous snapshot, with the ids deleted since (`deleted`, ascending); their ranks
        order the changed rows among themselves. Either way the changes are forgotten."""
        if delta:
            changed = sorted(self._changed)
            get = self._slot.get
            slots = torch.tensor(sorted(s for i in changed if (s := get(i)) is not None), dtype=torch.int64)
            deleted = torch.tensor([i for i in changed if i not in self._slot], dtype=torch.int64)
        else:
            slots = torch.tensor(sorted(self._slot.values()), dtype=torch.int64)
        self._changed = set()
        # Ticks restart from 0 after a restore; ranks keep the order (rows used by one push tie:
        # by slot, so a full snapshot and a chain of deltas rank them alike).
        ranks = torch.argsort(torch.argsort(self._last_used[slots], stable=True))
        tensors = {
            IDS: self._ids[slots].clone(),
            VALUES: self._values[slots].clone(),
            STEPS: self._steps[slots].clone(),
            LAST_USED: ranks,
        }
        tensors.update({f"optimizer.{n}": t[slots].clone() for n, t in self._state.items()})
        if delta:
            tensors[DELETED] = deleted
        return tensors

    def restore(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Loads a snapshot of the same table into this empty one; checks it fits first."""
        names = {IDS, VALUES, STEPS, LAST_USED, *(f"optimizer.{n}" for n in STATE_NAMES[self.spec.optimizer.name])}
        if set(tensors) != names:
            raise DataLossError(f"{where}: tensors {sorted(tensors)}, expected {sorted(names)}")
        ids = tensors[IDS]
        n = len(ids)
        shapes = {IDS: (n,), STEPS: (n,), LAST_USED: (n,)}
        for name, tensor in tensors.items():
            expected = shapes.get(name, (n, self.dim))
            if tuple(tensor.shape) != expected:
                raise DataLossError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected {expected}")
        if n > self.max_rows or len(torch.unique(ids)) != n:
            raise DataLossError(f"{where}: {n} rows (at most {self.max_rows}, each id once)")
        if n:
            self._grow(n)
            slots = torch.arange(n)
            self._free = [s for s in self._free if s >= n]
            self._ids[slots] = ids
            self._values[slots] = tensors[VALUES].to(torch.float32)
            self._steps[slots] = tensors[STEPS].to(torch.int64)
            self._last_used[slots] = tensors[LAST_USED].to(torch.int64)
            for name in self._state:
                self._state[name][slots] = tensors[f"optimizer.{name}"].to(torch.float32)
            self._slot = dict(zip(ids.tolist(), range(n), strict=True))
            self._tick = n
        self._changed = set()
