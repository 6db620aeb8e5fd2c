"""Shard snapshots: a consistent copy of one shard's state (parameters, optimizer, counters,
the last pushes seen) and its restore into a freshly built shard of the same job.

`snapshot_shard` copies a live `ShardState` between two pushes; `restore_shard` checks that a
snapshot fits the shard before changing anything. Tensors get stable names (`params`,
`optimizer.<key>`), the rest is JSON-ready, so core/checkpoint.py writes a snapshot to disk
as safetensors plus a manifest and reads it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tidal.core import eager_optim
from tidal.core.embeddings.shard import RowsSnapshot
from tidal.core.errors import DataLossError
from tidal.core.optim import IMPLEMENTATION_OPTIONS
from tidal.core.push_outcomes import PushOutcome, PushResult, ShardCounters
from tidal.core.shard_state import ShardState
from tidal.core.staleness import StalenessStats

PARAMS = "params"
OPTIMIZER_PREFIX = "optimizer."
# Pushes remembered per worker in a checkpoint: a worker retries only its latest push, so a
# few per worker keep a retried push from being applied twice after a restore.
PUSHES_KEPT_PER_WORKER = 4


@dataclass
class ShardSnapshot:
    """A consistent copy of one shard's state, taken between two pushes."""

    job_id: str
    shard_index: int
    shard_range: tuple[int, int]
    version: int
    membership_epoch: int
    members: list[str]
    mode: str
    tensors: dict[str, torch.Tensor]
    # Optimizer class, hyperparameters and its non-tensor state.
    optimizer: dict[str, Any]
    counters: dict[str, Any]
    # The latest pushes of each member: worker, push id and result, each member's oldest first.
    recent_pushes: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0
    # The digest of the initial slice the shard started from (ShardState.initial_digest); "": unknown.
    initial_digest: str = ""
    # The job's embedding rows on this shard (core/embeddings/shard.py); None: no tables.
    rows: RowsSnapshot | None = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def snapshot_shard(job_id: str, state: ShardState, lost_by_worker: dict[str, int] | None = None) -> ShardSnapshot:
    """Copies the state; call it on the thread that applies pushes, between two of them.
    `lost_by_worker` is what earlier restores lost (RecoveryLedger), carried along."""
    opt = eager_optim.state_dict(state.optimizer)
    group = {k: _jsonable(v) for k, v in opt["param_groups"][0].items() if k != "params"}
    tensor_state: dict[str, torch.Tensor] = {}
    scalar_state: dict[str, Any] = {}
    for key, value in opt["state"].get(0, {}).items():
        if isinstance(value, torch.Tensor):
            tensor_state[OPTIMIZER_PREFIX + key] = value.detach().clone().contiguous()
        else:
            scalar_state[key] = _jsonable(value)
    c = state.counters
    # Gradients waiting in a barrier are not in the parameters yet: they are lost with the
    # process, so they must not count as handled.
    handled = dict(c.by_worker)
    for workers in state.view().buffered.values():
        for worker in workers:
            handled[worker] = handled.get(worker, 0) - 1
    recent = [
        {"worker": worker, "push_id": push_id, **_result_to_json(result)}
        for worker, push_id, result in state.recent_pushes(PUSHES_KEPT_PER_WORKER)
    ]
    start, end = state.shard_map.ranges[state.shard_index]
    return ShardSnapshot(
        job_id=job_id,
        shard_index=state.shard_index,
        shard_range=(start, end),
        version=state.version,
        membership_epoch=state.membership_epoch,
        members=sorted(state.members),
        mode=state.spec.mode.value,
        tensors={PARAMS: state.params.detach().clone().contiguous(), **tensor_state},
        optimizer={"class": type(state.optimizer).__name__, "hyperparameters": group, "scalar_state": scalar_state},
        counters={
            "updates_applied": c.updates_applied,
            "rejected": dict(c.rejected),
            "staleness": {
                "count": c.staleness.count,
                "total": c.staleness.total,
                "maximum": c.staleness.maximum,
                "histogram": {str(k): v for k, v in c.staleness.histogram.items()},
            },
            "by_worker": {w: n for w, n in handled.items() if n > 0},
            "lost_by_worker": dict(lost_by_worker or {}),
        },
        recent_pushes=recent,
        created_at=time.time(),
        initial_digest=state.initial_digest or "",
    )


def _result_to_json(result: PushResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "version": result.version,
        "staleness": result.staleness,
        "serve_version": result.serve_version,
    }


def _semantic(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters that decide what a step computes (not how: fused, foreach, ...)."""
    return {k: v for k, v in hyperparameters.items() if k not in IMPLEMENTATION_OPTIONS}


def restore_shard(state: ShardState, snapshot: ShardSnapshot) -> None:
    """Loads a snapshot into a freshly built state of the same job and shard. Checks that it
    fits (shard range, element count, optimizer and hyperparameters) before changing anything."""
    start, end = state.shard_map.ranges[state.shard_index]
    where = f"checkpoint of job {snapshot.job_id} shard {snapshot.shard_index} at version {snapshot.version}"
    if snapshot.shard_index != state.shard_index or tuple(snapshot.shard_range) != (start, end):
        raise DataLossError(
            f"{where}: holds shard {snapshot.shard_index} range {list(snapshot.shard_range)}, "
            f"the job assigns shard {state.shard_index} range [{start}, {end}]"
        )
    params = snapshot.tensors.get(PARAMS)
    if params is None or params.shape != state.params.shape or params.dtype != state.params.dtype:
        got = "none" if params is None else f"{tuple(params.shape)} {params.dtype}"
        raise DataLossError(
            f"{where}: params are {got}, the shard holds {tuple(state.params.shape)} {state.params.dtype}"
        )
    current = eager_optim.state_dict(state.optimizer)
    group = {k: _jsonable(v) for k, v in current["param_groups"][0].items() if k != "params"}
    saved = snapshot.optimizer

    same_math = _semantic(saved.get("hyperparameters") or {}) == _semantic(group)
    if saved.get("class") != type(state.optimizer).__name__ or not same_math:
        raise DataLossError(
            f"{where}: optimizer {saved.get('class')} {saved.get('hyperparameters')} does not match the job's "
            f"{type(state.optimizer).__name__} {group}"
        )
    opt_state: dict[str, Any] = dict(saved.get("scalar_state", {}))
    for name, tensor in snapshot.tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            opt_state[name.removeprefix(OPTIMIZER_PREFIX)] = tensor
    with torch.no_grad():
        state.params.copy_(params)
    current["state"] = {0: opt_state} if opt_state else {}
    eager_optim.load_state_dict(state.optimizer, current)
    # Membership and epoch stay as the coordinator assigned them now: it is the authority.
    state.version, state.initialized = snapshot.version, True
    state.initial_digest = snapshot.initial_digest or None
    c = snapshot.counters
    s = c["staleness"]
    state.counters = ShardCounters(
        updates_applied=int(c["updates_applied"]),
        rejected={str(k): int(v) for k, v in c["rejected"].items()},
        staleness=StalenessStats(
            int(s["count"]), int(s["total"]), int(s["maximum"]), {int(k): int(v) for k, v in s["histogram"].items()}
        ),
        by_worker={str(k): int(v) for k, v in c["by_worker"].items()},
    )
    state.remember_pushes(
        [
            (
                # Checkpoints written before pushes were remembered per member: tidal's push ids are "worker:step".
                str(p.get("worker") or p["push_id"].rsplit(":", 1)[0]),
                str(p["push_id"]),
                PushResult(PushOutcome(p["outcome"]), int(p["version"]), int(p["staleness"]), int(p["serve_version"])),
            )
            for p in snapshot.recent_pushes
        ]
    )
