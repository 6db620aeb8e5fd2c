"""The bring-your-own example from Python: the job of sync.yaml, then of async.yaml.

    python examples/byo/make_data.py     # once: writes examples/byo/data/weather.csv
    python examples/byo/run.py

Starts 1 coordinator, 1 shard and 2 workers on 127.0.0.1 that may import the package
`byo_user` from this folder (`user_modules` is the TIDAL_MODEL_MODULES allow-list, `module_dirs`
goes on the services' PYTHONPATH; only the workers import it). Prints each job's result with its
metric, the custom loss `focal_loss`. tests/integration/test_byo_example.py runs this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tidal

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "weather.csv"

SPEC = tidal.JobSpec(
    name="byo-sync",
    mode="sync",
    model={"name": "byo_user.models:residual_mlp", "args": {"width": 32, "blocks": 2}},
    objective="byo_user.losses:focal_loss",
    dataset={
        "name": "tabular",
        "args": {"path": str(DATA), "target": "rain_tomorrow", "split_column": "year", "val_value": 2025},
    },
    optimizer={"name": "adam", "lr": 0.003},
    steps=60,
    num_workers=2,
    eval_every=20,
)


def report(result: tidal.JobResult) -> str:
    metric = f"val {result.val_metric} {result.val_accuracy:.4f}" if result.val_accuracy is not None else "no eval"
    return f"{result.name}: {result.state} in {result.duration_s:.1f}s, {result.version} versions, {metric}"


def main() -> int:
    if not DATA.exists():
        print(f"{DATA} is missing: run `python {HERE / 'make_data.py'}` first", file=sys.stderr)
        return 2
    results = []
    cluster = tidal.local_cluster(shards=1, workers=2, user_modules=["byo_user"], module_dirs=[HERE])
    with cluster as running, running.client() as client:
        for spec in (SPEC, SPEC.replace(name="byo-async", mode="async")):
            result = client.submit(spec).wait()
            print(report(result))
            if not result.succeeded:
                print(f"  {result.message}")
            results.append(result)
    return 0 if all(r.succeeded for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
