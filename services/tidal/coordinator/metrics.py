"""The coordinator's Prometheus metrics.

Counters are incremented by `Control` as events happen; everything that is a state (members,
jobs, per-job progress) is read from `Control` at scrape time by a collector, so it can never
drift from what the API reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tidal.core.job_records import Job, JobState
from tidal.core.membership import MemberState, Role

if TYPE_CHECKING:
    from tidal.coordinator.control import Control

ROLES = [r.value for r in Role]
FAILURE_REASONS = ("heartbeat_timeout", "session_closed")


class CoordinatorCounters:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.heartbeats = Counter(
            "tidal_coordinator_heartbeats_total", "Heartbeats received from members.", ["role"], registry=registry
        )
        self.missed_heartbeats = Counter(
            "tidal_coordinator_missed_heartbeats_total",
            "Members whose heartbeats stopped for longer than the timeout.",
            ["role"],
            registry=registry,
        )
        self.failures = Counter(
            "tidal_coordinator_member_failures_total", "Members declared failed.", ["role", "reason"], registry=registry
        )
        self.shard_restarts = Counter(
            "tidal_coordinator_shard_restarts_total",
            "Lost shards restored from their checkpoints (the job went on).",
            registry=registry,
        )
        self.members_left = Counter(
            "tidal_coordinator_members_left_total",
            "Members that said goodbye (shut down on purpose) instead of failing.",
            ["role"],
            registry=registry,
        )
        self.state_save_seconds = Histogram(
            "tidal_coordinator_state_save_seconds",
            "Time to save jobs and membership to the state store (--state-dir).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        # Known label sets start at 0, so rates and alerts work before the first event.
        for role in ROLES:
            self.heartbeats.labels(role)
            self.missed_heartbeats.labels(role)
            self.members_left.labels(role)
            for reason in FAILURE_REASONS:
                self.failures.labels(role, reason)


class ControlCollector(Collector):
    def __init__(self, control: Control) -> None:
        self._control = control

    def collect(self) -> Iterator[Metric]:
        membership = self._control.membership
        members = GaugeMetricFamily("tidal_coordinator_members", "Members by role and state.", labels=["role", "state"])
        counts = {(r, s): 0 for r in Role for s in MemberState}
        for m in membership.all():
            counts[(m.role, m.state)] += 1
        for (role, state), n in counts.items():
            members.add_metric([role.value, state.value], n)
        yield members
        yield GaugeMetricFamily(
            "tidal_coordinator_membership_epoch", "Bumped on every membership change.", value=membership.epoch
        )
        jobs = self._control.jobs.all()
        by_state = GaugeMetricFamily("tidal_coordinator_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            by_state.add_metric([state.value], sum(j.state is state for j in jobs))
        yield by_state
        yield from self._job_metrics(jobs)

    def _job_metrics(self, jobs: list[Job]) -> Iterator[Metric]:
        labels = ["tidal_job", "mode"]
        info = GaugeMetricFamily("tidal_job_info", "A job, its mode and state (always 1).", labels=[*labels, "state"])

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        families = {
            "version": gauge("tidal_job_version", "Lowest parameter version over the shards."),
            "target": gauge("tidal_job_target_version", "Version at which training stops."),
            "samples": gauge("tidal_job_samples", "Training samples processed by all workers."),
            "workers": gauge("tidal_job_workers", "Workers assigned to the job."),
            "loss": gauge("tidal_job_train_loss", "Mean of the workers' latest training losses."),
            "val_loss": gauge("tidal_job_validation_loss", "Latest validation loss."),
            # Named by its `metric` label: accuracy, skill, rmse, mae or a user objective's name.
            "val_metric": GaugeMetricFamily(
                "tidal_job_validation_metric",
                "Latest value of the job objective's validation metric (higher_is_better says which way is better).",
                labels=[*labels, "metric", "higher_is_better"],
            ),
            "progress": gauge("tidal_job_last_progress_timestamp_seconds", "Unix time of the last progress report."),
            "versions_lost": gauge(
                "tidal_job_versions_lost", "Versions lost by shards restored from checkpoints (sum over restarts)."
            ),
            "updates_lost": gauge(
                "tidal_job_updates_lost", "Acknowledged pushes that restored checkpoints did not hold (sum)."
            ),
        }
        for job in jobs:
            key = [job.job_id, job.spec.mode.value]
            info.add_metric([*key, job.state.value], 1)
            families["version"].add_metric(key, job.version)
            families["versions_lost"].add_metric(key, sum(r.versions_lost for r in job.restarts))
            families["updates_lost"].add_metric(key, sum(r.updates_lost for r in job.restarts))
            families["target"].add_metric(key, job.spec.target_version)
            families["samples"].add_metric(key, job.samples)
            families["workers"].add_metric(key, len(job.worker_ids))
            losses = [w.loss for w in job.workers.values() if not math.isnan(w.loss)]
            if losses:
                families["loss"].add_metric(key, sum(losses) / len(losses))
            if job.evals:
                families["val_loss"].add_metric(key, job.evals[-1].val_loss)
                last = job.evals[-1]
                direction = "true" if last.higher_is_better else "false"
                families["val_metric"].add_metric([*key, last.metric, direction], last.val_accuracy)
            if job.last_progress_at:
                families["progress"].add_metric(key, job.last_progress_at)
        yield info
        yield from families.values()
