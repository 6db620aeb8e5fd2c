"""Per-variable normalisation statistics of a gridded store, computed once and shared.

Every member must normalise with the same numbers. Two ways, both deterministic:

* a sidecar JSON next to the store (``<store>.stats.json``), written by
  ``tidal climate stats STORE`` (and by ``tidal climate synth``); members read it;
* without a sidecar, every member computes the same statistics from the same evenly spaced
  training time steps (at most ``stats_steps``, one frame in memory at a time): the same
  file gives the same bits in every process, at the cost of reading those frames once per
  member.

Only training time steps are used (never the validation steps at the end), so nothing about
the held-out period leaks into the inputs. The sidecar records how many leading time steps it
covered; a job accepts it when those all lie inside its own training period.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from tidal.core.climate.grid import GridMeta
from tidal.core.errors import InvalidArgumentError

__all__ = ["NormStats", "compute_stats", "read_stats", "sidecar_path", "write_stats"]

FORMAT = "tidal-climate-stats/1"


@dataclass(frozen=True)
class NormStats:
    mean: dict[str, float]
    std: dict[str, float]
    # Leading time steps the statistics were drawn from, and how many of them were read.
    train_steps: int
    sampled_steps: int

    def for_variables(self, variables: tuple[str, ...], source: str) -> tuple[list[float], list[float]]:
        missing = [v for v in variables if v not in self.mean]
        if missing:
            raise InvalidArgumentError(f"dataset.args.stats {source!r} has no statistics for {missing}")
        return [self.mean[v] for v in variables], [self.std[v] for v in variables]


def sidecar_path(store: str) -> str:
    return store.rstrip("/") + ".stats.json"


def sample_steps(train_steps: int, max_steps: int) -> np.ndarray:
    """Evenly spaced time indices in [0, train_steps), first and last included."""
    count = min(train_steps, max_steps)
    return np.unique(np.linspace(0, train_steps - 1, count).round().astype(np.int64))


def compute_stats(ds: xr.Dataset, meta: GridMeta, train_steps: int, max_steps: int) -> NormStats:
    """Mean and standard deviation of each variable over every cell of the sampled steps,
    accumulated in float64 one frame at a time (Chan's parallel update)."""
    if train_steps < 1:
        raise InvalidArgumentError("dataset.args.val_steps leaves no training time steps")
    steps = sample_steps(train_steps, max_steps)
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for name in meta.variables:
        var = ds[name].sel(meta.select) if meta.select else ds[name]
        var = var.transpose(meta.time_dim, meta.lat_dim, meta.lon_dim)
        n, mu, m2 = 0, 0.0, 0.0
        for t in steps:
            frame = np.asarray(var.isel({meta.time_dim: int(t)}).values, dtype=np.float64)
            if not np.isfinite(frame).all():
                raise InvalidArgumentError(f"dataset.args.path: variable {name!r} has missing values at step {t}")
            k, f_mu = frame.size, float(frame.mean())
            f_m2 = float(((frame - f_mu) ** 2).sum())
            delta = f_mu - mu
            total = n + k
            mu += delta * k / total
            m2 += f_m2 + delta * delta * n * k / total
            n = total
        mean[name] = mu
        # A constant field would divide by zero; normalise it to zeros instead.
        std[name] = math.sqrt(m2 / n) if m2 > 0 else 1.0
    return NormStats(mean, std, train_steps, len(steps))


def write_stats(path: str, stats: NormStats, source: str) -> None:
    """Writes the sidecar atomically (a reader never sees half a file)."""
    doc = {
        "format": FORMAT,
        "source": os.path.basename(source.rstrip("/")),
        "train_steps": stats.train_steps,
        "sampled_steps": stats.sampled_steps,
        "variables": {v: {"mean": stats.mean[v], "std": stats.std[v]} for v in sorted(stats.mean)},
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_stats(path: str, train_steps: int) -> NormStats:
    """Reads a sidecar; refuses one that is malformed or covers validation time steps."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"dataset.args.stats {path!r}: cannot read ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidArgumentError(f"dataset.args.stats {path!r}: not a {FORMAT} file")
    try:
        covered = int(doc["train_steps"])
        variables = doc["variables"]
        mean = {str(k): float(v["mean"]) for k, v in variables.items()}
        std = {str(k): float(v["std"]) for k, v in variables.items()}
        sampled = int(doc.get("sampled_steps", covered))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgumentError(f"dataset.args.stats {path!r}: malformed ({exc})") from exc
    if not all(math.isfinite(x) for x in (*mean.values(), *std.values())) or min(std.values(), default=1) <= 0:
        raise InvalidArgumentError(f"dataset.args.stats {path!r}: means must be finite and deviations positive")
    if covered > train_steps:
        raise InvalidArgumentError(
            f"dataset.args.stats {path!r} was computed over the first {covered} time steps, but this job trains "
            f"on the first {train_steps} only (the rest validates): recompute it with "
            f"`tidal climate stats STORE --val-steps ...`"
        )
    return NormStats(mean, std, covered, sampled)
