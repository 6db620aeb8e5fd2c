"""How many bytes of embedding rows one shard may hold (docs/embeddings.md, "Memory per shard").

A shard is given a bound in bytes (`tidal shard --max-embedding-bytes`, 0: none) for the rows
of all of a job's tables together. A job's tables are spread over the shards by hash, so each
shard needs its share only; a table larger than one shard's bound trains when split over
enough shards. Two checks hold it:

- **when the job is assigned**, the share the job's tables may need on this shard
  (`planned_bytes`) must fit, or the shard refuses the job at once, naming the field;
- **while it trains**, a table never grows its slots past what the bound leaves
  (`RowTable`'s `room`), and a push that would need more is refused (RESOURCE_EXHAUSTED): the
  share of a bounded table is an estimate (hashing splits ids almost, not exactly, evenly).
"""

from __future__ import annotations

import math

from tidal.core.embeddings.optim import STATE_NAMES
from tidal.core.embeddings.spec import EmbeddingTableSpec
from tidal.core.errors import InvalidArgumentError
from tidal.core.spec import JobSpec

# Bytes of a row's bookkeeping in its slot: id, per-row step count, last use (int64 each).
SLOT_BOOKKEEPING_BYTES = 3 * 8
# Bytes of a row's entry in the id -> slot dict (the entry and its two int objects): about 106
# measured with CPython 3.12 on a million entries; rounded up.
INDEX_BYTES_PER_ROW = 112
# A bounded table's share of a shard is planned at its mean plus this many standard deviations
# of the binomial split (5: 0.2% over the mean for 5M rows a shard, 1.6% for 50k).
SHARE_SIGMAS = 5.0


def slot_bytes(spec: EmbeddingTableSpec) -> int:
    """Bytes of one allocated slot of `spec`'s table: values, optimizer state, bookkeeping."""
    return 4 * spec.dim * (1 + len(STATE_NAMES[spec.optimizer.name])) + SLOT_BOOKKEEPING_BYTES


def row_bytes(spec: EmbeddingTableSpec) -> int:
    """Bytes one held row of `spec`'s table costs its shard (slot and index entry)."""
    return slot_bytes(spec) + INDEX_BYTES_PER_ROW


def share_rows(spec: EmbeddingTableSpec, num_shards: int) -> int:
    """The most rows of `spec`'s table one of `num_shards` shards is planned to hold: a hashed
    table's limit (its capacity's share), a bounded table's share of its ids with a margin."""
    if spec.num_embeddings is None:
        return math.ceil((spec.capacity or 1) / num_shards)
    rows = spec.num_embeddings
    if num_shards == 1:
        return rows
    mean = rows / num_shards
    spread = math.sqrt(rows * (1 / num_shards) * (1 - 1 / num_shards))
    return min(rows, math.ceil(mean + SHARE_SIGMAS * spread))


def planned_bytes(spec: JobSpec, num_shards: int) -> dict[str, int]:
    """Per table, the bytes its share may need on one of `num_shards` shards."""
    return {t.name: share_rows(t, num_shards) * row_bytes(t) for t in spec.embeddings}


def check_fits(spec: JobSpec, shard_index: int, num_shards: int, max_bytes: int) -> None:
    """Refuses a job whose tables' share on this shard may need more than `max_bytes` (0: no bound)."""
    if max_bytes <= 0:
        return
    planned = planned_bytes(spec, num_shards)
    total = sum(planned.values())
    if total <= max_bytes:
        return
    parts = ", ".join(f"{t.name!r} {share_rows(t, num_shards):,} rows x {row_bytes(t)} bytes" for t in spec.embeddings)
    fewest = next((n for n in range(num_shards + 1, 4097) if sum(planned_bytes(spec, n).values()) <= max_bytes), None)
    advice = f"; num_shards: {fewest} would fit" if fewest is not None else ""
    raise InvalidArgumentError(
        f"embeddings: the tables' share of shard {shard_index} (of num_shards {num_shards}) may need "
        f"{total:,} bytes ({parts}), more than the shard's bound of {max_bytes:,} bytes "
        f"(--max-embedding-bytes){advice}"
    )
