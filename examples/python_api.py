"""tidal from Python, no spec file: a local cluster, one job run synchronously, then asynchronously.

    python examples/python_api.py

Starts 1 coordinator, 1 shard and 2 workers on 127.0.0.1, trains an MLP that forecasts rain in
Seattle (NOAA data shipped with `vega_datasets`) for 40 steps per worker, first with the blocking
client (`cluster.client()`, also right for notebooks), then with the async one (`async_client()`).
tests/integration/test_python_api.py runs this file.
"""

from __future__ import annotations

import asyncio

import tidal

SPEC = tidal.JobSpec(
    name="rain-sync",
    model={"name": "mlp", "args": {"hidden": [32, 32]}},
    dataset={"name": "seattle_weather"},
    optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
    mode="sync",
    steps=40,
    num_workers=2,
    eval_every=10,
)


class Progress:
    """A `progress` callback: one line whenever the state, the evaluation or the tens of versions change."""

    def __init__(self) -> None:
        self.last: tuple[str, int, float | None] | None = None

    def __call__(self, status: tidal.JobStatus) -> None:
        key = (status.state, status.version // 10, status.val_loss)
        if key != self.last:
            self.last = key
            loss = f"{status.val_loss:.4f}" if status.val_loss is not None else "-"
            where = f"version {status.version:>3}/{status.target_version}"
            print(f"  {status.name}: {status.state:<9} {where}, val loss {loss}")


def report(result: tidal.JobResult) -> str:
    loss = f"{result.val_loss:.4f}" if result.val_loss is not None else "-"
    accuracy = f"{result.val_accuracy:.3f}" if result.val_accuracy is not None else "-"
    return (
        f"{result.name}: {result.state} in {result.duration_s:.1f}s, {result.version} versions, "
        f"{result.samples} samples, val loss {loss}, val accuracy {accuracy}"
    )


async def run_async(cluster: tidal.Cluster, spec: tidal.JobSpec) -> tidal.JobResult:
    """The same API for async code: TidalClient (tidal/client.py) returns protobuf statuses."""
    async with cluster.async_client() as client:
        job = await client.submit(spec)
        progress = Progress()
        async for status in client.watch(job.job_id):
            progress(tidal.JobStatus.from_proto(status))
        return tidal.JobResult.from_proto(await client.get(job.job_id))


def main() -> int:
    with tidal.local_cluster(shards=1, workers=2) as cluster:
        print(f"cluster up: coordinator {cluster.address}, logs in {cluster.logs}")
        with cluster.client() as client:
            synced = client.submit(SPEC).wait(progress=Progress())
        print(report(synced))
        asynced = asyncio.run(run_async(cluster, SPEC.replace(name="rain-async", mode="async")))
        print(report(asynced))
    return 0 if synced.succeeded and asynced.succeeded else 1


if __name__ == "__main__":
    raise SystemExit(main())
