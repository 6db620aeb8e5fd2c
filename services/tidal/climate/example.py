"""`tidal climate example`: the worked example on a local cluster, with one command.

Generates the synthetic field if it is missing, then on 1 coordinator, 2 shards and 3 workers
runs the region-partitioned synchronous forecaster on the gridded field and the asynchronous
station forecaster on real NOAA records, reads the trained parameters back from the shards
and draws each forecast against the truth.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from tidal.client import TidalClient, job_state_name, load_spec_file
from tidal.climate.params import read_job_parameters
from tidal.climate.plot import grid_forecast_figure, save, station_forecast_figure
from tidal.core.climate.gridded import open_grid
from tidal.core.climate.stats import compute_stats, sidecar_path, write_stats
from tidal.core.climate.synth import SynthConfig, write_field
from tidal.core.data_types import Dataset
from tidal.core.datasets import load_dataset
from tidal.core.errors import TidalError
from tidal.core.plan import job_dataset_info, job_model, job_shard_map
from tidal.core.spec import JobSpec, parse_job_spec
from tidal.launcher import LocalCluster
from tidal.progress import follow_job
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "climate"
GRID_SPEC = "grid-region-sync.yaml"
STATION_SPEC = "stations-async.yaml"
# The example's field: 1000 six-hourly steps (250 days) on a 32 x 64 grid, 8 MB.
FIELD = SynthConfig(n_lat=32, n_lon=64, steps=1000, seed=0)


@dataclass(frozen=True)
class Ran:
    spec: JobSpec
    status: coord_pb.JobStatus
    wall_s: float
    params: torch.Tensor


def ensure_field(path: Path, val_steps: int, console: Console) -> None:
    """Writes the synthetic field and its statistics sidecar unless the file exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"Writing the synthetic field {path} ({FIELD.n_lat}x{FIELD.n_lon}, {FIELD.steps} steps)")
    write_field(str(path), FIELD)
    write_sidecar(str(path), None, val_steps, 64)


def write_sidecar(store: str, variables: list[str] | None, val_steps: int, stats_steps: int) -> str:
    args: dict[str, Any] = {"path": store, "val_steps": val_steps, "stats_steps": stats_steps}
    if variables:
        args["variables"] = variables
    grid = open_grid(args)
    try:
        stats = compute_stats(grid.ds, grid.meta, grid.train_steps, stats_steps)
    finally:
        grid.ds.close()
    out = sidecar_path(store)
    write_stats(out, stats, store)
    return out


async def _run(client: TidalClient, spec_dict: dict[str, Any], console: Console, security: SecurityConfig) -> Ran:
    spec = parse_job_spec(spec_dict)
    started = time.perf_counter()
    job = await client.submit(spec_dict)
    final = await follow_job(client, job.job_id, console)
    wall = time.perf_counter() - started
    if final.state != common_pb.JOB_STATE_SUCCEEDED:
        raise TidalError(f"job {job.job_id} ended {job_state_name(final.state)}: {final.message}")
    model = job_model(spec, job_dataset_info(spec))
    shards = [m.address for m in await client.cluster() if m.role == common_pb.ROLE_SHARD]
    params = await read_job_parameters(shards, final.job_id, job_shard_map(spec, model), security)
    return Ran(spec, final, wall, params)


def _trained(ran: Ran) -> tuple[torch.nn.Module, Dataset]:
    # The whole data set in memory (the figures read its tensors): validation over every cell.
    data = load_dataset(ran.spec.dataset.name, ran.spec.dataset.args, ran.spec.seed)
    model = job_model(ran.spec, data)
    torch.nn.utils.vector_to_parameters(ran.params, model.parameters())
    return model, data


def results_table(runs: list[Ran]) -> Table:
    table = Table(title="climate example: accuracy = skill against persistence on held-out data")
    for column in ("job", "mode", "workers", "partition", "wall s", "versions", "val loss", "skill"):
        table.add_column(column, justify="right")
    for r in runs:
        s = r.status
        table.add_row(
            s.job_id,
            r.spec.mode.value,
            str(r.spec.num_workers),
            str(r.spec.dataset.args.get("partition", "-")),
            f"{r.wall_s:.1f}",
            str(s.version),
            f"{s.val_loss:.6f}" if s.HasField("val_loss") else "-",
            f"{s.val_accuracy:.3f}" if s.HasField("val_accuracy") else "-",
        )
    return table


def run_example(out: Path, workdir: Path | None, console: Console) -> int:
    """Trains both jobs on a local cluster, then draws them; blocking, so the event loop runs
    only the part that talks to the coordinator."""
    grid_dict = load_spec_file(EXAMPLES / GRID_SPEC)
    station_dict = load_spec_file(EXAMPLES / STATION_SPEC)
    store = Path(grid_dict["dataset"]["args"]["path"])
    ensure_field(store, int(grid_dict["dataset"]["args"].get("val_steps", 16)), console)
    # The members resolve the relative path from their own working directory: this one.
    grid_dict["dataset"]["args"]["path"] = str(store.resolve())
    root = workdir or Path(tempfile.mkdtemp(prefix="tidal-climate-"))
    slowdowns = (1.0,) * max(parse_job_spec(grid_dict).num_workers, parse_job_spec(station_dict).num_workers)
    console.print(f"Starting 1 coordinator, 2 shards, {len(slowdowns)} workers (logs: {root / 'logs'})")
    with LocalCluster(root, num_shards=2, worker_slowdowns=slowdowns) as cluster:
        security = cluster.client_security()
        grid, stations = asyncio.run(_train(cluster.coordinator_address, security, grid_dict, station_dict, console))
    console.print(results_table([grid, stations]))
    _draw(out, store, grid, stations, console)
    return 0


async def _train(
    address: str, security: SecurityConfig, grid_dict: dict[str, Any], station_dict: dict[str, Any], console: Console
) -> tuple[Ran, Ran]:
    async with TidalClient(address, security) as client:
        return await _run(client, grid_dict, console, security), await _run(client, station_dict, console, security)


def _draw(out: Path, store: Path, grid: Ran, stations: Ran, console: Console) -> None:
    """The two forecast figures and results.json, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model, data = _trained(grid)
    opened = open_grid(grid.spec.dataset.args)
    try:
        mean, std = opened.stats().for_variables(opened.meta.variables, str(store))
        lat, lon = opened.meta.lat, opened.meta.lon
    finally:
        opened.ds.close()
    title = (
        f"{grid.status.job_id}: 6-hour forecast of t2m on the last held-out step "
        f"(sync, {grid.spec.num_workers} regions, skill {grid.status.val_accuracy:.2f} vs persistence)"
    )
    halo = int(grid.spec.dataset.args.get("halo", 4))
    paths = [save(grid_forecast_figure(model, data, lat, lon, mean[0], std[0], halo, title), out / "grid-forecast.png")]
    s_model, s_data = _trained(stations)
    s_title = (
        f"{stations.status.job_id}: San Francisco temperature 6 h ahead, first held-out week "
        f"(async, skill {stations.status.val_accuracy:.2f} vs persistence)"
    )
    paths.append(save(station_forecast_figure(s_model, s_data, s_title, 0, 24 * 7), out / "station-forecast.png"))
    summary = {
        r.status.job_id: {
            "mode": r.spec.mode.value,
            "wall_s": round(r.wall_s, 2),
            "val_loss": r.status.val_loss,
            "skill_vs_persistence": r.status.val_accuracy,
            "spec": json.loads(r.status.spec_json),
        }
        for r in (grid, stations)
    }
    # The spec as written (a relative store path), not this machine's absolute one.
    summary[grid.status.job_id]["spec"]["dataset"]["args"]["path"] = str(store)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print("Wrote " + ", ".join(str(p) for p in [*paths, out / "results.json"]))
