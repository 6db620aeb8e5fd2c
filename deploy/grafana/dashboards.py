"""tidal's Grafana dashboards, built as Python dicts from a few small helpers.

Run `python deploy/grafana/dashboards.py` to (re)write deploy/grafana/dashboards/*.json, or
`python deploy/grafana/dashboards.py --check` to exit 1 when the committed files are stale.
Grafana loads those files through deploy/grafana/provisioning/dashboards/tidal.yaml.

Standard library only: the tests import this file by path, and `panel_queries` gives every
PromQL expression of a dashboard (the metrics integration test runs each one against a real
Prometheus that scraped a local cluster, and requires data from all of them).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DATASOURCE_UID = "tidal-prometheus"  # fixed in provisioning/datasources/prometheus.yaml
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
OUT_DIR = Path(__file__).resolve().parent / "dashboards"
GRID_WIDTH = 24
RATE = "[$__rate_interval]"

# Label filters from the template variables. Every selector of a per-job series uses JOB;
# every expression over worker series also filters on the worker.
JOB = 'tidal_job=~"$tidal_job", mode=~"$mode"'
WORKER = f'{JOB}, worker=~"$worker"'
SELECTED_WORKER = 'worker=~"$worker"'  # for tidal_worker_slowdown, labelled by worker only
NOT_BARRIER = 'phase!="barrier"'

Panel = dict[str, Any]


# --- PromQL ------------------------------------------------------------------------------


def sel(metric: str, labels: str = "", extra: str = "") -> str:
    """`metric{labels, extra}`; either part may be empty."""
    inner = ", ".join(part for part in (labels, extra) if part)
    return f"{metric}{{{inner}}}" if inner else metric


def rate(metric: str, labels: str = "", extra: str = "") -> str:
    return f"rate({sel(metric, labels, extra)}{RATE})"


def increase(metric: str, labels: str = "", extra: str = "") -> str:
    return f"increase({sel(metric, labels, extra)}{RATE})"


def sum_by(by: str, expr: str) -> str:
    return f"sum by ({by}) ({expr})"


def mean(histogram: str, by: str, labels: str, extra: str = "") -> str:
    """Mean observation of a histogram per group: rate of the sum over rate of the count."""
    num = sum_by(by, rate(f"{histogram}_sum", labels, extra))
    den = sum_by(by, rate(f"{histogram}_count", labels, extra))
    return f"{num} / {den}"


def quantile(q: float, histogram: str, by: str, labels: str, extra: str = "") -> str:
    buckets = sum_by(f"{by}, le", rate(f"{histogram}_bucket", labels, extra))
    return f"histogram_quantile({q}, {buckets})"


# --- Panels ------------------------------------------------------------------------------


def target(expr: str, legend: str = "__auto", *, fmt: str = "time_series", instant: bool = False) -> dict[str, Any]:
    """One Prometheus query; `panel` assigns the refId."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
    }


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    width: int = 8,
    height: int = 8,
    unit: str = "short",
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    **extra: Any,
) -> Panel:
    """A panel without id and position; `dashboard` lays panels out and numbers them."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width},
        "targets": [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom or {}, **(defaults or {})}, "overrides": []},
        "options": options or {},
        **extra,
    }


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    *,
    stacked: bool = False,
    thresholds: list[float] | None = None,
    **kw: Any,
) -> Panel:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "fillOpacity": 30 if stacked else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
    }
    defaults: dict[str, Any] = {}
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "line"}
        steps = [{"color": "green", "value": None}] + [{"color": "red", "value": v} for v in thresholds]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    options = {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel("timeseries", title, targets, custom=custom, defaults=defaults, options=options, **kw)


def stat(title: str, targets: list[dict[str, Any]], *, text_mode: str = "value_and_name", **kw: Any) -> Panel:
    options = {
        "colorMode": "none",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
    }
    return panel("stat", title, targets, options=options, **kw)


def bargauge(title: str, targets: list[dict[str, Any]], *, maximum: float, **kw: Any) -> Panel:
    options = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
    }
    return panel("bargauge", title, targets, options=options, defaults={"min": 0, "max": maximum}, **kw)


def heatmap(title: str, expr: str, *, y_unit: str, **kw: Any) -> Panel:
    """A heatmap of pre-bucketed Prometheus histogram rates (one series per `le`)."""
    options = {
        "calculate": False,
        "cellGap": 1,
        "color": {"exponent": 0.5, "mode": "scheme", "reverse": False, "scale": "exponential", "scheme": "Oranges"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "yHistogram": True},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": y_unit},
    }
    return panel("heatmap", title, [target(expr, "{{le}}", fmt="heatmap")], options=options, **kw)


def row(title: str, panels: list[Panel]) -> tuple[Panel, list[Panel]]:
    """A (non-collapsed) row header and the panels below it."""
    header = {
        "type": "row",
        "title": title,
        "collapsed": False,
        "datasource": DATASOURCE,
        "gridPos": {"h": 1, "w": GRID_WIDTH},
        "panels": [],
    }
    return header, panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value query variable with "All" (matching everything, as `.*`). Grafana escapes
    regex metacharacters in the selected values of a Prometheus variable used with `=~`."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "regex": "",
        "sort": 1,
        "hide": 0,
        "options": [],
    }


def layout(rows: list[tuple[Panel, list[Panel]]]) -> list[Panel]:
    """Numbers panels and places them left to right, wrapping at the grid width, each row
    header on its own line below the previous row."""
    placed: list[Panel] = []
    y = 0
    for header, panels in rows:
        for p in (header, *panels):
            if p["gridPos"]["w"] > GRID_WIDTH:
                raise ValueError(f"panel {p['title']!r} is wider than the grid")
        header["gridPos"].update(x=0, y=y)
        placed.append(header)
        y += 1
        x, line_height = 0, 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > GRID_WIDTH:
                y, x, line_height = y + line_height, 0, 0
            p["gridPos"].update(x=x, y=y)
            placed.append(p)
            x, line_height = x + w, max(line_height, h)
        y += line_height
    for i, p in enumerate(placed, start=1):
        p["id"] = i
    return placed


def dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], rows: list[tuple[Panel, list[Panel]]]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["tidal"],
        "editable": True,
        "graphTooltip": 1,  # shared crosshair
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "5s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": layout(rows),
    }


# --- tidal / training --------------------------------------------------------------------


def _job_progress() -> tuple[Panel, list[Panel]]:
    by_job = "tidal_job, mode"
    job_legend = "{{tidal_job}} ({{mode}})"
    return row("Job progress", [
        stat("Mode", [target(f"count by (mode) ({sel('tidal_job_info', JOB)})", "{{mode}}")],
             description="Jobs in the selection by consistency mode (sync: a barrier per step; async: every "
                         "gradient applied on arrival). Select one job to see its mode.",
             width=4, height=5),
        stat("Job state", [target(f"max by (tidal_job, state) ({sel('tidal_job_info', JOB)})",
                                  "{{tidal_job}}: {{state}}", instant=True)],
             description="Current state of each selected job.", text_mode="name", width=8, height=5),
        bargauge("Progress", [target(f"clamp_max(100 * max by (tidal_job) ({sel('tidal_job_version', JOB)}) / "
                                     f"max by (tidal_job) ({sel('tidal_job_target_version', JOB)}), 100)",
                                     "{{tidal_job}}")],
                 maximum=100, unit="percent", width=8, height=5,
                 description="Lowest parameter version over the shards, as a share of the version at which "
                             "training stops."),
        stat("Workers", [target(f"max by (tidal_job) ({sel('tidal_job_workers', JOB)})", "{{tidal_job}}")],
             description="Workers assigned to each job.", width=4, height=5),
        timeseries("Training loss", [target(f"max by ({by_job}) ({sel('tidal_job_train_loss', JOB)})", job_legend)],
                   description="Mean of the workers' latest training losses, per job."),
        timeseries("Validation loss",
                   [target(f"max by ({by_job}) ({sel('tidal_job_validation_loss', JOB)})", job_legend)],
                   description="Loss on the validation split at each evaluation (every eval_every versions and "
                               "at the end)."),
        timeseries("Validation metric (accuracy, skill, rmse, mae, ...)",
                   [target(f"max by ({by_job}, metric) ({sel('tidal_job_validation_metric', JOB)})",
                           f"{job_legend} {{{{metric}}}}")],
                   unit="short", description="The job objective's metric on the validation split at each "
                                             "evaluation, named in the legend: accuracy (classification), skill "
                                             "against persistence (climate), rmse or mae (regression), or a user "
                                             "objective's loss."),
        timeseries("Samples processed", [target(f"max by ({by_job}) ({sel('tidal_job_samples', JOB)})", job_legend)],
                   width=12, description="Training samples processed by all workers of each job."),
        timeseries("Parameter version", [
            target(f"max by ({by_job}) ({sel('tidal_job_version', JOB)})", job_legend),
            target(f"max by ({by_job}) ({sel('tidal_job_target_version', JOB)})", f"{job_legend} target"),
        ], width=12, description="Lowest parameter version over the shards, and the version at which training "
                                 "stops (async: steps x workers)."),
    ])  # fmt: skip


def _throughput() -> tuple[Panel, list[Panel]]:
    samples = rate("tidal_worker_samples_total", WORKER)
    return row("Throughput", [
        timeseries("Samples/s per worker", [target(sum_by("tidal_job, worker", samples), "{{worker}}")],
                   unit="short", description="Training samples per second of each worker."),
        timeseries("Samples/s total", [target(sum_by("tidal_job, mode", samples), "{{tidal_job}} ({{mode}})")],
                   unit="short", description="Training samples per second of all selected workers, per job."),
        timeseries("Updates applied/s per shard", [
            target(sum_by("tidal_job, shard", rate("tidal_shard_updates_applied_total", JOB)),
                   "{{tidal_job}} shard {{shard}}"),
        ], unit="short", description="Gradients folded into the parameters per second (sync: one per worker per "
                                     "version, applied as their mean)."),
    ])  # fmt: skip


def _step_time() -> tuple[Panel, list[Panel]]:
    phases = mean("tidal_worker_step_seconds", "worker, phase", WORKER)
    duration = "tidal_worker_step_duration_seconds"
    # Busy time per step: everything but the barrier wait. In sync mode the barrier equalises
    # whole step times (fast workers wait for the slow one), so only busy time shows the straggler.
    busy_by = "tidal_job, worker"
    busy = (f"{sum_by(busy_by, rate('tidal_worker_step_seconds_sum', WORKER, NOT_BARRIER))} / "
            f"{sum_by(busy_by, rate('tidal_worker_steps_total', WORKER))}")  # fmt: skip
    # The median over all workers of each job, whatever the worker selection.
    peers = (f"{sum_by(busy_by, rate('tidal_worker_step_seconds_sum', JOB, NOT_BARRIER))} / "
             f"{sum_by(busy_by, rate('tidal_worker_steps_total', JOB))}")  # fmt: skip
    straggler = f"({busy}) / on (tidal_job) group_left () quantile by (tidal_job) (0.5, {peers})"
    return row("Step time", [
        timeseries("Step time by phase: $worker", [target(phases, "{{phase}}")], stacked=True, unit="s",
                   width=24, repeat="worker", repeatDirection="h", maxPerRow=4,
                   description="Mean seconds per step in each phase: compute, injected (straggler delay slept), "
                               "push (gradient sent until the shard's ack), barrier (ack until the next "
                               "parameters arrive: the sync barrier), pull (receiving parameters). One panel "
                               "per selected worker."),
        timeseries("Step time p50 / p95", [
            target(quantile(0.5, duration, "worker", WORKER), "{{worker}} p50"),
            target(quantile(0.95, duration, "worker", WORKER), "{{worker}} p95"),
        ], unit="s", width=6, description="Wall time of whole steps per worker."),
        timeseries("Straggler: busy time / job median", [target(straggler, "{{worker}}")],
                   unit="suffix:x", thresholds=[1.5], width=6,
                   description="Each worker's mean busy time per step (step time minus barrier wait) divided "
                               "by the median over all workers of its job. 1 is typical; above 1.5 is a "
                               "straggler. With two workers the median is their mean."),
        timeseries("Injected delay", [
            target(sum_by("tidal_job, worker", rate("tidal_worker_injected_delay_seconds_total", WORKER)),
                   "{{worker}}"),
        ], unit="percentunit", width=6,
           description="Share of wall time each worker sleeps on purpose to simulate a slower machine."),
        stat("Configured slowdown", [target(f"max by (worker) ({sel('tidal_worker_slowdown', extra=SELECTED_WORKER)})",
                                            "{{worker}}")],
             unit="suffix:x", width=6, height=8,
             description="Straggler factor of each worker's current job: its --slowdown times the job "
                         "spec's stragglers entry for its rank (1 = full speed)."),
    ])  # fmt: skip


def _staleness() -> tuple[Panel, list[Panel]]:
    histogram = "tidal_shard_update_staleness"
    return row("Staleness", [
        heatmap("Update staleness", sum_by("le", rate(f"{histogram}_bucket", JOB)), y_unit="none", width=12,
                description="Applied updates per second by staleness (shard version minus the gradient's base "
                            "version). Sync is always 0."),
        timeseries("Mean and p99 staleness", [
            target(mean(histogram, "tidal_job, mode", JOB), "{{tidal_job}} ({{mode}}) mean"),
            target(quantile(0.99, histogram, "tidal_job, mode", JOB), "{{tidal_job}} ({{mode}}) p99"),
        ], unit="none", width=6, description="Staleness of applied updates, in versions."),
        timeseries("Rejected updates by reason", [
            target(sum_by("tidal_job, reason", rate("tidal_shard_updates_rejected_total", JOB)),
                   "{{tidal_job}} {{reason}}"),
        ], unit="short", width=6,
           description="Pushes refused or dropped per second: stale (beyond the staleness bound), late (for "
                       "a version already published), duplicate (retried push), non_finite (NaN/Inf), bad_input."),
    ])  # fmt: skip


def _barrier() -> tuple[Panel, list[Panel]]:
    wait, apply = "tidal_shard_barrier_wait_seconds", "tidal_shard_apply_seconds"
    by = "tidal_job, shard"
    return row("Barrier wait", [
        timeseries("Barrier wait p50 / p95 (sync)", [
            target(quantile(0.5, wait, by, JOB), "{{tidal_job}} shard {{shard}} p50"),
            target(quantile(0.95, wait, by, JOB), "{{tidal_job}} shard {{shard}} p95"),
        ], unit="s", width=8,
           description="Sync mode: from the first gradient of a version to the barrier completing, per shard."),
        timeseries("Apply time p50 / p95", [
            target(quantile(0.5, apply, by, JOB), "{{tidal_job}} shard {{shard}} p50"),
            target(quantile(0.95, apply, by, JOB), "{{tidal_job}} shard {{shard}} p95"),
        ], unit="s", width=8, description="Aggregation and optimizer step per applied update, per shard."),
        timeseries("Backup workers and staleness bound in force", [
            target(f"max by (tidal_job, setting) ({sel('tidal_shard_consistency_setting', JOB)})",
                   "{{tidal_job}} {{setting}}"),
        ], unit="none", width=8,
           description="The consistency settings the shards apply (highest over shards). Fixed by the job spec, "
                       "except in mode auto, whose tuner changes them as it measures the workers (each change is "
                       "logged by the shard with its reason)."),
    ])  # fmt: skip


def _bytes() -> tuple[Panel, list[Panel]]:
    return row("Bytes on the wire", [
        timeseries("Worker sent / received", [
            target(sum_by("worker", rate("tidal_worker_sent_bytes_total", WORKER)), "{{worker}} sent"),
            target(sum_by("worker", rate("tidal_worker_received_bytes_total", WORKER)), "{{worker}} received"),
        ], unit="Bps", description="Data-plane bytes per second (gradients up, parameters down) per worker."),
        timeseries("Shard in / out", [
            target(sum_by("shard", rate("tidal_shard_received_bytes_total", JOB)), "shard {{shard}} in"),
            target(sum_by("shard", rate("tidal_shard_sent_bytes_total", JOB)), "shard {{shard}} out"),
        ], unit="Bps", description="Data-plane bytes per second received (gradients) and sent (parameters) per "
                                   "shard."),
        timeseries("Shard memory", [
            target(sum_by("shard, kind", sel("tidal_shard_held_bytes", JOB)), "shard {{shard}} {{kind}}"),
        ], stacked=True, unit="bytes", description="Bytes held per shard: parameters and optimizer state."),
        stat("Exchange streams by transport", [
            target(sum_by("transport", sel("tidal_shard_exchange_streams_total", JOB)), "{{transport}}"),
        ], unit="none", width=8,
           description="Worker streams opened on the shards, by how their tensors travel: shared_memory (worker "
                       "and shard on one host, through /dev/shm), bulk (a socket beside the stream, workers with "
                       "TIDAL_BULK_CHANNEL=on) or grpc (inline in the messages). A worker on its shard's host that "
                       "shows up under grpc has TIDAL_SHARED_MEMORY=off, or no room in /dev/shm."),
    ])  # fmt: skip


def _embedding_tables() -> tuple[Panel, list[Panel]]:
    """Sparse parameters (docs/embeddings.md "Metrics"): rows held on the shards, rows and bytes
    moved by the workers' row RPCs. Empty for a job without embedding tables."""
    shard_table = "tidal_job, shard, table"
    shard_legend = "{{tidal_job}} shard {{shard}} {{table}}"
    worker_table = "tidal_job, worker, table"
    worker_legend = "{{worker}} {{table}}"
    return row("Embedding tables", [
        timeseries("Rows held per shard", [
            target(sum_by(shard_table, sel("tidal_shard_embedding_rows", JOB)), shard_legend),
        ], unit="short", description="Embedding rows each shard holds, per table (created on first use, at most "
                                     "a hashed table's share of its capacity)."),
        timeseries("Row memory per shard", [
            target(sum_by(shard_table, sel("tidal_shard_embedding_held_bytes", JOB)), shard_legend),
        ], stacked=True, unit="bytes",
           description="Bytes allocated for each table's rows on each shard: values, row-wise optimizer state, "
                       "bookkeeping and index (an estimate)."),
        timeseries("Unique-id ratio", [
            target(f"max by ({worker_table}) ({sel('tidal_worker_embedding_unique_ratio', WORKER)})",
                   worker_legend),
        ], unit="percentunit", description="Unique ids over ids read in each worker's latest step, per table "
                                           "(1: no id repeated in the batch; low: the batch deduplicates well)."),
        timeseries("Rows pulled / pushed per second (workers)", [
            target(sum_by(worker_table, rate("tidal_worker_embedding_rows_pulled_total", WORKER)),
                   f"{worker_legend} pulled"),
            target(sum_by(worker_table, rate("tidal_worker_embedding_rows_pushed_total", WORKER)),
                   f"{worker_legend} pushed"),
        ], unit="short", description="Rows the training steps of each worker pulled (the unique ids of each "
                                     "batch) and gradient rows they pushed, per table."),
        timeseries("Rows served / updated per second (shards)", [
            target(sum_by(shard_table, rate("tidal_shard_embedding_rows_pulled_total", JOB)),
                   f"{shard_legend} served"),
            target(sum_by(shard_table, rate("tidal_shard_embedding_rows_pushed_total", JOB)),
                   f"{shard_legend} updated"),
        ], unit="short", description="Rows each shard served to PullRows and rows an optimizer step was applied "
                                     "to (a sync table's step counts its summed rows once), per table."),
        timeseries("Row bytes per second", [
            target(sum_by(worker_table, rate("tidal_worker_embedding_bytes_total", WORKER)),
                   f"{worker_legend} worker"),
            target(sum_by("tidal_job, shard, direction", rate("tidal_shard_embedding_bytes_total", JOB)),
                   "{{tidal_job}} shard {{shard}} {{direction}}"),
        ], unit="Bps", description="Row RPC bytes: each worker's gRPC messages of training pulls and pushes "
                                   "(requests and replies), and each shard's payload bytes (ids, rows, "
                                   "gradients) received and sent. Not in Bytes on the wire (the Exchange "
                                   "streams)."),
        timeseries("Evictions and refused ids per second", [
            target(sum_by(shard_table, rate("tidal_shard_embedding_evictions_total", JOB)),
                   f"{shard_legend} evicted"),
            target(sum_by(shard_table, rate("tidal_shard_embedding_refused_ids_total", JOB)),
                   f"{shard_legend} refused"),
        ], unit="short", width=24,
           description="Rows evicted (least recently used) to keep a hashed table within its capacity, and ids "
                       "refused in row requests (out of range, repeated, another shard's, non-finite gradient): "
                       "refused ids are a sender's bug or an attack."),
    ])  # fmt: skip


def _membership() -> tuple[Panel, list[Panel]]:
    handled = "grpc_server_handled_total"
    by = "job, grpc_method"
    errors = sum_by(by, rate(handled, extra='grpc_code!="OK"'))
    total = sum_by(by, rate(handled))
    # `or ... * 0`: a ratio of 0 for methods without errors, instead of no series at all.
    error_ratio = f"({errors} or {total} * 0) / {total}"
    return row("Membership and failures", [
        timeseries("Members by role and state", [
            target(sum_by("role, state", "tidal_coordinator_members"), "{{role}} {{state}}"),
        ], unit="short", width=8, description="Registered members as the coordinator sees them."),
        stat("Membership epoch", [target("max(tidal_coordinator_membership_epoch)", "epoch")], width=4,
             description="Bumped on every membership change; the data plane refuses older epochs."),
        timeseries("Jobs by state", [target(sum_by("state", "tidal_coordinator_jobs"), "{{state}}")],
                   unit="short", width=6, description="Jobs known to the coordinator, by state."),
        timeseries("Heartbeats/s", [
            target(sum_by("role", rate("tidal_coordinator_heartbeats_total")), "{{role}}"),
        ], unit="short", width=6, description="Heartbeats received by the coordinator per second."),
        timeseries("Missed heartbeats and failures", [
            target(sum_by("role", increase("tidal_coordinator_missed_heartbeats_total")), "{{role}} missed heartbeats"),
            target(sum_by("role, reason", increase("tidal_coordinator_member_failures_total")),
                   "{{role}} failed: {{reason}}"),
        ], unit="short", width=8,
           description="Members whose heartbeats stopped, and members declared failed, per rate interval."),
        timeseries("Targets up", [target('up{job=~"tidal-.*"}', "{{job}} {{instance}}")], unit="short", width=4,
                   description="1 when Prometheus could scrape the service's /metrics."),
        timeseries("gRPC requests/s by method", [
            target(sum_by(by, rate("grpc_server_started_total")), "{{job}} {{grpc_method}}"),
        ], unit="reqps", width=6, description="RPCs started per second on every service (streams count once)."),
        timeseries("gRPC error ratio", [target(error_ratio, "{{job}} {{grpc_method}}")], unit="percentunit",
                   width=6, description="Share of completed RPCs with a status other than OK (CANCELLED "
                                        "includes streams closed by their client)."),
    ])  # fmt: skip


def training_dashboard() -> dict[str, Any]:
    variables = [
        variable("tidal_job", "job", "label_values(tidal_job_info, tidal_job)"),
        variable("mode", "mode", 'label_values(tidal_job_info{tidal_job=~"$tidal_job"}, mode)'),
        variable("worker", "worker", 'label_values(tidal_worker_steps_total{tidal_job=~"$tidal_job"}, worker)'),
    ]
    rows = [
        _job_progress(),
        _throughput(),
        _step_time(),
        _staleness(),
        _barrier(),
        _bytes(),
        _embedding_tables(),
        _membership(),
    ]
    return dashboard(
        "tidal-training",
        "tidal / training",
        "Training jobs on a tidal parameter-server cluster: progress, throughput, step time and "
        "stragglers, staleness, barrier wait, bytes on the wire, embedding tables, membership and failures.",
        variables,
        rows,
    )


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {"tidal-training.json": training_dashboard}


# --- Output ------------------------------------------------------------------------------


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=True) + "\n"


def build() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def _panels(panels: list[Panel]) -> Iterator[Panel]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # collapsed rows nest their panels


def all_panels(board: dict[str, Any]) -> list[Panel]:
    """Every panel, including those nested in collapsed rows."""
    return list(_panels(board.get("panels", [])))


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    return [(p.get("title", ""), t["expr"]) for p in all_panels(board) for t in p.get("targets", []) if "expr" in t]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in build().items():
        path = OUT_DIR / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"stale (run python {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
