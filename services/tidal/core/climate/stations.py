"""The ``climate_stations`` data set: forecasting station records from lagged observations.

Records are rows ``(station, time, var1, var2, ...)`` in a CSV or Parquet file (or directory
of them), read through ``pyarrow.dataset`` with column projection and row filters, so a worker
reads only its stations (or its stretch of time) plus the validation period.

A sample at time t of one station: the variables at t, t - step, ..., t - (lags-1) step
(the station's own sampling step, its median spacing) plus the season and the hour of the
target time; the target: the ``targets`` variables at t + horizon x step. Windows with a
missing record are skipped. The last ``val_fraction`` of the period (by target time) is held
out for validation, over all stations. Variables are normalised with the mean and standard
deviation of the training period over all stations, which every member computes the same
way from the same file (one streaming pass over the variable columns).

``packaged: noaa_hourly_2010`` uses real records shipped offline in ``vega_datasets``: hourly
temperature (deg F) at Seattle and San Francisco in 2010 (NOAA, US public domain; package
MIT-licensed).
"""

from __future__ import annotations

import importlib.resources
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_ds
import torch

from tidal.core.climate.args import Args
from tidal.core.climate.partition import even_ranges, split_stations
from tidal.core.data_types import Dataset, DatasetInfo, PartitionedSource
from tidal.core.errors import InvalidArgumentError
from tidal.core.objectives import Objective, ObjectiveKind

__all__ = ["STATION_ARGS", "describe_stations", "load_stations", "packaged_records"]

NAME = "climate_stations"
STATION_ARGS = {"path", "packaged", "variables", "targets", "lags", "horizon", "partition", "val_fraction"}
PACKAGED = ("noaa_hourly_2010",)
TIME_FEATURES = 4  # sin/cos of the day of year and of the hour of day, of the target time


def packaged_records(name: str) -> pa.Table:
    """Real station records that ship with an installed package (no download)."""
    if name != "noaa_hourly_2010":
        raise InvalidArgumentError(f"dataset.args.packaged must be one of {list(PACKAGED)}, got {name!r}")
    base = importlib.resources.files("vega_datasets") / "_data"
    tables = []
    for station, filename, fmt in (
        ("seattle", "seattle-temps.csv", "%Y/%m/%d %H:%M"),
        ("san_francisco", "sf-temps.csv", "%Y/%m/%d %H:%M:%S"),
    ):
        text = (base / filename).read_bytes()
        opts = pa_csv.ConvertOptions(
            column_types={"date": pa.timestamp("s"), "temp": pa.float64()}, timestamp_parsers=[fmt]
        )
        t = pa_csv.read_csv(io.BytesIO(text), read_options=pa_csv.ReadOptions(use_threads=False), convert_options=opts)
        tables.append(pa.table({"station": pa.array([station] * t.num_rows), "time": t["date"], "temp": t["temp"]}))
    return pa.concat_tables(tables)


@dataclass(frozen=True)
class StationConfig:
    source: pa_ds.Dataset
    label: str
    variables: list[str]
    targets: list[str]
    lags: int
    horizon: int
    partition: str
    val_fraction: float


def _open(raw: Mapping[str, Any]) -> StationConfig:
    args = Args(raw, STATION_ARGS, NAME)
    path, packaged = args.str("path", None), args.str("packaged", None)
    if (path is None) == (packaged is None):
        raise InvalidArgumentError(
            "dataset 'climate_stations' needs exactly one of dataset.args.path or dataset.args.packaged"
        )
    if packaged is not None:
        source: pa_ds.Dataset = pa_ds.dataset(packaged_records(packaged))
        label = f"packaged:{packaged}"
    else:
        assert path is not None
        if not os.path.exists(path):
            raise InvalidArgumentError(f"dataset.args.path {path!r} does not exist")
        fmt = "csv" if path.lower().endswith((".csv", ".csv.gz")) else "parquet"
        try:
            source = pa_ds.dataset(path, format=fmt)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidArgumentError(f"dataset.args.path {path!r}: cannot read as {fmt}: {exc}") from exc
        label = path
    names = source.schema.names
    for col in ("station", "time"):
        if col not in names:
            raise InvalidArgumentError(f"dataset.args.path: the records need a {col!r} column (have {names})")
    numeric = [
        n
        for n in names
        if n not in ("station", "time")
        and (pa.types.is_floating(source.schema.field(n).type) or pa.types.is_integer(source.schema.field(n).type))
    ]
    variables = args.str_list("variables") or numeric
    for v in variables:
        if v not in numeric:
            raise InvalidArgumentError(f"dataset.args.variables: {v!r} is not a numeric column (have {numeric})")
    targets = args.str_list("targets") or list(variables)
    for v in targets:
        if v not in variables:
            raise InvalidArgumentError(f"dataset.args.targets: {v!r} is not one of the variables {variables}")
    # Targets first: the station model adds its correction to the latest target values.
    ordered = targets + [v for v in variables if v not in targets]
    return StationConfig(
        source=source,
        label=label,
        variables=ordered,
        targets=targets,
        lags=args.int("lags", 24, 1, 10_000),
        horizon=args.int("horizon", 1, 1, 10_000),
        partition=args.choice("partition", "station", ("station", "time")),
        val_fraction=args.float("val_fraction", 0.2, 0.01, 0.9),
    )


def _info(cfg: StationConfig) -> DatasetInfo:
    return DatasetInfo((cfg.lags * len(cfg.variables) + TIME_FEATURES,), len(cfg.targets))


def describe_stations(raw: Mapping[str, Any], seed: int) -> DatasetInfo:
    """Input and output sizes from the schema alone."""
    del seed
    return _info(_open(raw))


def _read(source: pa_ds.Dataset, columns: list[str], where: pc.Expression | None = None) -> pa.Table:
    # Single-threaded: station tables are small, and Arrow's thread pools racing torch's at
    # interpreter exit were seen to abort a process.
    return source.to_table(columns=columns, filter=where, use_threads=False)


def _time_range(source: pa_ds.Dataset) -> tuple[np.datetime64, np.datetime64]:
    times = _read(source, ["time"])["time"]
    if len(times) == 0:
        raise InvalidArgumentError("dataset.args.path holds no records")
    lo, hi = pc.min_max(times).values()
    return np.datetime64(lo.as_py(), "s"), np.datetime64(hi.as_py(), "s")


def _time_filter(lo: np.datetime64 | None, hi: np.datetime64 | None) -> pc.Expression | None:
    expr = None
    if lo is not None:
        expr = pc.field("time") >= pa.scalar(lo.astype("datetime64[s]").item(), pa.timestamp("s"))
    if hi is not None:
        e = pc.field("time") < pa.scalar(hi.astype("datetime64[s]").item(), pa.timestamp("s"))
        expr = e if expr is None else expr & e
    return expr


def _norm_stats(cfg: StationConfig, cutoff: np.datetime64) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each variable over the training period, streamed batch by batch."""
    n = np.zeros(len(cfg.variables))
    s1 = np.zeros(len(cfg.variables))
    s2 = np.zeros(len(cfg.variables))
    scanner = cfg.source.scanner(columns=cfg.variables, filter=_time_filter(None, cutoff), use_threads=False)
    for batch in scanner.to_batches():
        for i, v in enumerate(cfg.variables):
            col = batch.column(v).to_numpy(zero_copy_only=False).astype(np.float64)
            col = col[np.isfinite(col)]
            n[i] += col.size
            s1[i] += col.sum()
            s2[i] += np.square(col).sum()
    if (n == 0).any():
        raise InvalidArgumentError("dataset.args.val_fraction leaves no training records")
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


@dataclass
class _Samples:
    x: list[np.ndarray]
    y: list[np.ndarray]
    target_time: list[np.ndarray]


def _station_samples(table: pa.Table, cfg: StationConfig, mean: np.ndarray, std: np.ndarray, out: _Samples) -> None:
    """Appends every complete window of every station in `table` to `out`."""
    if table.num_rows == 0:
        return
    table = table.sort_by([("station", "ascending"), ("time", "ascending")])
    stations = table["station"].to_numpy(zero_copy_only=False).astype(str)
    times = (
        table["time"].cast(pa.timestamp("s")).to_numpy(zero_copy_only=False).astype("datetime64[s]").astype(np.int64)
    )
    values = np.stack([table[v].to_numpy(zero_copy_only=False).astype(np.float64) for v in cfg.variables], axis=1)
    values = (values - mean) / std
    bounds = np.flatnonzero(stations[1:] != stations[:-1]) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(stations)], strict=True):
        t, vals = times[lo:hi], values[lo:hi]
        if len(t) < 2:
            continue
        step = int(np.median(np.diff(t)))
        if step <= 0:
            raise InvalidArgumentError(f"station {stations[lo]!r} has duplicate record times")
        # A dense grid of the station's steps, NaN where a record is missing.
        pos = (t - t[0]) // step
        dense = np.full((int(pos[-1]) + 1, vals.shape[1]), np.nan)
        dense[pos] = vals
        span = cfg.lags + cfg.horizon
        if len(dense) < span:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(dense, span, axis=0)  # (n, V, span)
        lagged = windows[:, :, cfg.lags - 1 :: -1][:, :, : cfg.lags]  # latest first
        target = windows[:, : len(cfg.targets), cfg.lags + cfg.horizon - 1]
        ok = np.isfinite(lagged).all(axis=(1, 2)) & np.isfinite(target).all(axis=1)
        target_time = t[0] + (np.arange(len(windows)) + span - 1) * step
        feats = lagged.transpose(0, 2, 1).reshape(len(windows), -1)  # lag-major: lag0 vars, lag1 vars, ...
        out.x.append(np.concatenate([feats, _time_features(target_time)], axis=1)[ok])
        out.y.append(target[ok])
        out.target_time.append(target_time[ok])


def _time_features(seconds: np.ndarray) -> np.ndarray:
    days = seconds / 86400.0
    year = 2 * math.pi * (days % 365.2425) / 365.2425
    hour = 2 * math.pi * (days % 1.0)
    return np.stack([np.sin(year), np.cos(year), np.sin(hour), np.cos(hour)], axis=1)


def _tensors(s: _Samples, cfg: StationConfig) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    width = _info(cfg).input_shape[0]
    if not s.x:
        return torch.empty(0, width), torch.empty(0, len(cfg.targets)), np.empty(0, np.int64)
    x = torch.from_numpy(np.concatenate(s.x).astype(np.float32))
    y = torch.from_numpy(np.concatenate(s.y).astype(np.float32))
    return x, y, np.concatenate(s.target_time)


def load_stations(raw: Mapping[str, Any], seed: int, rank: int, world_size: int) -> Dataset:
    del seed  # the partitions are deterministic without randomness
    cfg = _open(raw)
    t_lo, t_hi = _time_range(cfg.source)
    cutoff = t_lo + ((t_hi - t_lo) * (1 - cfg.val_fraction)).astype("timedelta64[s]")
    mean, std = _norm_stats(cfg, cutoff)
    columns = ["station", "time", *cfg.variables]

    train = _Samples([], [], [])
    if cfg.partition == "station":
        names = _read(cfg.source, ["station"], _time_filter(None, cutoff))["station"]
        counts = pc.value_counts(names).to_pylist()
        mine = split_stations({str(c["values"]): int(c["counts"]) for c in counts}, world_size)[rank]
        flt = pc.field("station").isin(mine)
        table = _read(cfg.source, columns, flt)
        _station_samples(table, cfg, mean, std, train)
        x, y, tt = _tensors(train, cfg)
        keep = torch.from_numpy(tt < cutoff.astype(np.int64))
    else:
        # Contiguous stretches of the training period with equal record counts; each worker
        # also reads the lags before its stretch (found by reading its window's records).
        times = np.sort(
            _read(cfg.source, ["time"], _time_filter(None, cutoff))["time"]
            .cast(pa.timestamp("s"))
            .to_numpy(zero_copy_only=False)
            .astype("datetime64[s]")
        )
        a, b = even_ranges(len(times), world_size)[rank]
        if a == b:
            raise InvalidArgumentError(f"{len(times)} training records cannot be split across {world_size} workers")
        start = times[a]
        stop = times[b] if b < len(times) else cutoff
        span_s = _max_span_seconds(cfg, start)
        table = _read(cfg.source, columns, _time_filter(start - span_s, stop))
        _station_samples(table, cfg, mean, std, train)
        x, y, tt = _tensors(train, cfg)
        keep = torch.from_numpy((tt >= start.astype(np.int64)) & (tt < stop.astype(np.int64)))
    train_x, train_y = x[keep], y[keep]
    if len(train_y) == 0:
        raise InvalidArgumentError(f"worker {rank} of {world_size} got no complete training window (lags + horizon)")

    val = _Samples([], [], [])
    lookback = _max_span_seconds(cfg, cutoff)
    _station_samples(_read(cfg.source, columns, _time_filter(cutoff - lookback, None)), cfg, mean, std, val)
    vx, vy, vt = _tensors(val, cfg)
    vkeep = torch.from_numpy(vt >= cutoff.astype(np.int64))
    val_x, val_y = vx[vkeep], vy[vkeep]
    if len(val_y) == 0:
        raise InvalidArgumentError("dataset.args.val_fraction leaves no complete validation window")
    outputs = len(cfg.targets)
    reference = float(((val_x[:, :outputs] - val_y) ** 2).mean())
    objective = Objective(ObjectiveKind.WEIGHTED_MSE, reference_loss=reference if reference > 0 else None)
    return Dataset(
        NAME, train_x, train_y, val_x, val_y, outputs, objective=objective, model_input_shape=_info(cfg).input_shape
    )


def _max_span_seconds(cfg: StationConfig, near: np.datetime64) -> np.timedelta64:
    """How far back a window reaches: (lags + horizon) steps of the station with the longest
    spacing (each station's median spacing, from its records before `near`)."""
    probe = _read(cfg.source, ["station", "time"], _time_filter(None, near))
    if probe.num_rows < 2:
        return np.timedelta64(0, "s")
    probe = probe.sort_by([("station", "ascending"), ("time", "ascending")])
    st = probe["station"].to_numpy(zero_copy_only=False).astype(str)
    t = probe["time"].cast(pa.timestamp("s")).to_numpy(zero_copy_only=False).astype("datetime64[s]").astype(np.int64)
    bounds = np.flatnonzero(st[1:] != st[:-1]) + 1
    step = 0
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(st)], strict=True):
        if hi - lo >= 2:
            step = max(step, int(np.median(np.diff(t[lo:hi]))))
    return np.timedelta64((cfg.lags + cfg.horizon) * step, "s")


# The registry entry (`tidal.core.datasets.PARTITIONED`).
SOURCE = PartitionedSource(describe_stations, load_stations)
