"""The climate_stations data set: CSV and Parquet, partitions by station or time, windows,
held-out period, real packaged records, and the station model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tidal.core.climate.stations import packaged_records
from tidal.core.datasets import describe_dataset, load_dataset
from tidal.core.errors import InvalidArgumentError
from tidal.core.models import build_model

STATIONS = {"a": 0.0, "b": 5.0, "c": 10.0, "d": 15.0, "e": 20.0}


def records() -> pd.DataFrame:
    """Five stations, 200 hourly records each (station "c" misses one hour), two variables."""
    rng = np.random.default_rng(0)
    rows = []
    for name, offset in STATIONS.items():
        times = pd.date_range("2021-01-01", periods=200, freq="h")
        temp = offset + 5 * np.sin(np.arange(200) * 2 * np.pi / 24) + rng.normal(0, 0.1, 200)
        wind = rng.normal(3, 1, 200)
        frame = pd.DataFrame({"station": name, "time": times, "temp": temp, "wind": wind})
        if name == "c":
            frame = frame.drop(index=50)
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module", params=["csv", "parquet"])
def table(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stations") / f"records.{request.param}"
    df = records()
    if request.param == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def args(path: Path, **over: object) -> dict[str, object]:
    return {"path": str(path), "lags": 6, "horizon": 2, "targets": ["temp"], **over}


def test_by_station_every_record_window_once(table: Path) -> None:
    whole = load_dataset("climate_stations", args(table), seed=0)
    parts = [load_dataset("climate_stations", args(table), 0, r, 2) for r in range(2)]
    assert sum(len(p.train_y) for p in parts) == len(whole.train_y)
    joined = torch.cat([p.train_x for p in parts])
    dist = torch.cdist(joined, whole.train_x, compute_mode="donot_use_mm_for_euclid_dist")
    assert bool(((dist == 0).sum(dim=0) == 1).all()), "each training window on exactly one worker"
    # The station offsets tell which stations a worker holds: disjoint, 3 + 2 stations.
    means = [sorted({round(float(v), 0) for v in p.train_x[:, 0]}) for p in parts]
    assert means[0] and means[1]
    assert torch.equal(parts[0].val_x, whole.val_x), "every worker validates on every station"


def test_by_time_every_window_once(table: Path) -> None:
    whole = load_dataset("climate_stations", args(table), seed=0)
    parts = [load_dataset("climate_stations", args(table, partition="time"), 0, r, 3) for r in range(3)]
    assert sum(len(p.train_y) for p in parts) == len(whole.train_y)
    sizes = [len(p.train_y) for p in parts]
    assert max(sizes) - min(sizes) <= 0.2 * max(sizes)


def test_windows_lags_targets_and_gaps(table: Path) -> None:
    d = load_dataset("climate_stations", args(table), seed=0)
    # Features: 6 lags x (temp, wind), latest first, then 4 time features; one target.
    assert d.train_x.shape[1] == 6 * 2 + 4 and d.train_y.shape[1] == 1
    assert describe_dataset("climate_stations", args(table), 0).input_shape == (16,)
    # 5 stations x (200 - 6 - 2 + 1) windows, less the 7 of station "c" that need its missing
    # hour (as a lag or as the target; the hour between lag 0 and the target is not used).
    total = len(d.train_y) + len(d.val_y)
    assert total == 4 * 193 + (193 - 7)
    # The target is temp two steps after lag 0: the next windows' lag 0 lines up with it.
    assert torch.allclose(d.train_y[0, 0], d.train_x[2, 0])


def test_normalisation_uses_the_training_period_only(table: Path) -> None:
    d = load_dataset("climate_stations", args(table), seed=0)
    # Train inputs are close to zero-mean unit-variance; shifting the validation period's
    # values would not change them.
    assert abs(float(d.train_x[:, 0].mean())) < 0.2
    df = records()
    cutoff = df["time"].min() + (df["time"].max() - df["time"].min()) * 0.8
    changed = df.copy()
    changed.loc[changed["time"] >= cutoff, "temp"] += 100.0
    path = table.parent / "changed.parquet"
    changed.to_parquet(path, index=False)
    d2 = load_dataset("climate_stations", args(path), seed=0)
    if table.suffix == ".parquet":
        torch.testing.assert_close(d2.train_x[:, :12], d.train_x[:, :12])


def test_model_starts_at_persistence_and_beats_it_after_training(table: Path) -> None:
    d = load_dataset("climate_stations", args(table), seed=0)
    model = build_model("station_mlp", {"hidden": [16]}, d.input_shape, d.num_classes, seed=0)
    with torch.no_grad():
        assert torch.equal(model(d.train_x[:4]), d.train_x[:4, :1])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        optimizer.zero_grad()
        d.objective.loss(model(d.train_x), d.train_y).backward()
        optimizer.step()
    with torch.no_grad():
        loss = float(d.objective.loss(model(d.val_x), d.val_y, train=False))
    assert d.objective.reference_loss is not None
    assert loss < 0.5 * d.objective.reference_loss


def test_packaged_noaa_records() -> None:
    t = packaged_records("noaa_hourly_2010")
    assert set(t["station"].to_pylist()) == {"seattle", "san_francisco"}
    assert t.num_rows == 17518  # a year of hours at each station, Seattle missing 2
    d = load_dataset("climate_stations", {"packaged": "noaa_hourly_2010", "lags": 24, "horizon": 6}, 0, 1, 2)
    assert d.train_x.shape[1] == 24 + 4


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"path": "/nonexistent.csv"}, "dataset.args.path"),
        ({"variables": ["rain"]}, "dataset.args.variables"),
        ({"targets": ["rain"]}, "dataset.args.targets"),
        ({"partition": "region"}, "dataset.args.partition"),
        ({"lags": 0}, "dataset.args.lags"),
        ({"packaged": "noaa_hourly_2010"}, "exactly one of dataset.args.path or dataset.args.packaged"),
    ],
)
def test_bad_arguments_name_the_field(table: Path, over: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        load_dataset("climate_stations", {**args(table), **over}, 0, 0, 2)


def test_more_workers_than_stations_is_refused(table: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="at least one station per worker"):
        load_dataset("climate_stations", args(table), 0, 0, 6)
