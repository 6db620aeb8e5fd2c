"""A shard's bound on the bytes of embedding rows it holds (core/embeddings/budget.py): a job
whose share of its tables may not fit is refused naming the field; split over enough shards
the same table fits and trains, every shard within its bound; a table never grows past it."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tidal.core.embeddings.budget import check_fits, planned_bytes, row_bytes, share_rows
from tidal.core.embeddings.routing import split_by_shard
from tidal.core.embeddings.shard import RowShard
from tidal.core.embeddings.spec import EmbeddingTableSpec
from tidal.core.embeddings.table import RowTable
from tidal.core.errors import InvalidArgumentError, ResourceExhaustedError
from tidal.core.spec import parse_job_spec

ROWS = 20_000
TABLE: dict[str, Any] = {"name": "items", "num_embeddings": ROWS, "dim": 8, "optimizer": {"name": "adagrad", "lr": 0.1}}


def job(num_shards: int, tables: list[dict[str, Any]] | None = None) -> Any:
    return parse_job_spec({"seed": 3, "num_shards": num_shards, "embeddings": tables or [TABLE]})


def test_row_bytes_count_values_optimizer_state_bookkeeping_and_index() -> None:
    spec = job(1).embeddings[0]
    assert row_bytes(spec) == 4 * 8 * 2 + 3 * 8 + 112  # values + adagrad's sum, id/steps/last use, index
    assert share_rows(spec, 1) == ROWS
    # Two shards: half of the ids, plus a margin of 5 binomial standard deviations (5 * 70.7).
    assert share_rows(spec, 2) == 10_000 + 354
    hashed = EmbeddingTableSpec(name="users", capacity=1001, dim=4, optimizer={"name": "sgd", "lr": 1.0})
    assert share_rows(hashed, 2) == 501


def test_a_table_over_one_shards_bound_is_refused_on_one_shard_naming_the_field() -> None:
    bound = int(0.6 * ROWS * row_bytes(job(1).embeddings[0]))  # 60% of the table
    with pytest.raises(InvalidArgumentError) as refused:
        RowShard(job(1), 0, 1, max_bytes=bound)
    message = str(refused.value)
    assert message.startswith("embeddings: the tables' share of shard 0 (of num_shards 1) may need 4,000,000 bytes")
    assert (
        "'items' 20,000 rows x 200 bytes" in message and f"bound of {bound:,} bytes (--max-embedding-bytes)" in message
    )
    assert message.endswith("num_shards: 2 would fit")
    check_fits(job(1), 0, 1, 0)  # 0: no bound
    assert sum(planned_bytes(job(2), 2).values()) <= bound


def test_a_table_larger_than_one_shards_bound_trains_split_over_two() -> None:
    spec = job(2)
    per_row = row_bytes(spec.embeddings[0])
    bound = int(0.6 * ROWS * per_row)
    shards = [RowShard(spec, i, 2, max_bytes=bound) for i in range(2)]
    ids = torch.arange(ROWS, dtype=torch.int64)
    for step, batch in enumerate(ids[torch.randperm(ROWS, generator=torch.Generator().manual_seed(0))].split(4096)):
        for shard, positions in zip(shards, split_by_shard("items", batch, 2), strict=True):
            mine = torch.sort(batch[positions]).values
            shard.push("w", "items", f"p{step}", mine, torch.ones(len(mine), 8), step, ["w"])
    held = [len(s.tables["items"]) for s in shards]
    assert sum(held) == ROWS and ROWS * per_row > bound, "every row trained: more than one shard may hold"
    assert all(s.tables["items"].held_bytes <= bound for s in shards), [s.tables["items"].held_bytes for s in shards]


def test_a_table_never_grows_past_the_room_left_and_a_push_needing_more_is_refused() -> None:
    spec = job(1).embeddings[0]
    room = {"bytes": 3000 * row_bytes(spec)}
    table = RowTable(spec, seed=0, max_rows=ROWS, room=lambda: room["bytes"] - table.held_bytes)
    table.apply(torch.arange(2000), torch.ones(2000, 8))
    assert table.held_bytes <= room["bytes"], "doubling stops at the bound (2048 slots would fit, 4096 not)"
    table.apply(torch.arange(2000, 3000), torch.ones(1000, 8))
    assert len(table) == 3000 and table.held_bytes == 3000 * row_bytes(spec)
    with pytest.raises(
        ResourceExhaustedError, match=r"ids: table 'items' needs 1 more rows on this shard, which has 0 bytes"
    ):
        table.apply(torch.tensor([3000]), torch.ones(1, 8))
    assert len(table) == 3000, "nothing created"
    table.apply(torch.tensor([5]), torch.ones(1, 8))  # rows it holds still train
