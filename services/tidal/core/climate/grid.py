"""Lazy access to a gridded store (NetCDF4/HDF5 or Zarr) through xarray.

Opening reads metadata and coordinates only; `read_frames` reads one hyperslab
(time x lat x lon) per variable, in blocks of time steps, straight into a preallocated
float32 tensor, so a worker's memory is its partition plus one block.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from tidal.core.errors import InvalidArgumentError

__all__ = ["GridMeta", "contiguous_runs", "grid_meta", "latitude_weights", "open_store", "read_frames"]

TIME_NAMES = ("time", "valid_time")
LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")
# Time steps read per call to the backend: bounds the temporary buffer of one read.
READ_BLOCK_STEPS = 64


def open_store(path: str) -> xr.Dataset:
    """Opens a NetCDF4 file or a Zarr store lazily (no data read, no dask)."""
    if not isinstance(path, str) or not path:
        raise InvalidArgumentError(f"dataset.args.path must be a file or Zarr store path, got {path!r}")
    if not os.path.exists(path):
        raise InvalidArgumentError(f"dataset.args.path {path!r} does not exist")
    is_zarr = os.path.isdir(path) or path.rstrip("/").endswith(".zarr")
    try:
        if is_zarr:
            return xr.open_dataset(path, engine="zarr", chunks=None, cache=False)
        # cache=False: xarray would otherwise keep every array it ever read in memory.
        return xr.open_dataset(path, engine="h5netcdf", chunks=None, cache=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        kind = "Zarr store" if is_zarr else "NetCDF4/HDF5 file"
        raise InvalidArgumentError(f"dataset.args.path {path!r}: cannot open as a {kind}: {exc}") from exc


def _find_dim(ds: xr.Dataset, names: tuple[str, ...], what: str) -> str:
    for name in names:
        if name in ds.dims:
            return name
    raise InvalidArgumentError(
        f"dataset.args.path: no {what} dimension (looked for {', '.join(names)}; found {', '.join(map(str, ds.dims))})"
    )


@dataclass(frozen=True)
class GridMeta:
    """What a gridded store holds, from its metadata: dimension names and sizes, the
    variables used (all on time x lat x lon after `select`), coordinates in degrees."""

    variables: tuple[str, ...]
    time_dim: str
    lat_dim: str
    lon_dim: str
    n_time: int
    lat: np.ndarray
    lon: np.ndarray
    periodic_lon: bool
    select: Mapping[str, Any]

    @property
    def n_lat(self) -> int:
        return len(self.lat)

    @property
    def n_lon(self) -> int:
        return len(self.lon)


def grid_meta(ds: xr.Dataset, variables: Sequence[str] | None, select: Mapping[str, Any]) -> GridMeta:
    """Validates the store against the requested variables and selection."""
    time_dim = _find_dim(ds, TIME_NAMES, "time")
    lat_dim = _find_dim(ds, LAT_NAMES, "latitude")
    lon_dim = _find_dim(ds, LON_NAMES, "longitude")
    for dim in select:
        if dim not in ds.dims or dim in (time_dim, lat_dim, lon_dim):
            raise InvalidArgumentError(f"dataset.args.select.{dim}: not an extra dimension of the store")
    wanted = {time_dim, lat_dim, lon_dim}
    chosen = list(variables) if variables else [str(v) for v in ds.data_vars]
    usable = []
    for name in chosen:
        if name not in ds.data_vars:
            raise InvalidArgumentError(
                f"dataset.args.variables: {name!r} is not in the store (has {list(ds.data_vars)})"
            )
        left = set(ds[name].dims) - set(select)
        if left == wanted:
            usable.append(name)
        elif variables:
            raise InvalidArgumentError(
                f"dataset.args.variables: {name!r} has dimensions {ds[name].dims}; after dataset.args.select "
                f"it must have exactly ({time_dim}, {lat_dim}, {lon_dim})"
            )
    if not usable:
        raise InvalidArgumentError(f"dataset.args.path: no variable on ({time_dim}, {lat_dim}, {lon_dim})")
    lat = np.asarray(ds[lat_dim].values, dtype=np.float64)
    lon = np.asarray(ds[lon_dim].values, dtype=np.float64)
    if np.any(np.abs(lat) > 90):
        raise InvalidArgumentError(f"dataset.args.path: {lat_dim} must be in degrees within [-90, 90]")
    spacing = float(np.median(np.diff(lon))) if len(lon) > 1 else 360.0
    # A grid whose columns span the whole circle wraps around: the halo of the last tile is
    # the first columns.
    periodic = len(lon) > 1 and abs(len(lon) * spacing - 360.0) <= spacing / 2
    return GridMeta(
        tuple(usable), time_dim, lat_dim, lon_dim, int(ds.sizes[time_dim]), lat, lon, periodic, dict(select)
    )


def latitude_weights(lat: np.ndarray) -> np.ndarray:
    """cos(latitude): proportional to the area of a cell on a regular lat-lon grid."""
    return np.clip(np.cos(np.deg2rad(lat)), 0.0, None)


def contiguous_runs(indices: np.ndarray) -> list[tuple[int, int, int]]:
    """Splits an index array into runs of consecutive indices: (position in the array, first
    index, length). A wrapped longitude range [126, 127, 0, 1] is two runs."""
    runs: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(indices):
        end = pos + 1
        while end < len(indices) and indices[end] == indices[end - 1] + 1:
            end += 1
        runs.append((pos, int(indices[pos]), end - pos))
        pos = end
    return runs


def read_frames(
    ds: xr.Dataset,
    meta: GridMeta,
    times: np.ndarray,
    lat_idx: np.ndarray,
    lon_idx: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Normalised float32 frames (len(times), variables, len(lat_idx), len(lon_idx)).

    Only these cells are read: each backend read is one contiguous hyperslab of at most
    READ_BLOCK_STEPS time steps.
    """
    out = torch.empty((len(times), len(meta.variables), len(lat_idx), len(lon_idx)), dtype=torch.float32)
    lat_runs = contiguous_runs(lat_idx)
    lon_runs = contiguous_runs(lon_idx)
    for v, name in enumerate(meta.variables):
        var = ds[name]
        if meta.select:
            var = var.sel(meta.select)
        var = var.transpose(meta.time_dim, meta.lat_dim, meta.lon_dim)
        for t_pos, t_first, t_len in contiguous_runs(times):
            for b in range(0, t_len, READ_BLOCK_STEPS):
                n = min(READ_BLOCK_STEPS, t_len - b)
                t_sel = slice(t_first + b, t_first + b + n)
                for a_pos, a_first, a_len in lat_runs:
                    for o_pos, o_first, o_len in lon_runs:
                        block = var.isel(
                            {
                                meta.time_dim: t_sel,
                                meta.lat_dim: slice(a_first, a_first + a_len),
                                meta.lon_dim: slice(o_first, o_first + o_len),
                            }
                        ).values
                        # Checked block by block: a whole-tensor isfinite would briefly
                        # allocate more than the partition itself.
                        if not np.isfinite(block).all():
                            raise InvalidArgumentError(
                                f"dataset.args.path: variable {name!r} has missing (NaN) or infinite values "
                                f"in time steps {t_first + b}..{t_first + b + n - 1}"
                            )
                        dest = out[t_pos + b : t_pos + b + n, v, a_pos : a_pos + a_len, o_pos : o_pos + o_len]
                        dest.copy_(torch.from_numpy(np.asarray(block, dtype=np.float32)))
        plane = out[:, v]
        plane.sub_(float(mean[v])).div_(float(std[v]))
    return out
