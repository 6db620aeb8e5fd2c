"""core/embeddings: routing, initialisation, one table's rows (capacity, LRU eviction), the
checks of a shard's requests, push deduplication, sync steps, snapshots and checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tidal.core.checkpoint import CheckpointStore
from tidal.core.embeddings.budget import INDEX_BYTES_PER_ROW
from tidal.core.embeddings.init import initial_rows
from tidal.core.embeddings.routing import shard_of, split_by_shard
from tidal.core.embeddings.shard import MAX_PENDING_STEPS, RowPushOutcome, RowShard
from tidal.core.embeddings.spec import EmbeddingTableSpec, RowInitSpec
from tidal.core.embeddings.table import RowTable
from tidal.core.errors import DataLossError, InvalidArgumentError, NonFiniteGradientError
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_snapshot import snapshot_shard
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec

TABLES: list[dict[str, Any]] = [
    {"name": "items", "num_embeddings": 1000, "dim": 4, "optimizer": {"name": "adagrad", "lr": 0.1}},
    {"name": "users", "capacity": 8, "dim": 3, "optimizer": {"name": "sgd", "lr": 1.0}},
    {"name": "ads", "num_embeddings": 100, "dim": 2, "mode": "sync", "optimizer": {"name": "sgd", "lr": 1.0}},
]


def job_spec(num_shards: int = 1, tables: list[dict[str, Any]] | None = None) -> Any:
    return parse_job_spec({"seed": 5, "num_shards": num_shards, "embeddings": tables or TABLES})


def mine(shard: RowShard, table: str, ids: list[int]) -> torch.Tensor:
    """The ids of `ids` that `shard` holds."""
    t = torch.tensor(ids, dtype=torch.int64)
    return t[shard_of(table, t, shard.num_shards) == shard.shard_index]


# --- routing and initialisation --------------------------------------------------------------
def test_routing_is_stable_spreads_over_every_shard_and_differs_per_table() -> None:
    ids = torch.arange(10_000, dtype=torch.int64)
    shards = shard_of("items", ids, 4)
    assert torch.equal(shards, shard_of("items", ids.flip(0), 4).flip(0)), "an id's shard does not depend on the batch"
    counts = torch.bincount(shards, minlength=4)
    assert int(counts.min()) > 2300, counts  # 2,500 each on average
    assert not torch.equal(shards, shard_of("users", ids, 4))
    hashed = torch.tensor([-(2**63), -1, 2**63 - 1, 123456789012345], dtype=torch.int64)
    assert set(shard_of("users", hashed, 3).tolist()) <= {0, 1, 2}
    parts = split_by_shard("items", ids[:50], 4)
    assert sorted(torch.cat(parts).tolist()) == list(range(50))
    # Pinned: workers and shards of different releases must agree, and a checkpoint's rows
    # must stay on their shard; changing the hash is a format change.
    assert shard_of("items", torch.tensor([0, 1, 2, 3, 4, 2**40, -7]), 4).tolist() == [1, 3, 0, 2, 1, 0, 3]


def test_initial_rows_depend_on_seed_table_and_id_only() -> None:
    init = RowInitSpec(distribution="normal", scale=0.5)
    a = initial_rows(1, "items", torch.tensor([7, 3, 9]), 64, init)
    b = initial_rows(1, "items", torch.tensor([9, 7]), 64, init)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a, initial_rows(2, "items", torch.tensor([7, 3, 9]), 64, init))
    assert not torch.equal(a, initial_rows(1, "users", torch.tensor([7, 3, 9]), 64, init))
    big = initial_rows(1, "items", torch.arange(2000), 64, init)
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 0.5) < 0.01
    uniform = initial_rows(1, "items", torch.arange(2000), 16, RowInitSpec(distribution="uniform", scale=0.2))
    assert float(uniform.min()) >= -0.2 and float(uniform.max()) < 0.2 and float(uniform.std()) > 0.1
    assert not initial_rows(1, "x", torch.arange(3), 4, RowInitSpec(distribution="zeros")).any()
    # Pinned as the routing is: a restored checkpoint's untouched rows must read as before.
    pinned = [[-0.006360208615660667, -0.0010949360439553857, -0.004465609788894653]]
    assert initial_rows(1, "items", torch.tensor([7]), 3, RowInitSpec()).tolist() == pinned


def test_a_row_is_the_same_on_any_shard_layout() -> None:
    """A row pushed on a 1-shard job and on its shard of a 3-shard job ends the same."""
    ids = torch.arange(30, dtype=torch.int64)
    one = RowShard(job_spec(1), 0, 1)
    one.push("w", "items", "p", ids, torch.ones(30, 4), 0, ["w"])
    for index in range(3):
        shard = RowShard(job_spec(3), index, 3)
        held = mine(shard, "items", list(range(30)))
        shard.push("w", "items", "p", held, torch.ones(len(held), 4), 0, ["w"])
        assert torch.equal(shard.pull("items", held), one.pull("items", held))


# --- one table ------------------------------------------------------------------------------
def test_pull_does_not_create_rows_push_does() -> None:
    shard = RowShard(job_spec(), 0, 1)
    ids = torch.tensor([5, 1, 999])
    before = shard.pull("items", ids)
    assert len(shard.tables["items"]) == 0
    assert torch.equal(before, initial_rows(5, "items", ids, 4, shard.tables["items"].spec.init))
    shard.push("w", "items", "p1", ids, torch.ones(3, 4), 0, ["w"])
    assert len(shard.tables["items"]) == 3
    # Adagrad's first step: lr * g / (|g| + eps) = 0.1 per element.
    torch.testing.assert_close(shard.pull("items", ids), before - 0.1)


def test_hashed_table_evicts_the_least_recently_used_rows_and_stays_bounded() -> None:
    spec = EmbeddingTableSpec(name="users", capacity=4, dim=2, optimizer={"name": "sgd", "lr": 1.0})
    table = RowTable(spec, seed=0, max_rows=4)
    table.apply(torch.tensor([1, 2, 3, 4]), torch.ones(4, 2))
    table.read(torch.tensor([1]))  # a pull counts as a use: 1 is now the most recent
    table.apply(torch.tensor([10, 11]), torch.ones(2, 2))
    held = table.read(torch.tensor([1, 2, 3, 4, 10, 11]), touch=False)[1]
    assert held.tolist() == [True, False, False, True, True, True]
    assert len(table) == 4 and table.counters.evictions == 2
    assert table.held_bytes == 4 * (4 * 2 + 3 * 8 + INDEX_BYTES_PER_ROW), "never more slots than the capacity"
    # An evicted id starts over from its initial value.
    again = table.read(torch.tensor([2]), touch=False)[0]
    assert torch.equal(again, initial_rows(0, "users", torch.tensor([2]), 2, spec.init))
    with pytest.raises(InvalidArgumentError, match="ids: 5 rows in one push, more than table 'users' holds"):
        table.apply(torch.arange(5), torch.ones(5, 2))
    for start in range(0, 400, 4):  # many more ids than the capacity
        table.apply(torch.arange(start, start + 4) + 100, torch.ones(4, 2))
    assert len(table) == 4 and table.held_bytes == 4 * (4 * 2 + 3 * 8 + INDEX_BYTES_PER_ROW)


# --- checks ---------------------------------------------------------------------------------
def test_refusals_name_the_field_and_a_few_ids_and_change_nothing() -> None:
    shard = RowShard(job_spec(), 0, 1)
    ids = torch.tensor([1, 2])
    shard.push("w", "items", "p0", ids, torch.ones(2, 4), 0, ["w"])
    rows = shard.pull("items", ids)
    bad = torch.tensor([3, 1000, -1, 2000, 5000, 6000, 7000, 8000])
    with pytest.raises(InvalidArgumentError, match=r"ids: 7 ids outside table 'items''s range \[0, 1000\): "
                       r"1000, -1, 2000, 5000, 6000 and 2 more"):  # fmt: skip
        shard.push("w", "items", "p1", bad, torch.ones(8, 4), 0, ["w"])
    with pytest.raises(InvalidArgumentError, match=r"ids: 1 ids appear more than once .*: 2$"):
        shard.push("w", "items", "p2", torch.tensor([2, 3, 2]), torch.ones(3, 4), 0, ["w"])
    with pytest.raises(InvalidArgumentError, match=r"grads: expected float32 \(2, 4\)"):
        shard.push("w", "items", "p3", ids, torch.ones(2, 3), 0, ["w"])
    nan = torch.ones(2, 4)
    nan[1, 2] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"grads: NaN or Inf in the rows of 1 ids of table 'items': 2$"):
        shard.push("w", "items", "p4", ids, nan, 0, ["w"])
    with pytest.raises(InvalidArgumentError, match=r"table: job 'job' has no embedding table 'nope' \(tables: ads, "):
        shard.pull("nope", ids)
    assert torch.equal(shard.pull("items", ids), rows)
    assert shard.refused_ids["items"] == 7 + 1 + 1


def test_ids_of_another_shard_are_refused() -> None:
    shard = RowShard(job_spec(2), 1, 2)
    others = torch.tensor([i for i in range(40) if int(shard_of("items", torch.tensor([i]), 2)) == 0])
    with pytest.raises(InvalidArgumentError, match=f"ids: {len(others)} ids of table 'items' belong to other shards"):
        shard.pull("items", others)


def test_a_repeated_push_id_is_a_duplicate_and_not_applied_again() -> None:
    shard = RowShard(job_spec(), 0, 1)
    ids = torch.tensor([4])
    first = shard.push("w", "items", "w:1", ids, torch.ones(1, 4), 0, ["w"])
    after = shard.pull("items", ids)
    again = shard.push("w", "items", "w:1", ids, torch.ones(1, 4), 0, ["w"])
    assert (first.outcome, again.outcome) == (RowPushOutcome.APPLIED, RowPushOutcome.DUPLICATE)
    assert torch.equal(shard.pull("items", ids), after)
    # Another worker's push, or another table's, under the same id is its own.
    assert shard.push("v", "items", "w:1", ids, torch.ones(1, 4), 0, ["w", "v"]).outcome is RowPushOutcome.APPLIED
    assert shard.push("w", "users", "w:1", ids, torch.ones(1, 3), 0, ["w"]).outcome is RowPushOutcome.APPLIED


# --- sync tables ----------------------------------------------------------------------------
def test_sync_step_sums_every_workers_gradients_and_applies_once() -> None:
    shard = RowShard(job_spec(), 0, 1)
    start = shard.pull("ads", torch.tensor([1, 2, 3]))
    members = ["w0", "w1"]
    a = shard.push("w0", "ads", "a", torch.tensor([1, 2]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]), 0, members)
    assert a.outcome is RowPushOutcome.BUFFERED and shard.applied_step["ads"] == -1
    assert torch.equal(shard.pull("ads", torch.tensor([1, 2, 3])), start), "nothing applied before the last push"
    b = shard.push("w1", "ads", "b", torch.tensor([2, 3]), torch.tensor([[10.0, 10.0], [20.0, 20.0]]), 0, members)
    assert (b.outcome, b.rows_applied, b.applied_step) == (RowPushOutcome.APPLIED, 3, 0)
    expected = start - torch.tensor([[1.0, 1.0], [12.0, 12.0], [20.0, 20.0]])  # lr 1, id 2 summed
    torch.testing.assert_close(shard.pull("ads", torch.tensor([1, 2, 3])), expected)
    late = shard.push("w0", "ads", "c", torch.tensor([1]), torch.ones(1, 2), 0, members)
    assert late.outcome is RowPushOutcome.DROPPED_LATE
    assert shard.tables["ads"].read(torch.tensor([2]), touch=False)[0].tolist() == expected[1:2].tolist()


def test_sync_step_completes_when_the_missing_worker_leaves_and_bounds_pending_steps() -> None:
    shard = RowShard(job_spec(), 0, 1)
    shard.push("w0", "ads", "a", torch.tensor([1]), torch.ones(1, 2), 0, ["w0", "w1"])
    assert shard.settle(["w0"]) == 1 and shard.applied_step["ads"] == 0
    with pytest.raises(InvalidArgumentError, match=f"step: {MAX_PENDING_STEPS + 1} is more than"):
        shard.push("w0", "ads", "z", torch.tensor([1]), torch.ones(1, 2), MAX_PENDING_STEPS + 1, ["w0", "w1"])


def test_sync_step_waits_for_each_workers_last_part_and_takes_empty_pushes() -> None:
    shard = RowShard(job_spec(), 0, 1)
    start = shard.pull("ads", torch.tensor([1, 2]))
    members = ["w0", "w1"]
    first = shard.push("w0", "ads", "a0", torch.tensor([1]), torch.ones(1, 2), 0, members, more=True)
    empty = shard.push("w1", "ads", "b0", torch.tensor([], dtype=torch.int64), torch.ones(0, 2), 0, members)
    assert (first.outcome, empty.outcome) == (RowPushOutcome.BUFFERED, RowPushOutcome.BUFFERED)
    last = shard.push("w0", "ads", "a1", torch.tensor([1, 2]), torch.ones(2, 2), 0, members)
    assert (last.outcome, last.rows_applied) == (RowPushOutcome.APPLIED, 2)
    torch.testing.assert_close(shard.pull("ads", torch.tensor([1, 2])), start - torch.tensor([[2.0, 2.0], [1.0, 1.0]]))
    with pytest.raises(InvalidArgumentError, match="step: w0 pushed table 'ads' for step 1 already"):
        shard.push("w0", "ads", "a2", torch.tensor([1]), torch.ones(1, 2), 1, members)
        shard.push("w0", "ads", "a3", torch.tensor([1]), torch.ones(1, 2), 1, members)


# --- snapshots and checkpoints --------------------------------------------------------------
def _trained(num_shards: int = 1, index: int = 0) -> RowShard:
    shard = RowShard(job_spec(num_shards), index, num_shards)
    for step in range(3):
        for table, dim in (("items", 4), ("users", 3)):
            ids = mine(shard, table, [step, step + 10, step + 20])
            shard.push("w", table, f"{table}:{step}", ids, torch.full((len(ids), dim), 0.5), step, ["w"])
    return shard


def test_snapshot_restores_rows_state_and_push_ids_exactly() -> None:
    shard = _trained()
    copy = RowShard(job_spec(), 0, 1)
    full = shard.snapshot()
    copy.restore(full, "test")
    for table, dim in (("items", 4), ("users", 3)):
        ids = torch.tensor([0, 1, 2, 10, 11, 12, 20, 21, 22])
        if table == "users":
            ids = ids[-8:]
        assert torch.equal(copy.pull(table, ids), shard.pull(table, ids))
        # The same next push gives the same rows: the optimizer state came along.
        shard.push("w", table, "next", ids, torch.ones(len(ids), dim), 5, ["w"])
        copy.push("w", table, "next", ids, torch.ones(len(ids), dim), 5, ["w"])
        assert torch.equal(copy.pull(table, ids), shard.pull(table, ids))
    repeated = copy.push("w", "items", "items:2", torch.tensor([2]), torch.ones(1, 4), 0, ["w"])
    assert repeated.outcome is RowPushOutcome.DUPLICATE, "push ids survive a restore"
    other = RowShard(job_spec(tables=[{**TABLES[0], "dim": 5}, *TABLES[1:]]), 0, 1)
    with pytest.raises(DataLossError, match="table 'items' was"):
        other.restore(full, "test")


def test_checkpoint_files_hold_the_rows_and_refuse_a_tampered_rows_file(tmp_path: Path) -> None:
    spec = job_spec()
    shard_map = build_shard_map((TensorInfo("w", (3,), "float32"),), 1)
    state = ShardState(spec, 0, shard_map, torch.zeros(3), 1, ["w"])
    rows = _trained()
    store = CheckpointStore(tmp_path, keep_last=1)
    manifest = store.write(replace(snapshot_shard("job-1", state), rows=rows.snapshot()))
    rows_file = manifest.with_suffix(".rows.safetensors")
    assert rows_file.exists() and "rows" in json.loads(manifest.read_text())
    loaded, _ = store.load_latest("job-1", 0)
    restored = RowShard(spec, 0, 1)
    assert loaded.rows is not None
    restored.restore(loaded.rows, "test")
    ids = torch.tensor([0, 1, 2, 10])
    assert torch.equal(restored.pull("items", ids), rows.pull("items", ids))
    data = bytearray(rows_file.read_bytes())
    data[-1] ^= 0xFF
    rows_file.write_bytes(bytes(data))
    with pytest.raises(DataLossError, match=r"rows file .* does not match the manifest's size and sha256"):
        store.load(manifest, "job-1", 0)
    state.version = 1
    newer = store.write(replace(snapshot_shard("job-1", state), rows=rows.snapshot()))
    assert rows_file.exists(), "the newer checkpoint is a delta on this full file: kept"
    assert not newer.with_suffix(".rows.safetensors").exists() and not manifest.exists()
    state.version = 2
    rows.force_full()
    newest = store.write(replace(snapshot_shard("job-1", state), rows=rows.snapshot()))
    assert not rows_file.exists(), "keep_last removes old rows files once no kept checkpoint names them"
    assert sorted(p.name for p in newest.parent.glob("*.rows*")) == ["v000000000002.rows.safetensors"]
