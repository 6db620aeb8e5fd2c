"""The ``climate_grid`` data set: next-step forecasting on a gridded field.

A sample is ``history`` consecutive frames (history, variables, lat, lon) and its target the
next frame (variables, lat, lon), normalised per variable. The last ``val_steps`` time steps
are held out as targets for validation (over the whole grid); every earlier step can be a
training target. Each worker reads only its partition (see `partition.py`):

* ``region``: every training time step of its tile (plus halo), so x and y are views of one
  frame buffer (no copy per history step);
* ``time``: the whole grid for one contiguous stretch of time;
* ``random``: the whole grid for a seeded random subset of sample times.

The loss is the latitude-weighted MSE (weights cos(latitude), zero on halo cells), scaled so
that the mean of the workers' losses over equal tiles is the global weighted MSE. The
reported accuracy is the skill against persistence (tomorrow = today) on the validation steps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from tidal.core.climate.args import Args
from tidal.core.climate.grid import GridMeta, grid_meta, latitude_weights, open_store, read_frames
from tidal.core.climate.partition import Tile, random_split, region_tiles, time_ranges
from tidal.core.climate.stats import NormStats, compute_stats, read_stats, sidecar_path
from tidal.core.data_types import Dataset, DatasetInfo, PartitionedSource
from tidal.core.errors import InvalidArgumentError
from tidal.core.objectives import Objective, ObjectiveKind

__all__ = ["GRID_ARGS", "GridConfig", "describe_grid", "grid_samples", "load_grid", "open_grid"]

NAME = "climate_grid"
GRID_ARGS = {
    "path",
    "variables",
    "select",
    "history",
    "partition",
    "halo",
    "tiles",
    "val_steps",
    "stats",
    "stats_steps",
}
PARTITIONS = ("region", "time", "random")


@dataclass(frozen=True)
class GridConfig:
    path: str
    variables: list[str] | None
    select: dict[str, Any]
    history: int
    partition: str
    halo: int
    tiles: list[int] | None
    val_steps: int
    stats: str | None
    stats_steps: int


def parse_grid_args(raw: Mapping[str, Any]) -> GridConfig:
    args = Args(raw, GRID_ARGS, NAME)
    if not args.has("path"):
        raise InvalidArgumentError(
            "dataset.args.path is required for dataset 'climate_grid' (a NetCDF4 file or Zarr store)"
        )
    return GridConfig(
        path=str(args.str("path", None)),
        variables=args.str_list("variables"),
        select=args.mapping("select"),
        history=args.int("history", 2, 1, 64),
        partition=args.choice("partition", "region", PARTITIONS),
        halo=args.int("halo", 4, 0, 64),
        tiles=args.int_list("tiles"),
        val_steps=args.int("val_steps", 16, 1, 1 << 20),
        stats=args.str("stats", None),
        stats_steps=args.int("stats_steps", 64, 1, 1 << 20),
    )


@dataclass(frozen=True)
class OpenGrid:
    cfg: GridConfig
    ds: xr.Dataset
    meta: GridMeta

    @property
    def train_steps(self) -> int:
        """Leading time steps that may be training targets (and inputs)."""
        return self.meta.n_time - self.cfg.val_steps

    @property
    def num_train_samples(self) -> int:
        return self.train_steps - self.cfg.history

    def info(self) -> DatasetInfo:
        m = self.meta
        return DatasetInfo((self.cfg.history, len(m.variables), m.n_lat, m.n_lon), len(m.variables))

    def stats(self) -> NormStats:
        explicit = self.cfg.stats
        path = explicit or sidecar_path(self.cfg.path)
        if explicit or os.path.exists(path):
            return read_stats(path, self.train_steps)
        return compute_stats(self.ds, self.meta, self.train_steps, self.cfg.stats_steps)


def open_grid(raw: Mapping[str, Any]) -> OpenGrid:
    cfg = parse_grid_args(raw)
    ds = open_store(cfg.path)
    meta = grid_meta(ds, cfg.variables, cfg.select)
    grid = OpenGrid(cfg, ds, meta)
    if grid.num_train_samples < 1:
        raise InvalidArgumentError(
            f"dataset.args.val_steps {cfg.val_steps} and history {cfg.history} leave no training sample "
            f"in {meta.n_time} time steps"
        )
    return grid


def describe_grid(raw: Mapping[str, Any], seed: int) -> DatasetInfo:
    """The model's input shape from metadata alone (no data read)."""
    del seed
    grid = open_grid(raw)
    try:
        return grid.info()
    finally:
        grid.ds.close()


def grid_samples(grid: OpenGrid, rank: int, world_size: int, seed: int) -> np.ndarray:
    """Training sample positions of ``rank`` (a sample s has target time s + history): all of
    them for region partitions, the rank's share for time and random partitions."""
    n = grid.num_train_samples
    if grid.cfg.partition == "region":
        return np.arange(n)
    if n < world_size:
        raise InvalidArgumentError(f"{n} training samples cannot be split across {world_size} workers")
    parts = time_ranges(n, world_size) if grid.cfg.partition == "time" else random_split(n, world_size, seed)
    return parts[rank]


def _windows(frames: torch.Tensor, count: int, history: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x[i] = frames[i : i + history], y[i] = frames[i + history], as views of `frames`."""
    _, v, h, w = frames.shape
    st = frames.stride()
    x = frames.as_strided((count, history, v, h, w), (st[0], st[0], st[1], st[2], st[3]))
    return x, frames[history : history + count]


def load_grid(raw: Mapping[str, Any], seed: int, rank: int, world_size: int) -> Dataset:
    grid = open_grid(raw)
    try:
        return _load(grid, seed, rank, world_size)
    finally:
        grid.ds.close()


def _load(grid: OpenGrid, seed: int, rank: int, world_size: int) -> Dataset:
    cfg, meta = grid.cfg, grid.meta
    mean, std = grid.stats().for_variables(meta.variables, cfg.stats or sidecar_path(cfg.path))
    h = cfg.history
    lat_w = latitude_weights(meta.lat)
    # The whole grid as one tile: on a global grid its halo wraps around in longitude, so a
    # model sees real neighbours across the date line, as it does at every tile edge.
    whole = region_tiles(meta.n_lat, meta.n_lon, 1, cfg.halo, [1, 1], meta.periodic_lon)[0]

    def weights(tile: Tile) -> torch.Tensor:
        return torch.from_numpy((lat_w[tile.lat_indices()][:, None] * tile.interior_mask()).astype(np.float32))

    train_norm: float | None = None
    if cfg.partition == "region":
        tile = region_tiles(meta.n_lat, meta.n_lon, world_size, cfg.halo, cfg.tiles, meta.periodic_lon)[rank]
        lat_idx, lon_idx = tile.lat_indices(), tile.lon_indices()
        frames = read_frames(grid.ds, meta, np.arange(grid.train_steps), lat_idx, lon_idx, mean, std)
        train_x, train_y = _windows(frames, grid.num_train_samples, h)
        train_w = weights(tile)
        # Every tile divides by the global mean weight x an equal share of the cells, so the
        # mean of the workers' losses is the global latitude-weighted MSE.
        train_norm = float(lat_w.mean()) * meta.n_lat * meta.n_lon / world_size
    else:
        samples = grid_samples(grid, rank, world_size, seed)
        lat_idx, lon_idx = whole.lat_indices(), whole.lon_indices()
        if cfg.partition == "time":
            times = np.arange(int(samples[0]), int(samples[-1]) + h + 1)
            frames = read_frames(grid.ds, meta, times, lat_idx, lon_idx, mean, std)
            train_x, train_y = _windows(frames, len(samples), h)
        else:
            needed = np.unique((samples[:, None] + np.arange(h + 1)[None, :]).ravel())
            frames = read_frames(grid.ds, meta, needed, lat_idx, lon_idx, mean, std)
            pos = torch.from_numpy(np.searchsorted(needed, samples))
            train_x = frames[pos[:, None] + torch.arange(h)[None, :]]
            train_y = frames[pos + h]
        train_w = weights(whole)

    # Validation: targets are the last val_steps time steps, over the whole grid.
    val_times = np.arange(grid.train_steps - h, meta.n_time)
    val_frames = read_frames(grid.ds, meta, val_times, whole.lat_indices(), whole.lon_indices(), mean, std)
    val_x, val_y = _windows(val_frames, cfg.val_steps, h)
    val_w = weights(whole)
    persistence = Objective(ObjectiveKind.WEIGHTED_MSE, val_weight=val_w)
    reference = float(persistence.sum_loss(val_x[:, -1], val_y)) / cfg.val_steps
    objective = Objective(
        ObjectiveKind.WEIGHTED_MSE,
        train_weight=train_w,
        val_weight=val_w,
        train_norm=train_norm,
        reference_loss=reference if reference > 0 else None,
    )
    return Dataset(
        NAME,
        train_x,
        train_y,
        val_x,
        val_y,
        len(meta.variables),
        objective=objective,
        model_input_shape=grid.info().input_shape,
    )


# The registry entry (`tidal.core.datasets.PARTITIONED`).
SOURCE = PartitionedSource(describe_grid, load_grid)
