"""The climate_grid data set: partitions read exactly their cells, NetCDF and Zarr agree, shared
statistics, latitude-weighted loss, metadata-only descriptor, and bad input named by field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from tidal.core.climate import gridded
from tidal.core.climate.stats import read_stats, sidecar_path
from tidal.core.climate.synth import SynthConfig, parse_size, write_field
from tidal.core.datasets import dataset_partition, describe_dataset, load_dataset
from tidal.core.errors import InvalidArgumentError
from tidal.core.models import build_model

CFG = SynthConfig(n_lat=16, n_lon=32, steps=60, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "t2m.nc"
    write_field(str(path), CFG)
    return path


@pytest.fixture(scope="module")
def zarr_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "t2m.zarr"
    write_field(str(path), CFG)
    return path


def args(path: Path, **over: object) -> dict[str, object]:
    return {"path": str(path), "val_steps": 8, **over}


def test_synthetic_field_is_physically_shaped(store: Path) -> None:
    ds = xr.open_dataset(store, engine="h5netcdf")
    t2m = ds["t2m"]
    assert t2m.dims == ("time", "latitude", "longitude") and t2m.shape == (60, 16, 32)
    assert ds["latitude"].values[0] > 0 > ds["latitude"].values[-1], "north to south, as ERA5"
    zonal = t2m.mean(dim=("time", "longitude")).values
    assert zonal[7] > zonal[0] + 20 and zonal[8] > zonal[-1] + 20, "the equator is warmer than the poles"
    assert float(t2m.min()) > 200 and float(t2m.max()) < 320
    # January: the northern hemisphere is colder than the southern at mirrored latitudes.
    assert float(t2m[:, 2].mean()) < float(t2m[:, -3].mean())
    # The same seed writes the same field.
    again = store.parent / "again.nc"
    write_field(str(again), CFG)
    assert np.array_equal(xr.open_dataset(again, engine="h5netcdf")["t2m"].values, t2m.values)


def test_size_knob() -> None:
    assert parse_size("200kB") == 200_000
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("50MB") == 50_000_000
    with pytest.raises(InvalidArgumentError, match="--size"):
        parse_size("lots")
    cfg = SynthConfig.for_size(parse_size("1GB"), 64, 128)
    assert abs(cfg.steps * 64 * 128 * 4 - 1e9) < 64 * 128 * 4


def test_size_knob_writes_a_file_of_that_size(tmp_path: Path) -> None:
    path = tmp_path / "small.nc"
    write_field(str(path), SynthConfig.for_size(parse_size("400kB"), 16, 32))
    assert 400_000 <= path.stat().st_size <= 1.1 * 400_000


def test_region_tiles_together_hold_exactly_the_grid(store: Path) -> None:
    whole = load_dataset("climate_grid", args(store, partition="time", halo=0), seed=0)
    world = 4
    seen = torch.zeros(16, 32, dtype=torch.int64)
    for rank in range(world):
        part = load_dataset("climate_grid", args(store, partition="region", halo=2), 0, rank, world)
        assert part.part == (rank, world)
        assert dataset_partition(part, rank, world, 0).tolist() == list(range(len(part.train_y)))
        weight = part.objective.train_weight
        assert weight is not None
        tile = gridded.region_tiles(16, 32, world, 2, None, True)[rank]
        mask = torch.from_numpy(tile.interior_mask())
        assert torch.equal(weight > 0, mask), "loss only on owned cells, never on the halo"
        lat, lon = tile.lat_indices(), tile.lon_indices()
        # Same values as the whole-grid load at the tile's cells, halo included.
        ref = whole.train_y[:, :, lat][:, :, :, lon]
        torch.testing.assert_close(part.train_y, ref[: len(part.train_y)], rtol=0, atol=0)
        rows, cols = np.nonzero(tile.interior_mask())
        for r, c in zip(lat[rows], lon[cols], strict=True):
            seen[r, c] += 1
    assert bool((seen == 1).all())


def test_history_windows_line_up(store: Path) -> None:
    d = load_dataset("climate_grid", args(store, partition="time", history=3), seed=0)
    assert d.train_x.shape[1:] == (3, 1, 16, 32 + 2 * 4)  # default halo 4 wraps the date line
    for i in range(len(d.train_y) - 3):
        assert torch.equal(d.train_x[i + 1][-1], d.train_x[i + 2][-2])
        assert torch.equal(d.train_y[i], d.train_x[i + 1][-1])
    assert d.input_shape == (3, 1, 16, 32), "the model is built for the grid, not for what one worker holds"


@pytest.mark.parametrize("partition", ["time", "random"])
def test_time_and_random_partitions_cover_every_sample_once(store: Path, partition: str) -> None:
    whole = load_dataset("climate_grid", args(store, partition="time"), seed=0)
    world = 3
    targets = []
    for rank in range(world):
        part = load_dataset("climate_grid", args(store, partition=partition), 9, rank, world)
        targets.append(part.train_y)
        again = load_dataset("climate_grid", args(store, partition=partition), 9, rank, world)
        assert torch.equal(part.train_x, again.train_x), "stable for a seed"
    joined = torch.cat(targets)
    assert len(joined) == len(whole.train_y)
    # Each whole-set target appears exactly once among the parts.
    flat_whole = whole.train_y.flatten(1)
    flat_parts = joined.flatten(1)
    dist = torch.cdist(flat_parts, flat_whole, compute_mode="donot_use_mm_for_euclid_dist")
    matches = (dist == 0).sum(dim=0)
    assert bool((matches == 1).all())


def test_netcdf_and_zarr_read_the_same(store: Path, zarr_store: Path) -> None:
    a = load_dataset("climate_grid", args(store), 0, 1, 2)
    b = load_dataset("climate_grid", args(zarr_store), 0, 1, 2)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)


def test_tile_losses_average_to_the_global_latitude_weighted_loss(store: Path) -> None:
    whole = load_dataset("climate_grid", args(store, partition="time"), seed=0)
    parts = [load_dataset("climate_grid", args(store, tiles=[2, 2]), 0, r, 4) for r in range(4)]
    # Persistence as the forecast: the loss of each tile, averaged, is the global one.
    tile_losses = [float(p.objective.loss(p.train_x[:, -1], p.train_y)) for p in parts]
    global_loss = float(whole.objective.loss(whole.train_x[:, -1], whole.train_y))
    assert np.mean(tile_losses) == pytest.approx(global_loss, rel=1e-5)
    # And it is the cos(latitude)-weighted mean squared error.
    lat = np.deg2rad(xr.open_dataset(store, engine="h5netcdf")["latitude"].values)
    err2 = (whole.train_x[:, -1] - whole.train_y).square().mean(dim=(0, 1)).numpy()[:, 4:-4]
    expected = (err2 * np.cos(lat)[:, None]).sum() / (np.cos(lat).sum() * 32)
    assert global_loss == pytest.approx(expected, rel=1e-5)
    # Skill: persistence scores 0 on the validation steps.
    assert whole.objective.accuracy(0, whole.objective.reference_loss or 0, 1) == 0.0


def test_models_start_at_persistence_and_fit_any_tile(store: Path) -> None:
    d = load_dataset("climate_grid", args(store), 0, 0, 2)
    model = build_model("grid_forecaster", {"channels": 8, "blocks": 1}, d.input_shape, d.num_classes, seed=0)
    with torch.no_grad():
        assert torch.equal(model(d.train_x[:2]), d.train_x[:2, -1])
        assert model(d.val_x[:1]).shape == d.val_y[:1].shape
    with pytest.raises(InvalidArgumentError, match="kernel_size"):
        build_model("grid_forecaster", {"kernel_size": 2}, d.input_shape, d.num_classes, seed=0)


def test_descriptor_reads_no_data(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reads(*a: object, **k: object) -> None:
        raise AssertionError("describe must not read data")

    monkeypatch.setattr(gridded, "read_frames", no_reads)
    monkeypatch.setattr(gridded, "compute_stats", no_reads)
    info = describe_dataset("climate_grid", args(store, history=2), seed=0)
    assert info.input_shape == (2, 1, 16, 32) and info.num_classes == 1


def test_stats_sidecar_shared_and_never_from_validation(store: Path, tmp_path: Path) -> None:
    # Without a sidecar every member computes the same statistics from the training steps.
    a = load_dataset("climate_grid", args(store, partition="time"), seed=0)
    b = load_dataset("climate_grid", args(store, partition="time"), seed=0)
    assert torch.equal(a.train_x, b.train_x)
    grid = gridded.open_grid(args(store))
    stats = grid.stats()
    raw = xr.open_dataset(store, engine="h5netcdf")["t2m"].values[: 60 - 8].astype(np.float64)
    assert stats.mean["t2m"] == pytest.approx(raw.mean(), rel=1e-9)
    assert stats.std["t2m"] == pytest.approx(raw.std(), rel=1e-6)
    # A sidecar is used when present; one that covers validation steps is refused.
    sidecar = tmp_path / "stats.json"
    sidecar.write_text(
        json.dumps(
            {
                "format": "tidal-climate-stats/1",
                "train_steps": 40,
                "sampled_steps": 40,
                "variables": {"t2m": {"mean": 280.0, "std": 10.0}},
            }
        )
    )
    d = load_dataset("climate_grid", args(store, stats=str(sidecar), partition="time"), seed=0)
    assert float(d.train_y[0, 0, 0, 4]) == pytest.approx((raw[2, 0, 0] - 280.0) / 10.0, rel=1e-5)
    with pytest.raises(InvalidArgumentError, match="first 40 time steps"):
        read_stats(str(sidecar), 30)
    assert sidecar_path(str(store)).endswith("t2m.nc.stats.json")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"path": "/nonexistent.nc"}, "dataset.args.path"),
        ({"variables": ["u10"]}, "dataset.args.variables"),
        ({"select": {"level": 500}}, "dataset.args.select.level"),
        ({"partition": "diagonal"}, "dataset.args.partition"),
        ({"val_steps": 59}, "dataset.args.val_steps"),
        ({"tiles": [3, 3]}, "dataset.args.tiles"),
        ({"halo": -1}, "dataset.args.halo"),
        ({"colour": "red"}, "dataset.args.colour"),
    ],
)
def test_bad_arguments_name_the_field(store: Path, over: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        load_dataset("climate_grid", {**args(store), **over}, 0, 0, 4)


def test_era5_style_store_with_levels(tmp_path: Path) -> None:
    """ERA5 naming (valid_time, pressure_level), several variables, one level selected."""
    rng = np.random.default_rng(0)
    shape = (30, 3, 8, 16)
    ds = xr.Dataset(
        {
            "t": (("valid_time", "pressure_level", "latitude", "longitude"), rng.normal(250, 10, shape)),
            "z": (("valid_time", "pressure_level", "latitude", "longitude"), rng.normal(5e4, 1e3, shape)),
            "t2m": (("valid_time", "latitude", "longitude"), rng.normal(280, 10, (30, 8, 16))),
        },
        coords={
            "valid_time": np.arange(30) * np.timedelta64(6, "h") + np.datetime64("2020-01-01"),
            "pressure_level": [850, 500, 250],
            "latitude": np.linspace(78.75, -78.75, 8),
            "longitude": np.arange(16) * 22.5,
        },
    )
    path = tmp_path / "era5.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    spec = {"path": str(path), "variables": ["t", "z"], "select": {"pressure_level": 500}, "val_steps": 4}
    info = describe_dataset("climate_grid", spec, 0)
    assert info.input_shape == (2, 2, 8, 16) and info.num_classes == 2
    d = load_dataset("climate_grid", {**spec, "halo": 0}, 0, 1, 2)
    lat, lon = region_tiles_for(8, 16, 2)[1]
    expected = (ds["z"].sel(pressure_level=500).values[2, lat][:, lon] - d_mean(ds, "z", 26)) / d_std(ds, "z", 26)
    torch.testing.assert_close(d.train_y[0, 1].double(), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)
    # Without the selection, the level dimension is refused by name.
    with pytest.raises(InvalidArgumentError, match=r"dataset\.args\.variables"):
        describe_dataset("climate_grid", {**spec, "select": {}}, 0)


def region_tiles_for(n_lat: int, n_lon: int, world: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(t.lat_indices(), t.lon_indices()) for t in gridded.region_tiles(n_lat, n_lon, world, 0, None, True)]


def d_mean(ds: xr.Dataset, name: str, train_steps: int) -> float:
    return float(ds[name].sel(pressure_level=500).values[:train_steps].mean())


def d_std(ds: xr.Dataset, name: str, train_steps: int) -> float:
    return float(ds[name].sel(pressure_level=500).values[:train_steps].std())
