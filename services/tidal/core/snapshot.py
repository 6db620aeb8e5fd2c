"""The coordinator's state as plain JSON data, so a restarted coordinator can adopt it.

Jobs and members become dicts of strings, numbers and lists (the job spec travels as its
JSON text, the shard map as names, shapes, dtype names and ranges); nothing is pickled.
Reading checks every field and raises DataLossError naming the first one that is wrong, so
a damaged state file is refused instead of half-loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from tidal.core.errors import DataLossError, TidalError
from tidal.core.job_records import EvalPoint, Job, JobState, ShardProgress, ShardRestart, WorkerProgress
from tidal.core.layout import Layout
from tidal.core.membership import Member, MemberState, Role
from tidal.core.shard_map import ShardMap, TensorInfo
from tidal.core.spec import parse_job_spec


def member_to_dict(member: Member) -> dict[str, Any]:
    return {
        "member_id": member.member_id,
        "role": member.role.value,
        "address": member.address,
        "name": member.name,
        "state": member.state.value,
        "job_id": member.job_id,
        "shard_index": member.shard_index,
    }


def member_from_dict(data: dict[str, Any], last_seen: float) -> Member:
    """`last_seen` (monotonic seconds) starts the member's heartbeat clock afresh: the
    silence of a coordinator that was down is not the member's."""
    with _reading("member"):
        return Member(
            member_id=_str(data, "member_id"),
            role=Role(data["role"]),
            address=_str(data, "address"),
            name=_str(data, "name"),
            state=MemberState(data["state"]),
            last_seen=last_seen,
            job_id=_str(data, "job_id"),
            # Absent in state saved before shards could ask for an index.
            shard_index=None if data.get("shard_index") is None else int(data["shard_index"]),
        )


def shard_map_to_dict(shard_map: ShardMap) -> dict[str, Any]:
    return {
        "tensors": _tensors_to_list(shard_map.tensors),
        "ranges": [list(r) for r in shard_map.ranges],
    }


def _tensors_to_list(tensors: tuple[TensorInfo, ...]) -> list[dict[str, Any]]:
    return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in tensors]


def _tensors_from_list(data: list[dict[str, Any]]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(_str(t, "name"), tuple(int(d) for d in t["shape"]), _str(t, "dtype")) for t in data)


def layout_to_dict(layout: Layout | None) -> dict[str, Any] | None:
    if layout is None:
        return None
    return {"tensors": _tensors_to_list(layout.tensors), "init_digest": layout.init_digest}


def layout_from_dict(data: dict[str, Any] | None) -> Layout | None:
    if data is None:
        return None
    with _reading("layout"):
        layout = Layout(_tensors_from_list(data["tensors"]), _str(data, "init_digest"))
        layout.check()
        return layout


def shard_map_from_dict(data: dict[str, Any]) -> ShardMap:
    with _reading("shard_map"):
        shard_map = ShardMap(_tensors_from_list(data["tensors"]), tuple((int(a), int(b)) for a, b in data["ranges"]))
        shard_map.validate()
        return shard_map


def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "spec_json": job.spec.to_json(),
        "shard_map": None if job.shard_map is None else shard_map_to_dict(job.shard_map),
        "layout": layout_to_dict(job.layout),
        "layout_from": sorted(job.layout_from),
        "created_at": job.created_at,
        "state": job.state.value,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "message": job.message,
        "membership_epoch": job.membership_epoch,
        "shard_ids": list(job.shard_ids),
        "worker_ids": list(job.worker_ids),
        "next_rank": job.next_rank,
        "shards_ready": sorted(job.shards_ready),
        "workers": {m: {**asdict(w), "loss": _finite_or_none(w.loss)} for m, w in job.workers.items()},
        "shards": {m: asdict(s) for m, s in job.shards.items()},
        "evals": [asdict(e) for e in job.evals],
        "final_eval_by": job.final_eval_by,
        "final_eval_done": job.final_eval_done,
        "last_progress_at": job.last_progress_at,
        "checkpointing": sorted(job.checkpointing),
        "restarts": [asdict(r) for r in job.restarts],
    }


def job_from_dict(data: dict[str, Any]) -> Job:
    with _reading(f"job {data.get('job_id', '?')!r}"):
        workers = {}
        for member_id, w in data["workers"].items():
            loss = float("nan") if w["loss"] is None else float(w["loss"])
            workers[member_id] = WorkerProgress(**{**w, "loss": loss})
        job = Job(
            job_id=_str(data, "job_id"),
            spec=parse_job_spec(data["spec_json"]),
            shard_map=None if data["shard_map"] is None else shard_map_from_dict(data["shard_map"]),
            created_at=float(data["created_at"]),
            state=JobState(data["state"]),
            started_at=float(data["started_at"]),
            finished_at=float(data["finished_at"]),
            message=_str(data, "message"),
            membership_epoch=int(data["membership_epoch"]),
            shard_ids=[str(m) for m in data["shard_ids"]],
            worker_ids=[str(m) for m in data["worker_ids"]],
            next_rank=int(data["next_rank"]),
            shards_ready={str(m) for m in data["shards_ready"]},
            workers=workers,
            shards={m: ShardProgress(**s) for m, s in data["shards"].items()},
            evals=[EvalPoint(**e) for e in data["evals"]],
            final_eval_by=_str(data, "final_eval_by"),
            final_eval_done=bool(data["final_eval_done"]),
            last_progress_at=float(data["last_progress_at"]),
            # Absent in states saved before shard restarts existed.
            checkpointing={int(i) for i in data.get("checkpointing", [])},
            restarts=[ShardRestart(**r) for r in data.get("restarts", [])],
            # Absent in states saved before workers announced layouts.
            layout=layout_from_dict(data.get("layout")),
            layout_from={str(m) for m in data.get("layout_from", [])},
        )
        unknown = set(job.worker_ids) - set(job.workers)
        if unknown:
            raise ValueError(f"worker_ids {sorted(unknown)} have no progress record")
        return job


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, allow_nan=False, sort_keys=True)


def loads(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataLossError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataLossError(f"{what}: expected a JSON object")
    return data


class _reading:
    """Turns any error while reading `what` into a DataLossError that names it."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, (KeyError, TypeError, ValueError, TidalError)):
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataLossError(f"{self.what}: {detail}") from None


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
