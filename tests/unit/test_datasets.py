"""Unit tests for tidal.core.datasets: loaders, validation and deterministic sharding."""

from __future__ import annotations

import csv
import importlib.resources
import io
import math
from datetime import date

import pytest
import torch

# isort: split
from tidal.core.datasets import (
    DATASETS,
    Dataset,
    batch_indices,
    load_dataset,
    partition_indices,
)
from tidal.core.errors import InvalidArgumentError


def _raw_seattle() -> list[tuple[date, list[float]]]:
    """Independent re-read of the CSV, to check the loader against."""
    path = importlib.resources.files("vega_datasets") / "_data" / "seattle-weather.csv"
    rows = []
    for rec in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))):
        y, m, d = (int(p) for p in rec["date"].split("/"))
        vals = [float(rec[k]) for k in ("precipitation", "temp_max", "temp_min", "wind")]
        rows.append((date(y, m, d), vals))
    return sorted(rows)


@pytest.fixture(scope="module")
def seattle() -> Dataset:
    return load_dataset("seattle_weather", {}, seed=0)


def test_registry_names() -> None:
    assert set(DATASETS) == {"seattle_weather", "synthetic"}


def test_seattle_shapes_and_labels(seattle: Dataset) -> None:
    assert seattle.name == "seattle_weather"
    assert seattle.num_classes == 2
    assert seattle.input_shape == (14,)  # 4 vars x 3 days + sin/cos season
    assert seattle.train_x.dtype == torch.float32 and seattle.train_y.dtype == torch.int64
    assert seattle.train_x.shape == (1093, 14) and seattle.train_y.shape == (1093,)
    assert seattle.val_x.shape == (365, 14) and seattle.val_y.shape == (365,)
    for y in (seattle.train_y, seattle.val_y):
        assert set(y.unique().tolist()) == {0, 1}
    for x in (seattle.train_x, seattle.val_x):
        assert torch.isfinite(x).all()


def test_seattle_split_by_year_and_label_alignment(seattle: Dataset) -> None:
    rows = _raw_seattle()
    # Targets are days 3.. of the series (two lag days + day d must precede them).
    targets = rows[3:]
    train_t = [r for r in targets if r[0].year <= 2014]
    val_t = [r for r in targets if r[0].year == 2015]
    assert len(train_t) == len(seattle.train_y) and len(val_t) == len(seattle.val_y)
    assert seattle.train_y.tolist() == [int(v[0] > 0) for _, v in train_t]
    assert seattle.val_y.tolist() == [int(v[0] > 0) for _, v in val_t]
    # Standardisation is affine, so column 0 (day-d precipitation) must be perfectly
    # correlated with the raw precipitation of the day before each target.
    raw_prev = torch.tensor([v[0] for _, v in rows[2:-1]], dtype=torch.float64)
    feat = torch.cat([seattle.train_x[:, 0], seattle.val_x[:, 0]]).double()
    corr = torch.corrcoef(torch.stack([raw_prev, feat]))[0, 1]
    assert corr > 0.99999


def test_seattle_standardised_on_train(seattle: Dataset) -> None:
    assert seattle.train_x.mean(dim=0).abs().max() < 1e-5
    assert (seattle.train_x.std(dim=0, unbiased=False) - 1).abs().max() < 1e-4
    # Validation uses train statistics, so it is not exactly standardised itself.
    assert seattle.val_x.mean(dim=0).abs().max() > 1e-3


def test_seattle_rejects_args() -> None:
    with pytest.raises(InvalidArgumentError, match=r"dataset\.args\.window"):
        load_dataset("seattle_weather", {"window": 3}, seed=0)


def test_synthetic_deterministic_and_seeded() -> None:
    a = load_dataset("synthetic", {"num_samples": 500}, seed=7)
    b = load_dataset("synthetic", {"num_samples": 500}, seed=7)
    c = load_dataset("synthetic", {"num_samples": 500}, seed=8)
    for field in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (400, 32) and a.val_x.shape == (100, 32)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert a.num_classes == 4 and a.input_shape == (32,)
    assert int(a.train_y.min()) >= 0 and int(a.train_y.max()) < 4


def test_synthetic_defaults_and_configurable_size() -> None:
    d = load_dataset("synthetic", {}, seed=0)
    assert len(d.train_y) + len(d.val_y) == 4096 and d.input_shape == (32,)
    d = load_dataset(
        "synthetic",
        {"num_samples": 100, "num_features": 5, "num_classes": 3, "val_fraction": 0.5},
        seed=0,
    )
    assert d.train_x.shape == (50, 5) and d.val_x.shape == (50, 5) and d.num_classes == 3


def test_synthetic_image_variant() -> None:
    d = load_dataset("synthetic", {"num_samples": 64, "image_size": 8}, seed=1)
    assert d.input_shape == (1, 8, 8)
    assert d.train_x.shape[0] + d.val_x.shape[0] == 64


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"num_samples": -3}, "dataset.args.num_samples"),
        ({"num_samples": True}, "dataset.args.num_samples"),
        ({"num_samples": 10.0}, "dataset.args.num_samples"),
        ({"num_features": 0}, "dataset.args.num_features"),
        ({"num_features": "32"}, "dataset.args.num_features"),
        ({"num_classes": 1}, "dataset.args.num_classes"),
        ({"image_size": -1}, "dataset.args.image_size"),
        ({"noise": -0.1}, "dataset.args.noise"),
        ({"noise": math.nan}, "dataset.args.noise"),
        ({"noise": "low"}, "dataset.args.noise"),
        ({"val_fraction": 0.0}, "dataset.args.val_fraction"),
        ({"val_fraction": 1.0}, "dataset.args.val_fraction"),
        ({"val_fraction": 1.5}, "dataset.args.val_fraction"),
        ({"num_samples": 1 << 30, "num_features": 1 << 10}, "dataset.args.num_samples"),
        ({"bogus": 1}, "dataset.args.bogus"),
    ],
)
def test_synthetic_bad_args(args: dict, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        load_dataset("synthetic", args, seed=0)


def test_load_dataset_bad_name_and_args() -> None:
    with pytest.raises(InvalidArgumentError, match=r"dataset\.name.*'mnist'"):
        load_dataset("mnist", {}, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"dataset\.args"):
        load_dataset("synthetic", [("num_samples", 3)], seed=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="seed"):
        load_dataset("synthetic", {}, seed=1 << 70)


@pytest.mark.parametrize("num_samples", [0, 1, 10, 11, 1000])
@pytest.mark.parametrize("world_size", [1, 3, 4, 7])
def test_partition_disjoint_complete_balanced(num_samples: int, world_size: int) -> None:
    parts = [partition_indices(num_samples, r, world_size, seed=3) for r in range(world_size)]
    assert all(p.dtype == torch.int64 for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(num_samples))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_partition_deterministic_and_seeded() -> None:
    a = partition_indices(100, 1, 4, seed=5)
    assert torch.equal(a, partition_indices(100, 1, 4, seed=5))
    assert not torch.equal(a, partition_indices(100, 1, 4, seed=6))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 4, "world_size": 4}, "rank"),
        ({"rank": -1, "world_size": 4}, "rank"),
        ({"rank": 0, "world_size": 0}, "world_size"),
        ({"num_samples": -1}, "num_samples"),
    ],
)
def test_partition_bad_args(kwargs: dict, field: str) -> None:
    full = {"num_samples": 10, "rank": 0, "world_size": 2, "seed": 0} | kwargs
    with pytest.raises(InvalidArgumentError, match=field):
        partition_indices(**full)


def test_batch_indices_deterministic_exact_and_within_partition() -> None:
    part = partition_indices(1000, 2, 3, seed=1)
    members = set(part.tolist())
    for step in (0, 1, 17, 10_000):
        b = batch_indices(part, 32, step, seed=1, rank=2)
        assert b.shape == (32,) and b.dtype == torch.int64
        assert torch.equal(b, batch_indices(part, 32, step, seed=1, rank=2))
        assert set(b.tolist()) <= members
    assert not torch.equal(batch_indices(part, 32, 0, 1, 2), batch_indices(part, 32, 0, 2, 2))
    assert not torch.equal(batch_indices(part, 32, 0, 1, 2), batch_indices(part, 32, 0, 1, 1))


@pytest.mark.parametrize(("size", "batch_size"), [(64, 8), (50, 7), (3, 10), (1, 4)])
def test_batch_indices_cover_each_epoch(size: int, batch_size: int) -> None:
    part = torch.arange(100, 100 + size)
    steps = (3 * size) // batch_size + 2
    stream = torch.cat([batch_indices(part, batch_size, s, 0, 0) for s in range(steps)])
    assert all(len(batch_indices(part, batch_size, s, 0, 0)) == batch_size for s in range(3))
    # The stream is a sequence of whole-epoch permutations of the partition.
    for epoch in range(3):
        window = stream[epoch * size : (epoch + 1) * size]
        assert torch.equal(window.sort().values, part)


def test_batch_indices_reshuffles_each_epoch() -> None:
    part = torch.arange(100)
    epoch0 = torch.cat([batch_indices(part, 10, s, 0, 0) for s in range(10)])
    epoch1 = torch.cat([batch_indices(part, 10, s, 0, 0) for s in range(10, 20)])
    assert not torch.equal(epoch0, epoch1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"step": -1}, "step"),
        ({"partition": torch.tensor([], dtype=torch.int64)}, "partition"),
        ({"partition": torch.zeros(2, 2, dtype=torch.int64)}, "partition"),
        ({"partition": torch.rand(5)}, "partition"),
        ({"rank": -2}, "rank"),
    ],
)
def test_batch_indices_bad_args(kwargs: dict, field: str) -> None:
    full = {"partition": torch.arange(5), "batch_size": 2, "step": 0, "seed": 0, "rank": 0}
    with pytest.raises(InvalidArgumentError, match=field):
        batch_indices(**(full | kwargs))
