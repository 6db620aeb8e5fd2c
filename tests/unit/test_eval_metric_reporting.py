"""The name of a job's validation metric travels from the worker's evaluation report to
everything that shows it: the job record (and its saved snapshot), the Prometheus series and
the CLI's progress line. Driven through a real `Control` with domain events."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry, generate_latest

from tidal.coordinator.control import Control
from tidal.coordinator.convert import job_to_proto
from tidal.coordinator.metrics import ControlCollector, CoordinatorCounters
from tidal.core.events import EvalReport, LayoutReport, ShardReady
from tidal.core.job_records import Job
from tidal.core.layout import Layout
from tidal.core.membership import Role
from tidal.core.shard_map import TensorInfo
from tidal.core.snapshot import job_from_dict, job_to_dict
from tidal.progress import describe

SPEC = {"name": "metric", "mode": "sync", "num_workers": 1, "num_shards": 1, "steps": 5, "eval_every": 2}


async def _evaluated(registry: CollectorRegistry, accuracy: float, metric: str, higher_is_better: bool) -> Job:
    control = Control(CoordinatorCounters(registry), heartbeat_timeout_s=3600.0)
    registry.register(ControlCollector(control))
    members = []
    for role, address in ((Role.SHARD, "10.0.0.1:7000"), (Role.WORKER, "")):
        member, _ = control.register(role, address, role.value, checkpoints=[])
        await control.open_session(member.member_id)
        members.append(member.member_id)
    shard, worker = members
    job = await control.submit(json.dumps(SPEC))
    await control.handle(worker, LayoutReport(job.job_id, Layout((TensorInfo("w", (4,), "float32"),), "0" * 32)))
    await control.handle(shard, ShardReady(job.job_id, 0, checkpointing=False))
    await control.handle(worker, EvalReport(job.job_id, 2, 0.5, accuracy, False, metric, higher_is_better))
    return job


def _evaluate(accuracy: float, metric: str = "accuracy", higher_is_better: bool = True) -> tuple[Job, str]:
    """A running job after one evaluation report, and the coordinator's Prometheus exposition."""
    registry = CollectorRegistry()
    job = asyncio.run(_evaluated(registry, accuracy, metric, higher_is_better))
    return job, generate_latest(registry).decode()


def test_the_metric_name_reaches_the_record_the_metrics_and_the_progress_line() -> None:
    job, exposition = _evaluate(0.42, "rmse", higher_is_better=False)
    last = job.evals[-1]
    assert (last.metric, last.higher_is_better, last.val_accuracy) == ("rmse", False, 0.42)
    labels = f'higher_is_better="false",metric="rmse",mode="sync",tidal_job="{job.job_id}"'
    assert f"tidal_job_validation_metric{{{labels}}} 0.42" in exposition
    assert "tidal_job_validation_accuracy" not in exposition
    assert "val rmse 0.420" in describe(job_to_proto(job))
    # A coordinator restarted from its saved state still knows the name.
    assert job_from_dict(json.loads(json.dumps(job_to_dict(job)))).evals[-1] == last


def test_a_classifier_reports_accuracy_as_before() -> None:
    job, exposition = _evaluate(0.9)
    assert 'higher_is_better="true",metric="accuracy"' in exposition
    assert "val accuracy 0.900" in describe(job_to_proto(job))


def test_a_snapshot_saved_before_metric_names_loads_as_accuracy() -> None:
    job, _ = _evaluate(0.8)
    saved = job_to_dict(job)
    for point in saved["evals"]:
        del point["metric"], point["higher_is_better"]
    loaded = job_from_dict(json.loads(json.dumps(saved))).evals[-1]
    assert (loaded.metric, loaded.higher_is_better, loaded.val_accuracy) == ("accuracy", True, 0.8)
