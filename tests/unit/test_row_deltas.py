"""Incremental row checkpoints (core/embeddings/delta.py, core/rows_checkpoint.py): deltas of
the rows created, updated and evicted since the previous checkpoint, a full file every
DELTAS_PER_FULL deltas, restores from a chain equal to a full snapshot, a broken chain refused
naming its file, and pruning that keeps every file a kept checkpoint needs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from tidal.core.checkpoint import CheckpointStore
from tidal.core.embeddings.delta import DELTA, DELTAS_PER_FULL, FULL, merge, table_tensors
from tidal.core.embeddings.shard import RowShard, RowsSnapshot
from tidal.core.errors import DataLossError
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_snapshot import ShardSnapshot, snapshot_shard
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec
from tidal.shard.checkpointing import CheckpointMetrics, ShardCheckpointer
from tidal.transport.supervise import Supervisor

TABLES: list[dict[str, Any]] = [
    {"name": "items", "num_embeddings": 1000, "dim": 4, "optimizer": {"name": "adam", "lr": 0.1}},
    {"name": "users", "capacity": 6, "dim": 3, "optimizer": {"name": "adagrad", "lr": 0.5}},
    {"name": "ads", "num_embeddings": 100, "dim": 2, "mode": "sync", "optimizer": {"name": "sgd", "lr": 1.0}},
]
DIMS = {t["name"]: t["dim"] for t in TABLES}
SPEC = parse_job_spec({"seed": 5, "num_shards": 1, "embeddings": TABLES})


def _push_round(shards: list[RowShard], round_: int) -> None:
    """The same pushes into every shard: new ids and repeats; `users` (6 rows) evicts."""
    for shard in shards:
        for table, dim in DIMS.items():
            ids = torch.tensor(sorted({round_ % 5, 10 + round_, 20 + 2 * round_, 3}), dtype=torch.int64)
            grads = torch.linspace(-1.0, 1.0, len(ids) * dim).reshape(len(ids), dim) * (round_ + 1)
            shard.push("w", table, f"{table}:{round_}", ids, grads, round_, ["w"])
        shard.pull("items", torch.tensor([3, 10 + round_]))  # rows this round pushed: their last use moves


def _state(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per table: each id's values, steps and optimizer state, and the ids in last-use order."""
    out: dict[str, Any] = {}
    for table in DIMS:
        t = table_tensors(tensors, table)
        ids = t["ids"].tolist()
        rows = {key: {i: v.tolist() for i, v in zip(ids, value, strict=True)} for key, value in t.items()
                if key not in ("ids", "last_used")}  # fmt: skip
        out[table] = (rows, [ids[k] for k in torch.argsort(t["last_used"]).tolist()])
    return out


def _full(shard: RowShard) -> RowsSnapshot:
    shard.force_full()
    snapshot = shard.snapshot()
    assert snapshot.kind == FULL
    return snapshot


def _store_and_state(tmp_path: Path, keep_last: int) -> tuple[CheckpointStore, ShardState]:
    shard_map = build_shard_map((TensorInfo("w", (3,), "float32"),), 1)
    return CheckpointStore(tmp_path, keep_last=keep_last), ShardState(SPEC, 0, shard_map, torch.zeros(3), 1, ["w"])


def _checkpoint(store: CheckpointStore, state: ShardState, shard: RowShard, version: int) -> Path:
    state.version = version
    return store.write(replace(snapshot_shard("job-1", state), rows=shard.snapshot()))


def test_a_delta_holds_the_rows_created_updated_and_evicted_since_the_previous_snapshot() -> None:
    shard = RowShard(SPEC, 0, 1)
    _push_round([shard], 0)
    assert shard.snapshot().kind == FULL, "the first snapshot is full"
    empty = shard.snapshot()
    assert empty.kind == DELTA and all(len(t) == 0 for t in empty.tensors.values()), "nothing changed"
    shard.pull("items", torch.tensor([500]))  # a read creates nothing, changes nothing
    users = torch.tensor([40, 41, 42, 43, 44, 45], dtype=torch.int64)  # 6 new rows: every old one evicted
    shard.push("w", "users", "u", users, torch.ones(6, 3), 0, ["w"])
    shard.push("w", "items", "i", torch.tensor([3, 700]), torch.ones(2, 4), 0, ["w"])
    delta = shard.snapshot()
    assert delta.kind == DELTA
    assert sorted(delta.tensors["items/ids"].tolist()) == [3, 700] and delta.tensors["items/deleted"].tolist() == []
    assert sorted(delta.tensors["users/ids"].tolist()) == [40, 41, 42, 43, 44, 45]
    assert delta.tensors["users/deleted"].tolist() == [0, 3, 10, 20], "the evicted rows"
    assert delta.tensors["ads/ids"].tolist() == [] and delta.meta["tables"]["users"]["rows"] == 6


def test_a_chain_of_deltas_merges_into_exactly_the_full_snapshot() -> None:
    shard, twin = RowShard(SPEC, 0, 1), RowShard(SPEC, 0, 1)
    merged = shard.snapshot().tensors
    for round_ in range(6):
        _push_round([shard, twin], round_)
        delta = shard.snapshot()
        assert delta.kind == DELTA
        merged = merge(merged, delta.tensors, DIMS, "test")
        assert _state(merged) == _state(_full(twin).tensors), f"after round {round_}"
    restored = RowShard(SPEC, 0, 1)
    restored.restore(RowsSnapshot(merged, shard.snapshot().meta), "test")
    ids = torch.arange(30)
    for table in DIMS:
        held = ids if table != "users" else twin.tables["users"].snapshot()["ids"]
        assert torch.equal(restored.pull(table, held), twin.pull(table, held))


def test_a_full_snapshot_every_deltas_per_full_and_after_force_full() -> None:
    shard = RowShard(SPEC, 0, 1)
    kinds = [shard.snapshot().kind for _ in range(2 * (DELTAS_PER_FULL + 1))]
    assert kinds == ([FULL] + [DELTA] * DELTAS_PER_FULL) * 2
    shard.force_full()
    assert shard.snapshot().kind == FULL
    with pytest.raises(DataLossError, match="a delta snapshot of rows cannot be restored alone"):
        RowShard(SPEC, 0, 1).restore(shard.snapshot(), "test")


def test_checkpoints_restore_from_their_chain_and_pruning_keeps_what_a_kept_one_needs(tmp_path: Path) -> None:
    store, state = _store_and_state(tmp_path, keep_last=2)
    shard, twin = RowShard(SPEC, 0, 1), RowShard(SPEC, 0, 1)
    for version in range(2 * DELTAS_PER_FULL + 3):
        _push_round([shard, twin], version)
        manifest = _checkpoint(store, state, shard, version)
        chain = json.loads(manifest.read_text())["rows"]["chain"]
        assert [link["kind"] for link in chain] == [FULL] + [DELTA] * (version % (DELTAS_PER_FULL + 1))
        assert [link["version"] for link in chain] == list(range(version - len(chain) + 1, version + 1))
        loaded, refused = store.load_latest("job-1", 0)
        assert not refused and loaded.rows is not None and loaded.rows.kind == FULL
        assert _state(loaded.rows.tensors) == _state(_full(twin).tensors), f"version {version}"
        kept = sorted(manifest.parent.glob("v*.json"))
        assert len(kept) == min(2, version + 1)
        for older in kept:
            store.load(older, "job-1", 0)  # every kept checkpoint's chain is still whole
        needed = {link["file"] for m in kept for link in json.loads(m.read_text())["rows"]["chain"]}
        assert {p.name for p in manifest.parent.glob("*.rows*")} == needed, "nothing else is kept"


def test_a_broken_delta_in_the_chain_is_refused_naming_its_file(tmp_path: Path) -> None:
    store, state = _store_and_state(tmp_path, keep_last=5)
    shard = RowShard(SPEC, 0, 1)
    manifests = []
    for version in range(4):
        _push_round([shard], version)
        manifests.append(_checkpoint(store, state, shard, version))
    folder = manifests[0].parent
    delta = folder / "v000000000001.rows-delta.safetensors"
    data = bytearray(delta.read_bytes())
    original = bytes(data)
    data[-2] ^= 0xFF
    delta.write_bytes(bytes(data))
    with pytest.raises(
        DataLossError,
        match=r"rows file v000000000001\.rows-delta\.safetensors \(delta, 2 of 4 in the chain\): does not match the "
        r"manifest's size and sha256",
    ):
        store.load(manifests[3], "job-1", 0)
    delta.write_bytes(original)
    (folder / "v000000000002.rows-delta.safetensors").unlink()
    with pytest.raises(
        DataLossError,
        match=r"rows file v000000000002\.rows-delta\.safetensors \(delta, 3 of 4 in the chain\): unreadable",
    ):
        store.load(manifests[3], "job-1", 0)
    # Every checkpoint whose chain holds the missing file is refused: the newest whole one loads.
    loaded, refused = store.load_latest("job-1", 0)
    assert loaded.version == 1 and len(refused) == 2
    # A chain that does not start with a full file, or whose rows count disagrees, is refused too.
    entry = json.loads(manifests[0].read_text())
    entry["rows"]["chain"][0]["kind"] = DELTA
    manifests[0].write_text(json.dumps(entry))
    with pytest.raises(DataLossError, match=r"rows chain \['delta'\], expected one full file and then deltas"):
        store.load(manifests[0], "job-1", 0)


def test_a_delta_whose_rows_disagree_with_the_manifest_is_refused() -> None:
    shard = RowShard(SPEC, 0, 1)
    _push_round([shard], 0)
    base = shard.snapshot().tensors
    _push_round([shard], 1)
    delta = shard.snapshot().tensors
    del delta["users/deleted"]
    with pytest.raises(DataLossError, match=r"where: table 'users' has no 1-D int64 users/deleted tensor"):
        merge(base, delta, DIMS, "where")
    delta["users/deleted"] = torch.zeros(0, dtype=torch.int64)
    delta["users/values"] = torch.zeros((len(delta["users/ids"]), 5))
    with pytest.raises(DataLossError, match=r"where: table 'users' does not fit its base"):
        merge(base, delta, DIMS, "where")


def test_a_delta_needs_the_previous_checkpoint_of_this_process(tmp_path: Path) -> None:
    store, state = _store_and_state(tmp_path, keep_last=2)
    shard = RowShard(SPEC, 0, 1)
    shard.snapshot()  # a full snapshot that was never written (a failed write)
    with pytest.raises(RuntimeError, match="a delta of rows without a previous checkpoint"):
        _checkpoint(store, state, shard, 0)
    shard.force_full()  # what the checkpointer does after a write that did not complete
    manifest = _checkpoint(store, state, shard, 0)
    assert [link["kind"] for link in json.loads(manifest.read_text())["rows"]["chain"]] == [FULL]


def test_a_manifest_written_before_chains_still_loads(tmp_path: Path) -> None:
    store, state = _store_and_state(tmp_path, keep_last=2)
    shard = RowShard(SPEC, 0, 1)
    _push_round([shard], 0)
    manifest = _checkpoint(store, state, shard, 0)
    entry = json.loads(manifest.read_text())
    (link,) = entry["rows"]["chain"]
    entry["rows"] = {k: v for k, v in link.items() if k in ("file", "bytes", "sha256", "tensors")}
    entry["rows"]["meta"] = json.loads(manifest.read_text())["rows"]["meta"]
    manifest.write_text(json.dumps(entry))
    loaded = store.load(manifest, "job-1", 0)
    assert loaded.rows is not None
    assert _state(loaded.rows.tensors) == _state(_full(shard).tensors)


class _FailingOnce(CheckpointStore):
    """The real store, whose second write fails as a full disk would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, keep_last=3)
        self.calls = 0

    def write(self, snapshot: ShardSnapshot, keep_last: int | None = None) -> Path:
        self.calls += 1
        if self.calls == 2:
            raise OSError(28, "No space left on device")
        return super().write(snapshot, keep_last)


def test_after_a_failed_checkpoint_the_next_one_holds_every_row(tmp_path: Path) -> None:
    spec = parse_job_spec({"seed": 5, "num_shards": 1, "embeddings": TABLES, "checkpoint": {"every_versions": 1}})
    shard_map = build_shard_map((TensorInfo("w", (3,), "float32"),), 1)
    state = ShardState(spec, 0, shard_map, torch.zeros(3), 1, ["w"])
    store, shard, twin = _FailingOnce(tmp_path), RowShard(spec, 0, 1), RowShard(spec, 0, 1)

    async def run() -> None:
        supervisor = Supervisor(asyncio.Event())
        metrics = CheckpointMetrics(CollectorRegistry())
        checkpointer = ShardCheckpointer(store, "job-1", state, metrics, supervisor=supervisor, rows=shard)
        for version in range(1, 4):
            _push_round([shard, twin], version)
            state.version = version
            checkpointer.poke()
            assert checkpointer._writing is not None
            await asyncio.wait({checkpointer._writing})

    asyncio.run(run())
    folder = tmp_path / "job-1" / "shard-0"
    assert sorted(p.name for p in folder.glob("v*.json")) == ["v000000000001.json", "v000000000003.json"]
    chain = json.loads((folder / "v000000000003.json").read_text())["rows"]["chain"]
    assert [link["kind"] for link in chain] == [FULL], "version 2's changes were lost with its write"
    loaded, _ = store.load_latest("job-1", 0)
    assert loaded.rows is not None and _state(loaded.rows.tensors) == _state(_full(twin).tensors)
