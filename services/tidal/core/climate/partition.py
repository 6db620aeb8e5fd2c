"""Which part of a climate data set each worker owns: pure functions of sizes, rank and seed.

Three ways to cut a gridded field (time x lat x lon) across ``world_size`` workers:

* ``region``: the lat x lon grid is cut into ``rows x cols`` tiles, one per worker; a tile may
  read ``halo`` extra cells on every side as input context (never as a target). Longitude wraps
  around on a global grid, latitude is clipped at the poles.
* ``time``: the sample times are cut into contiguous ranges (a worker reads whole frames of
  one stretch of time).
* ``random``: the sample times are dealt out by a seeded permutation.

Station records are cut by station (greedy on record counts) or by time ranges. Every split
is near-equal (sizes differ by at most one row, column or sample), and none depends on
anything but its arguments, so every process recomputes the same assignment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tidal.core.errors import InvalidArgumentError

__all__ = [
    "Tile",
    "even_ranges",
    "random_split",
    "region_tiles",
    "split_stations",
    "tile_layout",
    "time_ranges",
]


def even_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous [start, stop) ranges covering range(n); sizes differ by at most 1."""
    if parts < 1:
        raise InvalidArgumentError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def tile_layout(world_size: int, n_lat: int, n_lon: int, tiles: Sequence[int] | None = None) -> tuple[int, int]:
    """Rows x cols of the tile grid: ``tiles`` if given, else the factorisation of
    ``world_size`` whose tiles are closest to square."""
    if tiles is not None:
        if len(tiles) != 2 or any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in tiles):
            raise InvalidArgumentError(f"dataset.args.tiles must be [rows, cols] of positive integers, got {tiles!r}")
        rows, cols = tiles
        if rows * cols != world_size:
            raise InvalidArgumentError(
                f"dataset.args.tiles {rows}x{cols} = {rows * cols} tiles, but the job has {world_size} workers"
            )
    else:
        best: tuple[float, int, int] | None = None
        for rows in range(1, world_size + 1):
            if world_size % rows:
                continue
            cols = world_size // rows
            # log of the tile's aspect ratio: 0 for a square tile.
            score = abs(math.log((n_lat / rows) / (n_lon / cols)))
            if best is None or score < best[0]:
                best = (score, rows, cols)
        assert best is not None  # rows = 1 always divides
        _, rows, cols = best
    if rows > n_lat or cols > n_lon:
        raise InvalidArgumentError(f"a {n_lat}x{n_lon} grid cannot be cut into {rows}x{cols} tiles")
    return rows, cols


@dataclass(frozen=True)
class Tile:
    """One worker's region: interior cells [lat0, lat1) x [lon0, lon1) plus a halo."""

    rank: int
    lat0: int
    lat1: int
    lon0: int
    lon1: int
    halo: int
    n_lat: int
    n_lon: int
    periodic_lon: bool

    @property
    def cells(self) -> int:
        """Interior (owned) cells."""
        return (self.lat1 - self.lat0) * (self.lon1 - self.lon0)

    def lat_indices(self) -> np.ndarray:
        """Rows read, halo included; clipped at the poles."""
        return np.arange(max(0, self.lat0 - self.halo), min(self.n_lat, self.lat1 + self.halo))

    def lon_indices(self) -> np.ndarray:
        """Columns read, halo included; wraps around on a global grid, clipped otherwise."""
        cols = np.arange(self.lon0 - self.halo, self.lon1 + self.halo)
        if self.periodic_lon:
            return cols % self.n_lon
        return cols[(cols >= 0) & (cols < self.n_lon)]

    def interior_mask(self) -> np.ndarray:
        """Boolean (rows read, cols read): True on owned cells, False on halo cells."""
        lat = self.lat_indices()
        cols = np.arange(self.lon0 - self.halo, self.lon1 + self.halo)
        if not self.periodic_lon:
            cols = cols[(cols >= 0) & (cols < self.n_lon)]
        in_lat = (lat >= self.lat0) & (lat < self.lat1)
        in_lon = (cols >= self.lon0) & (cols < self.lon1)
        return in_lat[:, None] & in_lon[None, :]


def region_tiles(
    n_lat: int,
    n_lon: int,
    world_size: int,
    halo: int = 0,
    tiles: Sequence[int] | None = None,
    periodic_lon: bool = False,
) -> list[Tile]:
    """One tile per rank, row-major over the tile grid (rank 0 at the first latitude rows)."""
    if halo < 0:
        raise InvalidArgumentError(f"dataset.args.halo must be >= 0, got {halo}")
    rows, cols = tile_layout(world_size, n_lat, n_lon, tiles)
    if halo > min(n_lat, n_lon):
        raise InvalidArgumentError(f"dataset.args.halo {halo} is wider than the {n_lat}x{n_lon} grid")
    out = []
    for r, (lat0, lat1) in enumerate(even_ranges(n_lat, rows)):
        for c, (lon0, lon1) in enumerate(even_ranges(n_lon, cols)):
            out.append(Tile(r * cols + c, lat0, lat1, lon0, lon1, halo, n_lat, n_lon, periodic_lon))
    return out


def time_ranges(num_samples: int, world_size: int) -> list[np.ndarray]:
    """Contiguous blocks of sample positions, one per rank."""
    return [np.arange(a, b) for a, b in even_ranges(num_samples, world_size)]


def random_split(num_samples: int, world_size: int, seed: int) -> list[np.ndarray]:
    """A seeded permutation dealt in near-equal parts; each part sorted (sequential reads)."""
    # PCG64 with an explicit seed gives the same stream on every platform and numpy version
    # that keeps its stability guarantee for Generator.permutation.
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(num_samples)
    return [np.sort(perm[a:b]) for a, b in even_ranges(num_samples, world_size)]


def split_stations(counts: dict[str, int], world_size: int) -> list[list[str]]:
    """Stations per rank, balancing record counts: largest station first to the least loaded
    rank (ties: lowest rank; stations ordered by name for equal counts)."""
    if len(counts) < world_size:
        raise InvalidArgumentError(
            f"partition 'station' needs at least one station per worker: {len(counts)} stations, "
            f"{world_size} workers (use partition: time)"
        )
    load = [0] * world_size
    parts: list[list[str]] = [[] for _ in range(world_size)]
    for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        parts[rank].append(name)
        load[rank] += count
    return [sorted(p) for p in parts]
