"""A synthetic but physically shaped temperature field, written as a real NetCDF4 or Zarr store.

Near-surface temperature ``t2m`` (kelvin) on a regular global lat-lon grid, every
``step_hours``:

    t2m = 288 - 40 sin^2(lat)                            latitude gradient (warm equator)
          - 15 sin(lat) cos(2 pi day / 365.25)           seasonal cycle, opposite hemispheres
          + 4 a(t, lat, lon)                             weather: an advected anomaly
          + 0.1 e                                        measurement noise (white)

The anomaly ``a`` is a spatially smooth red-noise field carried eastward by a prescribed
zonal wind (a mid-latitude jet: up to 1.5 grid cells per step near 45 degrees, 0.3 at the
equator, semi-Lagrangian with linear interpolation), damped by 0.999 per step and forced by
fresh smooth noise so its variance stays 1. Most of the next step is thus predictable from
the current one (advection and damping), which is what a forecaster must learn to beat
persistence; the forcing and the noise are not.

The size knob sets the number of time steps for a given grid; data is stored uncompressed
(float32) so the file size is close to the requested size. Writing goes block by block, so
gigabyte files need little memory. Dimensions and names follow ERA5 (``time``, ``latitude``
descending from north to south, ``longitude`` from 0 east).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import h5netcdf
import numpy as np
import xarray as xr

from tidal.core.errors import InvalidArgumentError

__all__ = ["SynthConfig", "field_blocks", "parse_size", "write_field"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
BLOCK_STEPS = 256  # time steps generated and written at a time


def parse_size(text: str) -> int:
    """'200kB', '50MB', '1.5GiB' or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?i?[bB]?)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InvalidArgumentError(f"--size must look like 200kB, 50MB or 2GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class SynthConfig:
    n_lat: int = 32
    n_lon: int = 64
    steps: int = 400
    step_hours: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_lat < 2 or self.n_lon < 4:
            raise InvalidArgumentError(f"the grid must be at least 2x4, got {self.n_lat}x{self.n_lon}")
        if self.steps < 2:
            raise InvalidArgumentError(f"steps must be >= 2, got {self.steps}")
        if not 0 < self.step_hours <= 24 * 31:
            raise InvalidArgumentError(f"step_hours must be in (0, 744], got {self.step_hours}")

    @classmethod
    def for_size(cls, size_bytes: int, n_lat: int, n_lon: int, **kw: float) -> SynthConfig:
        steps = max(2, size_bytes // (n_lat * n_lon * 4))
        return cls(n_lat=n_lat, n_lon=n_lon, steps=int(steps), **kw)  # type: ignore[arg-type]

    @property
    def lat(self) -> np.ndarray:
        """Cell centres, north to south (as ERA5 stores them)."""
        d = 180.0 / self.n_lat
        return 90.0 - d / 2 - d * np.arange(self.n_lat)

    @property
    def lon(self) -> np.ndarray:
        return (360.0 / self.n_lon) * np.arange(self.n_lon)


def _smoothing_kernel(n_lat: int, n_lon: int, scale_cells: float) -> np.ndarray:
    ky = np.fft.fftfreq(n_lat)[:, None]
    kx = np.fft.rfftfreq(n_lon)[None, :]
    return np.exp(-2 * (math.pi * scale_cells) ** 2 * (kx**2 + ky**2))


def _smooth_noise(rng: np.random.Generator, kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * kernel, s=shape)
    return field / max(float(field.std()), 1e-12)


def _advect(a: np.ndarray, shift_cells: np.ndarray) -> np.ndarray:
    """Moves each row east by shift_cells[row] (periodic, linear interpolation)."""
    n_lon = a.shape[1]
    src = np.arange(n_lon)[None, :] - shift_cells[:, None]
    left = np.floor(src).astype(np.int64)
    frac = src - left
    rows = np.arange(a.shape[0])[:, None]
    return (1 - frac) * a[rows, left % n_lon] + frac * a[rows, (left + 1) % n_lon]


def field_blocks(cfg: SynthConfig) -> Iterator[np.ndarray]:
    """Yields float32 blocks (steps, lat, lon) of the field, in time order."""
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    lat = np.deg2rad(cfg.lat)
    shape = (cfg.n_lat, cfg.n_lon)
    # Smooth over ~8% of the grid width, so a tile of a few workers sees whole weather systems.
    kernel = _smoothing_kernel(cfg.n_lat, cfg.n_lon, scale_cells=max(1.0, cfg.n_lon / 12))
    jet = 0.3 + 1.2 * np.exp(-(((np.abs(np.rad2deg(lat)) - 45.0) / 20.0) ** 2))
    damping = 0.999
    climate = (288.0 - 40.0 * np.sin(lat) ** 2)[:, None]
    anomaly = _smooth_noise(rng, kernel, shape)
    for start in range(0, cfg.steps, BLOCK_STEPS):
        n = min(BLOCK_STEPS, cfg.steps - start)
        out = np.empty((n, *shape), dtype=np.float32)
        for i in range(n):
            day = (start + i) * cfg.step_hours / 24.0
            season = -15.0 * np.sin(lat)[:, None] * math.cos(2 * math.pi * day / 365.25)
            out[i] = climate + season + 4.0 * anomaly + 0.1 * rng.standard_normal(shape)
            forcing = _smooth_noise(rng, kernel, shape)
            anomaly = damping * _advect(anomaly, jet) + math.sqrt(1 - damping**2) * forcing
        yield out


def _dataset(cfg: SynthConfig, block: np.ndarray, start: int) -> xr.Dataset:
    hours = (start + np.arange(block.shape[0])) * cfg.step_hours
    time = np.datetime64("2000-01-01T00:00", "ns") + (hours * 3600e9).astype("timedelta64[ns]")
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), block, {"units": "K", "long_name": "2 metre temperature"})},
        coords={
            "time": ("time", time),
            "latitude": ("latitude", cfg.lat, {"units": "degrees_north"}),
            "longitude": ("longitude", cfg.lon, {"units": "degrees_east"}),
        },
        attrs={"source": "tidal climate synth (synthetic)", "seed": cfg.seed},
    )


def write_field(path: str, cfg: SynthConfig) -> None:
    """Writes the field to ``path``: a Zarr store if it ends in .zarr, else NetCDF4 (HDF5)."""
    if path.rstrip("/").endswith(".zarr"):
        _write_zarr(path, cfg)
    else:
        _write_netcdf(path, cfg)


def _write_netcdf(path: str, cfg: SynthConfig) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    # Chunks of a few steps over spatial blocks: a worker reading one tile touches only the
    # chunks that overlap it.
    chunks = (min(cfg.steps, 8), min(cfg.n_lat, 32), min(cfg.n_lon, 32))
    with h5netcdf.File(tmp, "w") as f:
        f.dimensions = {"time": cfg.steps, "latitude": cfg.n_lat, "longitude": cfg.n_lon}
        t = f.create_variable("time", ("time",), "f8")
        t.attrs.update({"units": "hours since 2000-01-01 00:00:00", "calendar": "proleptic_gregorian"})
        t[:] = np.arange(cfg.steps) * cfg.step_hours
        lat = f.create_variable("latitude", ("latitude",), "f8")
        lat.attrs["units"] = "degrees_north"
        lat[:] = cfg.lat
        lon = f.create_variable("longitude", ("longitude",), "f8")
        lon.attrs["units"] = "degrees_east"
        lon[:] = cfg.lon
        var = f.create_variable("t2m", ("time", "latitude", "longitude"), "f4", chunks=chunks)
        var.attrs.update({"units": "K", "long_name": "2 metre temperature"})
        f.attrs.update({"source": "tidal climate synth (synthetic)", "seed": cfg.seed})
        start = 0
        for block in field_blocks(cfg):
            var[start : start + len(block)] = block
            start += len(block)
    os.replace(tmp, path)


def _write_zarr(path: str, cfg: SynthConfig) -> None:
    tmp = f"{path.rstrip('/')}.tmp-{os.getpid()}.zarr"
    start = 0
    enc = {"t2m": {"chunks": (min(cfg.steps, 8), min(cfg.n_lat, 32), min(cfg.n_lon, 32))}}
    for block in field_blocks(cfg):
        ds = _dataset(cfg, block, start)
        if start == 0:
            ds.to_zarr(tmp, mode="w", encoding=enc, consolidated=True, zarr_format=2)
        else:
            ds.to_zarr(tmp, append_dim="time", consolidated=True, zarr_format=2)
        start += len(block)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
