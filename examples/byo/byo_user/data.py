"""A data factory: ``dataset.name: "byo_user.data:weather"``, the same rows as make_data.py's
CSV, simulated in memory, to show the contract (tidal.core.sources.api).

tidal calls it on every worker as ``weather(rank=..., world_size=..., seed=..., **dataset.args)``
and it returns a ``SourceData``: map-style train and validation splits of ``(x, y)`` samples, the
shape of one ``x`` and the number of classes. ``train`` is the whole training set: tidal takes
this worker's seeded share of it, so sync training stays equal to large-batch SGD.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from byo_user.weather import FEATURES, SPLIT, TARGET, simulate
from tidal.core.sources.api import SourceData


def weather(*, rank: int, world_size: int, seed: int, stations: int = 4, years: int = 3) -> SourceData:
    """The last year validates; features standardised with the training rows' statistics.
    `rank` and `world_size` go unused: every worker returns the whole set and tidal partitions it."""
    del rank, world_size
    columns = simulate(seed, stations, years)
    x = np.stack([columns[name] for name in FEATURES], axis=1).astype(np.float64)
    y = columns[TARGET]
    val = columns[SPLIT] == columns[SPLIT].max()
    mean, std = x[~val].mean(axis=0), x[~val].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)

    def split(rows: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]))

    return SourceData(train=split(~val), val=split(val), input_shape=(len(FEATURES),), num_classes=2)
