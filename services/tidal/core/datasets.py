"""Datasets and deterministic data sharding for tidal workers.

Datasets:

* ``seattle_weather``: real data. Daily weather for Seattle, 2012-2015
  (precipitation, temp_max, temp_min, wind), from NOAA, as shipped offline in
  the ``vega_datasets`` package (file ``_data/seattle-weather.csv``;
  https://github.com/altair-viz/vega_datasets, MIT-licensed package). The
  underlying NOAA data is a US government work in the public domain
  (https://www.weather.gov/disclaimer). Task: "will it rain tomorrow" (binary).
* ``synthetic``: seeded, learnable, size-configurable data for benchmarks.
* ``climate_grid``, ``climate_stations``: partitioned data sets (``tidal.core.climate``):
  each worker loads only its own part, and their shapes come from metadata
  (:func:`describe_dataset`) without reading the data.

Sharding (:func:`partition_indices`, :func:`batch_indices`) is pure, so anyone
can recompute exactly which samples a worker used at any step.

Workers read every data set through ``tidal.core.sources`` (``load_job_data``), which also
serves the file sources ``tabular`` and ``arrays`` and user factories ("package.module:factory").
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import importlib.resources
import io
import itertools
import math
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import torch

from .data_types import Dataset, DatasetInfo, PartitionedSource
from .errors import InvalidArgumentError

__all__ = [
    "DATASETS",
    "PARTITIONED",
    "Dataset",
    "DatasetInfo",
    "batch_indices",
    "dataset_partition",
    "describe_dataset",
    "load_dataset",
    "partition_indices",
]


def _int_arg(args: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = args.get(key, default)
    # bool is an int subclass; `True` as a size is almost certainly a config mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"dataset.args.{key} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidArgumentError(f"dataset.args.{key} must be in [{lo}, {hi}], got {value}")
    return value


def _float_arg(args: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = args.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidArgumentError(f"dataset.args.{key} must be a number, got {value!r}")
    if not lo <= value <= hi:  # also rejects NaN
        raise InvalidArgumentError(f"dataset.args.{key} must be in [{lo}, {hi}], got {value}")
    return float(value)


def _reject_unknown(args: dict[str, Any], allowed: set[str], dataset: str) -> None:
    for key in sorted(args):
        if key not in allowed:
            accepted = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgumentError(
                f"dataset.args.{key} is not an argument of dataset {dataset!r} (accepted: {accepted})"
            )


_SEATTLE_VARS = ("precipitation", "temp_max", "temp_min", "wind")
_SEATTLE_LAGS = 3  # day d and the 2 days before it
_SEATTLE_VAL_YEAR = 2015  # targets in this year form the validation split


def _read_seattle_rows() -> list[tuple[date, list[float]]]:
    resource = importlib.resources.files("vega_datasets") / "_data" / "seattle-weather.csv"
    text = resource.read_text(encoding="utf-8")
    rows: list[tuple[date, list[float]]] = []
    for rec in csv.DictReader(io.StringIO(text)):
        year, month, day = (int(p) for p in rec["date"].split("/"))
        rows.append((date(year, month, day), [float(rec[v]) for v in _SEATTLE_VARS]))
    rows.sort(key=lambda r: r[0])
    # Lag features are only meaningful if there are no gaps in the daily series.
    for (prev, _), (cur, _) in itertools.pairwise(rows):
        if cur - prev != timedelta(days=1):
            raise RuntimeError(f"seattle-weather.csv has a gap between {prev} and {cur}")
    return rows


def _load_seattle_weather(args: dict[str, Any], seed: int) -> Dataset:
    del seed  # real data: nothing random to seed
    _reject_unknown(args, set(), "seattle_weather")
    rows = _read_seattle_rows()
    feats: list[list[float]] = []
    labels: list[int] = []
    is_val: list[bool] = []
    for d in range(_SEATTLE_LAGS - 1, len(rows) - 1):
        x: list[float] = []
        for lag in range(_SEATTLE_LAGS):
            x.extend(rows[d - lag][1])
        target_day, target_vals = rows[d + 1]
        # Season of the day being forecast, as a point on the unit circle so
        # Dec 31 and Jan 1 are neighbours.
        angle = 2.0 * math.pi * (target_day.timetuple().tm_yday - 1) / 365.25
        x.extend((math.sin(angle), math.cos(angle)))
        feats.append(x)
        labels.append(1 if target_vals[0] > 0.0 else 0)
        # Split by time, not at random: a forecaster is only ever judged on the future.
        is_val.append(target_day.year >= _SEATTLE_VAL_YEAR)

    x_all = torch.tensor(feats, dtype=torch.float64)
    y_all = torch.tensor(labels, dtype=torch.int64)
    val_mask = torch.tensor(is_val)
    train_x, val_x = x_all[~val_mask], x_all[val_mask]
    # Train-only statistics, so nothing about 2015 leaks into the inputs.
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False).clamp_min(1e-12)
    return Dataset(
        name="seattle_weather",
        train_x=((train_x - mean) / std).to(torch.float32),
        train_y=y_all[~val_mask],
        val_x=((val_x - mean) / std).to(torch.float32),
        val_y=y_all[val_mask],
        num_classes=2,
    )


_SYNTHETIC_ARGS = {"num_samples", "num_features", "num_classes", "image_size", "noise", "val_fraction"}
_MAX_ELEMENTS = 1 << 28  # 1 GiB of float32: guards against typo'd sizes exhausting RAM


def _load_synthetic(args: dict[str, Any], seed: int) -> Dataset:
    """Gaussian inputs labelled by a fixed random linear teacher plus logit noise.

    ``num_features`` is ignored when ``image_size > 0`` (the image has
    ``image_size**2`` features).
    """
    _reject_unknown(args, _SYNTHETIC_ARGS, "synthetic")
    num_samples = _int_arg(args, "num_samples", 4096, 2, 1 << 31)
    num_features = _int_arg(args, "num_features", 32, 1, 1 << 24)
    num_classes = _int_arg(args, "num_classes", 4, 2, 1 << 16)
    image_size = _int_arg(args, "image_size", 0, 0, 1 << 12)
    noise = _float_arg(args, "noise", 0.1, 0.0, 1e6)
    val_fraction = _float_arg(args, "val_fraction", 0.2, 0.0, 1.0)
    num_val = round(num_samples * val_fraction)
    if not 1 <= num_val < num_samples:  # both splits must be non-empty
        raise InvalidArgumentError(
            f"dataset.args.val_fraction {val_fraction} leaves an empty train or "
            f"validation split for dataset.args.num_samples={num_samples}"
        )
    dim = image_size * image_size if image_size > 0 else num_features
    if num_samples * dim > _MAX_ELEMENTS:
        raise InvalidArgumentError(
            f"dataset.args.num_samples * features = {num_samples * dim} exceeds the limit of {_MAX_ELEMENTS} elements"
        )

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, dim, generator=gen)
    # Scaling by 1/sqrt(dim) keeps teacher logits ~N(0, 1) at any width, so
    # `noise` means the same thing regardless of num_features.
    teacher = torch.randn(dim, num_classes, generator=gen) / math.sqrt(dim)
    logits = x @ teacher + noise * torch.randn(num_samples, num_classes, generator=gen)
    y = logits.argmax(dim=1)
    if image_size > 0:
        x = x.reshape(num_samples, 1, image_size, image_size)
    train_x, val_x = x.split([num_samples - num_val, num_val])
    train_y, val_y = y.split([num_samples - num_val, num_val])
    return Dataset("synthetic", train_x, train_y, val_x, val_y, num_classes)


DATASETS: dict[str, Callable[[dict[str, Any], int], Dataset]] = {
    "seattle_weather": _load_seattle_weather,
    "synthetic": _load_synthetic,
}


# Partitioned data sets by name -> the module whose SOURCE implements them. Imported on first
# use: xarray, pandas and pyarrow would otherwise add seconds to every service's start.
PARTITIONED: dict[str, str] = {
    "climate_grid": "tidal.core.climate.gridded",
    "climate_stations": "tidal.core.climate.stations",
}


def _partitioned(name: str) -> PartitionedSource:
    source = importlib.import_module(PARTITIONED[name]).SOURCE
    if not isinstance(source, PartitionedSource):
        raise TypeError(f"{PARTITIONED[name]}.SOURCE is not a PartitionedSource")
    return source


def _checked_args(name: str, args: Mapping[str, Any], seed: int) -> dict[str, Any]:
    if not isinstance(name, str) or (name not in DATASETS and name not in PARTITIONED):
        raise InvalidArgumentError(f"dataset.name must be one of {sorted([*DATASETS, *PARTITIONED])}, got {name!r}")
    if not isinstance(args, Mapping):
        raise InvalidArgumentError(f"dataset.args must be a mapping, got {type(args).__name__}")
    for key in args:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"dataset.args keys must be strings, got {key!r}")
    _check_seed(seed)
    return dict(args)


def load_dataset(name: str, args: Mapping[str, Any], seed: int, rank: int = 0, world_size: int = 1) -> Dataset:
    """Load dataset ``name`` with loader ``args``; raise InvalidArgumentError on bad input.

    A partitioned data set loads only the part of worker ``rank`` of ``world_size`` (whole
    for 0 of 1); the others load whole whatever the rank (see `dataset_partition`).
    """
    checked = _checked_args(name, args, seed)
    if name in PARTITIONED:
        _check_slot(rank, world_size)
        part = _partitioned(name).load(checked, seed, rank, world_size)
        return dataclasses.replace(part, part=(rank, world_size))
    return DATASETS[name](checked, seed)


def dataset_partition(dataset: Dataset, rank: int, world_size: int, seed: int) -> torch.Tensor:
    """Indices of the training samples of worker ``rank`` of ``world_size``: a seeded share of
    a whole data set, or every sample of a partitioned data set loaded for that very slot."""
    if dataset.part is None:
        return partition_indices(len(dataset.train_y), rank, world_size, seed)
    if dataset.part != (rank, world_size):
        raise InvalidArgumentError(
            f"dataset {dataset.name!r} holds the part of worker {dataset.part[0]} of {dataset.part[1]}, "
            f"not of {rank} of {world_size}: load it for the new slot"
        )
    return torch.arange(len(dataset.train_y))


def describe_dataset(name: str, args: Mapping[str, Any], seed: int) -> DatasetInfo:
    """What the model is built from; partitioned data sets answer from metadata alone."""
    checked = _checked_args(name, args, seed)
    if name in PARTITIONED:
        return _partitioned(name).describe(checked, seed)
    return DATASETS[name](checked, seed).info


def _check_slot(rank: int, world_size: int) -> None:
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    if rank >= world_size:
        raise InvalidArgumentError(f"rank must be < world_size={world_size}, got {rank}")


def _check_int(name: str, value: Any, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise InvalidArgumentError(f"{name} must be an integer >= {lo}, got {value!r}")


def _check_seed(seed: Any) -> None:
    # torch seeds are 64-bit; outside this range manual_seed raises RuntimeError.
    if not isinstance(seed, int) or isinstance(seed, bool) or not -(1 << 63) <= seed < (1 << 64):
        raise InvalidArgumentError(f"seed must be a 64-bit integer, got {seed!r}")


def partition_indices(num_samples: int, rank: int, world_size: int, seed: int) -> torch.Tensor:
    """Dataset indices owned by ``rank``: a disjoint, near-equal slice of a seeded shuffle."""
    _check_int("num_samples", num_samples, 0)
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    if rank >= world_size:
        raise InvalidArgumentError(f"rank must be < world_size={world_size}, got {rank}")
    _check_seed(seed)
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    base, extra = divmod(num_samples, world_size)
    # The first `extra` ranks take one more sample, so sizes differ by at most 1.
    start = rank * base + min(rank, extra)
    return perm[start : start + base + (1 if rank < extra else 0)].clone()


def _mix_seed(seed: int, rank: int, epoch: int) -> int:
    # A stable hash (unlike hash()), so every process derives the same stream.
    digest = hashlib.blake2b(f"{seed}:{rank}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@lru_cache(maxsize=8)
def _epoch_perm(size: int, seed: int, rank: int, epoch: int) -> torch.Tensor:
    # Cached because consecutive steps reuse the same epoch's permutation; callers
    # only index into it, never mutate it.
    gen = torch.Generator().manual_seed(_mix_seed(seed, rank, epoch))
    return torch.randperm(size, generator=gen)


def batch_indices(partition: torch.Tensor, batch_size: int, step: int, seed: int, rank: int) -> torch.Tensor:
    """Dataset indices of batch ``step`` (0-based) for the worker owning ``partition``.

    Each epoch visits the partition in a fresh order seeded by (seed, rank, epoch);
    batches are consecutive windows of that stream, wrapping across epoch
    boundaries so every batch has exactly ``batch_size`` elements.
    """
    if (
        not isinstance(partition, torch.Tensor)
        or partition.dim() != 1
        or partition.dtype.is_floating_point
        or partition.dtype == torch.bool
    ):
        raise InvalidArgumentError("partition must be a 1-D integer tensor of dataset indices")
    size = partition.numel()
    if size == 0:
        raise InvalidArgumentError("partition must not be empty")
    _check_int("batch_size", batch_size, 1)
    _check_int("step", step, 0)
    _check_int("rank", rank, 0)
    _check_seed(seed)
    first = step * batch_size
    positions = torch.arange(first, first + batch_size, dtype=torch.int64)
    epochs = positions // size
    offsets = positions % size
    out = torch.empty(batch_size, dtype=partition.dtype)
    for epoch in range(first // size, (first + batch_size - 1) // size + 1):
        mask = epochs == epoch
        out[mask] = partition[_epoch_perm(size, seed, rank, epoch)[offsets[mask]]]
    return out
