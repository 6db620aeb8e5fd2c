"""`tidal demo`: the same job in sync and in async mode on a local cluster, side by side.

One coordinator, two shards and three workers (the third simulates a machine 3x slower)
run as subprocesses on loopback. The job trains an MLP to forecast rain in Seattle from
NOAA daily observations that ship offline with the `vega_datasets` package.

Mutual TLS is on: the demo makes a development bundle (`tidal certs`) in its work folder
(`pki/`), every service uses it, and the demo submits as the `admin` holder.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tidal.client import TidalClient, job_state_name
from tidal.core.errors import TidalError
from tidal.launcher import LocalCluster
from tidal.local_prometheus import Prometheus
from tidal.progress import follow_job, stdout_console
from tidal.security.bundle import bundle_exists, create_bundle, environment
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

WORKER_SLOWDOWNS = (1.0, 1.0, 3.0)
# Alert rules shipped in a source checkout (absent from an installed wheel: then none are loaded).
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"


def demo_spec(mode: str, steps: int) -> dict[str, Any]:
    return {
        "name": f"demo-{mode}",
        "mode": mode,
        "model": {"name": "mlp", "args": {"hidden": [64, 64]}},
        "dataset": {"name": "seattle_weather"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "batch_size": 32,
        "steps": steps,
        "num_workers": len(WORKER_SLOWDOWNS),
        "num_shards": 2,
        "seed": 0,
        "eval_every": max(1, steps // 5),
    }


@dataclass(frozen=True)
class Outcome:
    mode: str
    status: coord_pb.JobStatus
    wall_s: float


def demo_pki(root: Path) -> Path:
    """The demo's bundle in `root/pki` (reused when a --workdir already has a complete one)."""
    pki = root / "pki"
    if not bundle_exists(pki):
        create_bundle(pki, force=True)
    return pki


async def run_jobs(address: str, steps: int, console: Console, security: SecurityConfig) -> list[Outcome]:
    outcomes = []
    async with TidalClient(address, security=security) as client:
        for mode in ("sync", "async"):
            job = await client.submit(demo_spec(mode, steps))
            final = await follow_job(client, job.job_id, console)
            outcomes.append(Outcome(mode, final, final.finished_at - final.started_at))
    return outcomes


def results_table(outcomes: list[Outcome]) -> Table:
    table = Table(
        title="same job, data and seed; worker 3 is 3x slower",
        caption="versions: optimizer steps per shard; gradients: worker gradients folded in (per shard)",
    )
    columns = ("mode", "state", "wall s", "versions", "gradients", "samples/s", "val loss", "val acc", "stale avg")
    for column in (*columns, "stale max"):
        table.add_column(column, justify="right")
    for o in outcomes:
        s = o.status
        shards = json.loads(s.spec_json)["num_shards"]
        table.add_row(
            o.mode,
            job_state_name(s.state),
            f"{o.wall_s:.1f}",
            str(s.version),
            str(s.updates_applied // shards),
            f"{s.samples / o.wall_s:.0f}" if o.wall_s > 0 else "-",
            f"{s.val_loss:.4f}" if s.HasField("val_loss") else "-",
            f"{s.val_accuracy:.3f}" if s.HasField("val_accuracy") else "-",
            f"{s.staleness_mean:.2f}",
            str(s.staleness_max),
        )
    return table


def _print_endpoints(cluster: LocalCluster, console: Console, pki: Path) -> None:
    console.print(
        f"Coordinator: gRPC {cluster.coordinator_address}, REST {cluster.rest_url}/v1/jobs "
        f"(OpenAPI at {cluster.rest_url}/docs)"
    )
    console.print(
        f"Mutual TLS on, certificates and tokens in {pki}: curl --cacert {pki / 'ca.crt'} "
        f'-H "Authorization: Bearer $(cat {pki / "admin.token"})" {cluster.rest_url}/v1/jobs',
        soft_wrap=True,
    )
    metrics = ", ".join(f"{name} {cluster.metrics_url(name)}" for name in cluster.services)
    console.print(f"Prometheus metrics: {metrics}", soft_wrap=True)


def _start_prometheus(cluster: LocalCluster, root: Path, console: Console) -> Prometheus:
    rules = sorted(RULES.glob("*-alerts.yml")) if RULES.is_dir() else []
    (root / "prometheus").mkdir(exist_ok=True)
    prometheus = Prometheus(root / "prometheus", cluster.scrape_configs(), interval_s=2.0, rule_files=rules)
    prometheus.start()
    console.print(f"Prometheus: {prometheus.url} (try tidal_job_info or rate(tidal_worker_samples_total[30s]))")
    return prometheus


def _wait_for_ctrl_c() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return  # the expected way to end a demo that stays up


def run_demo(steps: int, workdir: Path | None, with_prometheus: bool = False) -> int:
    console = stdout_console()
    with tempfile.TemporaryDirectory(prefix="tidal-demo-") as tmp:
        root = workdir or Path(tmp)
        started = time.monotonic()
        console.print(
            f"Starting 1 coordinator, 2 shards, {len(WORKER_SLOWDOWNS)} workers on 127.0.0.1 (logs: {root / 'logs'})"
        )
        prometheus: Prometheus | None = None
        try:
            pki = demo_pki(root)
            admin = SecurityConfig.from_env(environment(pki, "admin"))
            cluster_env = environment(pki)
            with LocalCluster(root, num_shards=2, worker_slowdowns=WORKER_SLOWDOWNS, env=cluster_env) as cluster:
                _print_endpoints(cluster, console, pki)
                if with_prometheus:
                    prometheus = _start_prometheus(cluster, root, console)
                outcomes = asyncio.run(run_jobs(cluster.coordinator_address, steps, console, admin))
                console.print(results_table(outcomes))
                console.print(f"Total {time.monotonic() - started:.0f}s.")
                if prometheus is not None:
                    console.print(f"The cluster and Prometheus ({prometheus.url}) stay up: press Ctrl-C to stop.")
                    _wait_for_ctrl_c()
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: cluster stopped[/yellow]")
            return 130
        except TidalError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
        finally:
            if prometheus is not None:
                prometheus.stop()
        failed = [o for o in outcomes if o.status.state != common_pb.JOB_STATE_SUCCEEDED]
        for o in failed:
            console.print(f"[red]{o.mode} job {job_state_name(o.status.state)}:[/red] {o.status.message}")
        return 1 if failed else 0
