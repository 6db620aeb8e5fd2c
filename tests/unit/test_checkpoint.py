"""Unit tests for tidal.core.checkpoint, shard_snapshot and recovery: atomic writes, keep-last-K,
refusal of corrupt, tampered or pickled checkpoints, fallback to the previous valid one, exact
restore, what a restore lost.

The reference for a restore is the same shard continuing without one: a shard restored from
a checkpoint and fed the same pushes must end with bit-identical parameters and optimizer
state, whichever optimizer it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from tidal.core.checkpoint import CheckpointSchedule, CheckpointStore
from tidal.core.errors import DataLossError, InvalidArgumentError
from tidal.core.push_outcomes import PushOutcome
from tidal.core.recovery import RecoveryLedger
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_snapshot import restore_shard, snapshot_shard
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec

TENSORS = (TensorInfo("a.weight", (4, 5), "float32"), TensorInfo("a.bias", (4,), "float32"))
TOTAL = 24
JOB = "ckpt-1"
OPTIMIZERS = [
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    {"name": "adam", "lr": 0.01},
    {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
    {"name": "adagrad", "lr": 0.1},
]


def make_state(mode: str = "async", optimizer: dict[str, Any] | None = None, shard: int = 0) -> ShardState:
    spec = parse_job_spec(
        {"mode": mode, "num_workers": 2, "num_shards": 2, "optimizer": optimizer or {"name": "sgd", "lr": 0.1}}
    )
    shard_map = build_shard_map(TENSORS, 2)
    start, end = shard_map.ranges[shard]
    initial = torch.linspace(-1, 1, TOTAL)[start:end].clone()
    return ShardState(spec, shard, shard_map, initial, membership_epoch=3, workers=["w0", "w1"])


def grad_for(state: ShardState, i: int) -> torch.Tensor:
    return torch.randn(state.numel, generator=torch.Generator().manual_seed(i))


def push_async(state: ShardState, start: int, count: int) -> None:
    for i in range(start, start + count):
        worker = f"w{i % 2}"
        state.push(worker, f"{worker}:{i}", state.version, 3, grad_for(state, i))


def write(store: CheckpointStore, state: ShardState) -> Path:
    return store.write(snapshot_shard(JOB, state))


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o["name"])
def test_restore_continues_exactly_like_the_original(tmp_path: Path, optimizer: dict[str, Any]) -> None:
    original = make_state(optimizer=optimizer)
    push_async(original, 0, 7)
    store = CheckpointStore(tmp_path)
    write(store, original)
    restored = make_state(optimizer=optimizer)
    snapshot, refused = store.load_latest(JOB, 0)
    assert refused == []
    restore_shard(restored, snapshot)
    assert restored.version == original.version == 7
    push_async(original, 7, 5)
    push_async(restored, 7, 5)
    assert torch.equal(restored.params, original.params)
    for key, value in original.optimizer.state[original.params].items():
        assert torch.equal(torch.as_tensor(restored.optimizer.state[restored.params][key]), torch.as_tensor(value))
    assert restored.counters.updates_applied == original.counters.updates_applied == 12
    assert restored.counters.by_worker == original.counters.by_worker == {"w0": 6, "w1": 6}


def test_a_retried_push_is_not_applied_twice_after_a_restore(tmp_path: Path) -> None:
    original = make_state()
    push_async(original, 0, 4)
    store = CheckpointStore(tmp_path)
    write(store, original)
    restored = make_state()
    restore_shard(restored, store.load_latest(JOB, 0)[0])
    before = restored.params.clone()
    # w1's last push was "w1:3": a worker that never saw its ack retries it after the restart.
    result = restored.push("w1", "w1:3", restored.version, 3, grad_for(restored, 3))
    assert result.outcome is PushOutcome.DUPLICATE
    assert torch.equal(restored.params, before)


def test_buffered_gradients_do_not_count_as_handled(tmp_path: Path) -> None:
    state = make_state(mode="sync")
    state.push("w0", "w0:0", 0, 3, grad_for(state, 0))
    state.push("w1", "w1:0", 0, 3, grad_for(state, 1))  # completes version 0 -> 1
    state.push("w0", "w0:1", 1, 3, grad_for(state, 2))  # buffered, not in the parameters
    snapshot = snapshot_shard(JOB, state)
    assert snapshot.counters["by_worker"] == {"w0": 1, "w1": 1}
    assert snapshot.version == 1


def test_write_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    state = make_state()
    store = CheckpointStore(tmp_path)
    push_async(state, 0, 2)
    manifest = write(store, state)
    names = sorted(p.name for p in manifest.parent.iterdir())
    assert names == ["v000000000002.json", "v000000000002.safetensors"]
    data = json.loads(manifest.read_text())
    payload = (manifest.parent / data["tensors_file"]).read_bytes()
    assert data["tensors_sha256"] == hashlib.sha256(payload).hexdigest()
    assert data["job_id"] == JOB and data["shard_index"] == 0 and data["version"] == 2
    assert data["membership_epoch"] == 3 and data["shard_range"] == [0, 12]
    assert data["optimizer"]["hyperparameters"]["lr"] == 0.1
    assert set(data["tensors"]) == {"params"}


def test_keeps_the_last_k(tmp_path: Path) -> None:
    state = make_state(optimizer=OPTIMIZERS[1])
    store = CheckpointStore(tmp_path, keep_last=3)
    for i in range(6):
        push_async(state, i, 1)
        write(store, state)
    assert store.versions(JOB, 0) == [6, 5, 4]
    assert len(list(store.folder(JOB, 0).glob("*.safetensors"))) == 3


def newest_tensor_file(store: CheckpointStore) -> Path:
    return max(store.folder(JOB, 0).glob("*.safetensors"))


def two_checkpoints(tmp_path: Path) -> CheckpointStore:
    state = make_state()
    store = CheckpointStore(tmp_path)
    push_async(state, 0, 3)
    write(store, state)
    push_async(state, 3, 3)
    write(store, state)
    return store


def test_truncated_file_is_refused_and_the_previous_one_loaded(tmp_path: Path) -> None:
    store = two_checkpoints(tmp_path)
    path = newest_tensor_file(store)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    snapshot, refused = store.load_latest(JOB, 0)
    assert snapshot.version == 3
    assert len(refused) == 1 and "truncated" in refused[0] and "v000000000006" in refused[0]


def test_tampered_file_is_refused_by_its_checksum(tmp_path: Path) -> None:
    store = two_checkpoints(tmp_path)
    path = newest_tensor_file(store)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one parameter bit flipped
    path.write_bytes(bytes(data))
    with pytest.raises(DataLossError, match="checksum mismatch"):
        store.load(path.with_suffix(".json"), JOB, 0)
    assert store.load_latest(JOB, 0)[0].version == 3


def test_pickle_payload_is_refused_even_with_a_matching_checksum(tmp_path: Path) -> None:
    """A torch.save (pickle) file dressed up as a checkpoint: its manifest is consistent, so
    only the format check stands between it and the unpickler. It must never be unpickled."""
    store = two_checkpoints(tmp_path)
    path = newest_tensor_file(store)
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(str(marker)))
    path.write_bytes(payload)
    manifest_path = path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest.update(tensors_bytes=len(payload), tensors_sha256=hashlib.sha256(payload).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataLossError, match="not safetensors"):
        store.load(manifest_path, JOB, 0)
    assert store.load_latest(JOB, 0)[0].version == 3
    assert not marker.exists()


def _rewrite_manifest(manifest_path: Path, payload: bytes, **fields: Any) -> None:
    """Makes the manifest agree with `payload` (size and sha256), then applies `fields`."""
    manifest = json.loads(manifest_path.read_text())
    manifest.update(tensors_bytes=len(payload), tensors_sha256=hashlib.sha256(payload).hexdigest(), **fields)
    manifest_path.write_text(json.dumps(manifest))


def test_a_real_torch_save_file_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    """What a careless operator would copy in: `torch.save` output (a zip holding a pickle)
    whose object, once unpickled, would create a file. Size and checksum match."""
    store = two_checkpoints(tmp_path)
    path = newest_tensor_file(store)
    marker = tmp_path / "unpickled"
    torch.save({"params": torch.zeros(3), "boom": _Boom(str(marker))}, path)
    _rewrite_manifest(path.with_suffix(".json"), path.read_bytes())
    with pytest.raises(DataLossError, match=r"v000000000006.*not safetensors"):
        store.load(path.with_suffix(".json"), JOB, 0)
    assert store.load_latest(JOB, 0)[0].version == 3
    assert not marker.exists()


def test_pickle_payload_without_a_matching_manifest_is_refused_by_its_size(tmp_path: Path) -> None:
    store = two_checkpoints(tmp_path)
    path = newest_tensor_file(store)
    marker = tmp_path / "unpickled"
    path.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(DataLossError, match="truncated or extended"):
        store.load(path.with_suffix(".json"), JOB, 0)
    assert not marker.exists()


def test_a_tampered_checksum_in_the_manifest_is_refused(tmp_path: Path) -> None:
    """The tensors are intact; the manifest's recorded sha256 was changed."""
    store = two_checkpoints(tmp_path)
    manifest_path = newest_tensor_file(store).with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["tensors_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataLossError, match=r"checksum mismatch \(sha256 [0-9a-f]{64}, manifest 0{64}\)"):
        store.load(manifest_path, JOB, 0)
    snapshot, refused = store.load_latest(JOB, 0)
    assert snapshot.version == 3 and len(refused) == 1 and "checksum mismatch" in refused[0]


@pytest.mark.parametrize("keep", [0, 7, 64], ids=["empty", "inside the header length", "inside the header"])
def test_a_truncated_file_with_a_consistent_manifest_is_refused_by_the_format(tmp_path: Path, keep: int) -> None:
    """Someone truncated the tensors and fixed up size and checksum: the safetensors reader,
    not the checksum, must catch it, with a DataLossError (no crash, no partial tensors)."""
    store = two_checkpoints(tmp_path)
    path = newest_tensor_file(store)
    payload = path.read_bytes()[:keep]
    path.write_bytes(payload)
    _rewrite_manifest(path.with_suffix(".json"), payload)
    with pytest.raises(DataLossError, match="not safetensors"):
        store.load(path.with_suffix(".json"), JOB, 0)
    assert store.load_latest(JOB, 0)[0].version == 3


def test_a_truncated_manifest_is_refused(tmp_path: Path) -> None:
    store = two_checkpoints(tmp_path)
    manifest_path = newest_tensor_file(store).with_suffix(".json")
    text = manifest_path.read_text()
    manifest_path.write_text(text[: len(text) // 2])
    with pytest.raises(DataLossError, match="unreadable manifest"):
        store.load(manifest_path, JOB, 0)
    assert store.load_latest(JOB, 0)[0].version == 3


def test_no_module_of_tidal_can_unpickle() -> None:
    """The guarantee behind the refusals above: no code path reaches an unpickler."""
    root = Path(__file__).resolve().parents[2] / "services" / "tidal"
    forbidden = ("import pickle", "from pickle", "torch.load(", "cPickle", "dill", "joblib.load", "yaml.load(")
    offenders = [
        f"{path.relative_to(root)}: {needle}"
        for path in root.rglob("*.py")
        if "v1" not in path.relative_to(root).parts[:1]
        for needle in forbidden
        if needle in path.read_text()
    ]
    assert offenders == []


class _Boom:
    """Unpickling this would create a file: proof that nothing was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("job_id", "other-7", "job_id"),
        ("shard_index", 1, "shard_index"),
        ("format_version", 99, "format"),
        ("tensors", {"params": {"dtype": "float32", "shape": [99]}}, "do not match"),
    ],
)
def test_manifest_that_does_not_match_is_refused(tmp_path: Path, field: str, value: Any, message: str) -> None:
    store = two_checkpoints(tmp_path)
    manifest_path = newest_tensor_file(store).with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest[field] = value
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataLossError, match=message):
        store.load(manifest_path, JOB, 0)
    assert store.load_latest(JOB, 0)[0].version == 3


def test_garbled_manifest_and_missing_tensor_file(tmp_path: Path) -> None:
    store = two_checkpoints(tmp_path)
    newest = newest_tensor_file(store)
    newest.with_suffix(".json").write_text("{not json")
    with pytest.raises(DataLossError, match="unreadable manifest"):
        store.load(newest.with_suffix(".json"), JOB, 0)
    older = store.folder(JOB, 0) / "v000000000003.safetensors"
    older.unlink()
    with pytest.raises(DataLossError, match="no valid checkpoint") as exc:
        store.load_latest(JOB, 0)
    assert "unreadable manifest" in str(exc.value) and "tensor file unreadable" in str(exc.value)


def test_no_checkpoint_at_all(tmp_path: Path) -> None:
    with pytest.raises(DataLossError, match="no checkpoint in"):
        CheckpointStore(tmp_path).load_latest(JOB, 0)


def test_restore_refuses_another_shard_or_optimizer(tmp_path: Path) -> None:
    store = two_checkpoints(tmp_path)
    snapshot = store.load_latest(JOB, 0)[0]
    with pytest.raises(DataLossError, match="range"):
        restore_shard(make_state(shard=1), snapshot)
    other = make_state(optimizer={"name": "sgd", "lr": 0.2})
    before = other.params.clone()
    with pytest.raises(DataLossError, match="optimizer"):
        restore_shard(other, snapshot)
    assert torch.equal(other.params, before) and other.version == 0


def test_job_ids_cannot_escape_the_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="job_id"):
        CheckpointStore(tmp_path).folder("../etc", 0)


def test_scan_reports_the_newest_per_shard(tmp_path: Path) -> None:
    store = two_checkpoints(tmp_path)
    (tmp_path / "stray-file").write_text("x")
    refs = store.scan()
    assert [(r.job_id, r.shard_index, r.version) for r in refs] == [(JOB, 0, 6)]


def test_schedule() -> None:
    every = CheckpointSchedule(every_versions=10, every_s=5.0)
    assert not every.due(version=5, last_version=0, now=1.0, last_at=0.0)
    assert every.due(version=10, last_version=0, now=1.0, last_at=0.0)
    assert every.due(version=3, last_version=0, now=6.0, last_at=0.0)
    assert not every.due(version=3, last_version=3, now=60.0, last_at=0.0)  # nothing new
    assert not CheckpointSchedule(0, 0).due(version=100, last_version=0, now=100.0, last_at=0.0)


@pytest.mark.parametrize("fault", ["kill_before_rename", "kill_before_manifest"])
def test_a_write_killed_midway_leaves_the_previous_checkpoint_valid(tmp_path: Path, fault: str) -> None:
    """A real process is SIGKILLed inside its second write; the first checkpoint still loads
    and the leftovers are never taken for a checkpoint."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_checkpoint import make_state, push_async, write
        from tidal.core.checkpoint import CheckpointStore
        state = make_state()
        store = CheckpointStore(Path({str(tmp_path)!r}), fault=({fault!r}, 2))
        push_async(state, 0, 3)
        write(store, state)
        push_async(state, 3, 3)
        write(store, state)
        print("not reached")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, timeout=120, env=os.environ.copy()
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    store = CheckpointStore(tmp_path)
    snapshot, refused = store.load_latest(JOB, 0)
    assert snapshot.version == 3 and refused == []
    leftovers = sorted(p.name for p in store.folder(JOB, 0).iterdir())
    assert leftovers == (
        ["v000000000003.json", "v000000000003.safetensors"]
        + (["v000000000006.safetensors"] if fault == "kill_before_manifest" else [])
    )


def test_ledger_counts_what_the_checkpoint_lost_once(tmp_path: Path) -> None:
    original = make_state()
    push_async(original, 0, 4)  # w0 and w1 two pushes each, version 4
    store = CheckpointStore(tmp_path)
    write(store, original)
    push_async(original, 4, 3)  # acknowledged, then the process dies: lost
    restored = make_state()
    restore_shard(restored, store.load_latest(JOB, 0)[0])
    ledger = RecoveryLedger(restored_version=restored.version)
    # w0 completed pushes 0, 2, 4, 6 (4 in all), w1 pushes 1, 3, 5 (3); both saw version 7.
    ledger.worker_resumed(restored, "w0", last_version=7, completed_pushes=4)
    ledger.worker_resumed(restored, "w1", last_version=7, completed_pushes=3)
    ledger.worker_resumed(restored, "w1", last_version=7, completed_pushes=3)  # reconnects again
    assert (ledger.updates_lost, ledger.versions_lost) == (3, 3)
    handled = restored.counters.updates_applied + restored.counters.updates_rejected + ledger.updates_lost
    assert handled == original.counters.updates_applied == 7
    assert restored.counters.by_worker == {"w0": 2, "w1": 2}  # what the parameters hold


def test_ledger_carries_earlier_losses_across_a_second_restore(tmp_path: Path) -> None:
    first = make_state()
    push_async(first, 0, 4)
    store = CheckpointStore(tmp_path)
    write(store, first)
    # Restored at 4 after w0 and w1 saw 2 more pushes each (6 and 7): 3 lost.
    second = make_state()
    ledger = RecoveryLedger.restored(store.load_latest(JOB, 0)[0])
    restore_shard(second, store.load_latest(JOB, 0)[0])
    ledger.worker_resumed(second, "w0", 7, completed_pushes=4)
    ledger.worker_resumed(second, "w1", 7, completed_pushes=3)
    push_async(second, 7, 2)  # w1 pushes 7, w0 pushes 8: both in the parameters
    store.write(snapshot_shard(JOB, second, ledger.lost_by_worker))
    push_async(second, 9, 1)  # w1's push 9, acknowledged, then lost with the second process
    third = make_state()
    snapshot = store.load_latest(JOB, 0)[0]
    restore_shard(third, snapshot)
    again = RecoveryLedger.restored(snapshot)
    again.worker_resumed(third, "w0", 7, completed_pushes=5)
    again.worker_resumed(third, "w1", 8, completed_pushes=5)
    assert (again.updates_lost_here, again.updates_lost, again.lost_before) == (1, 4, 3)
    handled = third.counters.updates_applied + third.counters.updates_rejected + again.updates_lost
    assert handled == 10  # every push the workers saw completed: held or counted lost


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adam", "lr": 0.01}])
def test_a_checkpoint_of_the_unfused_optimizer_restores_into_the_fused_one(optimizer: dict[str, Any]) -> None:
    """Shards run torch.optim's fused step now; a checkpoint written before (fused: None in its
    hyperparameters) still restores: implementation switches are not hyperparameters."""
    state = make_state(optimizer=optimizer)
    push_async(state, 0, 3)
    snapshot = snapshot_shard(JOB, state)
    assert snapshot.optimizer["hyperparameters"]["fused"] is True
    snapshot.optimizer["hyperparameters"]["fused"] = None
    restored = make_state(optimizer=optimizer)
    restore_shard(restored, snapshot)
    push_async(state, 3, 2)
    push_async(restored, 3, 2)
    assert torch.equal(restored.params.detach(), state.params.detach())


def test_a_restored_shard_still_checks_workers_against_its_initial_slice(tmp_path: Path) -> None:
    spec = parse_job_spec({"mode": "async", "num_workers": 2, "num_shards": 2})
    shard_map = build_shard_map(TENSORS, 2)
    start, end = shard_map.ranges[0]
    values = torch.linspace(-1, 1, TOTAL)[start:end].clone()
    original = ShardState(spec, 0, shard_map, None, membership_epoch=3, workers=["w0", "w1"])
    original.initialize("w0", 3, values)
    push_async(original, 0, 3)
    store = CheckpointStore(tmp_path)
    write(store, original)
    restored = ShardState(spec, 0, shard_map, None, membership_epoch=3, workers=["w0", "w1"])
    restore_shard(restored, store.load_latest(JOB, 0)[0])
    assert restored.initialized and restored.initial_digest == original.initial_digest is not None
    with pytest.raises(InvalidArgumentError, match=r"open\.init_digest"):
        restored.check_initial_digest("w1", "0" * 32)


def _age(folder: Path, mtime: float) -> None:
    for path in folder.rglob("*"):
        os.utime(path, (mtime, mtime))


def test_sweep_deletes_ended_jobs_checkpoints_after_the_retention(tmp_path: Path) -> None:
    """The clock is injected: file times are set, `now` is given."""
    store = CheckpointStore(tmp_path)
    state = make_state()
    for job in ("old-1", "recent-2", "running-3"):
        store.write(snapshot_shard(job, state))
    _age(tmp_path / "old-1", 1_000.0)
    _age(tmp_path / "recent-2", 5_000.0)
    _age(tmp_path / "running-3", 0.0)
    (tmp_path / "not-a-job.txt").write_text("left alone")
    retention = 3_600.0

    assert store.sweep(1_000.0 + retention - 1, retention, keep={"running-3"}) == []
    assert store.sweep(1_000.0 + retention, retention, keep={"running-3"}) == ["old-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-job.txt", "recent-2", "running-3"]
    assert {r.job_id for r in store.scan()} == {"recent-2", "running-3"}
    # 0 keeps everything; the job a shard runs is kept whatever its age.
    assert store.sweep(1e12, 0.0) == []
    assert store.sweep(1e12, retention, keep={"running-3"}) == ["recent-2"]
    assert store.versions("running-3", 0) == [0]


def test_a_new_write_restarts_the_retention_clock(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    state = make_state()
    store.write(snapshot_shard("job-1", state))
    push_async(state, 0, 2)
    newest = store.write(snapshot_shard("job-1", state))
    _age(tmp_path / "job-1", 1_000.0)
    for path in (newest, newest.with_suffix(".safetensors")):
        os.utime(path, (9_000.0, 9_000.0))
    assert store.sweep(9_000.0 + 10, 100.0) == []
    assert store.sweep(9_000.0 + 100, 100.0) == ["job-1"]
