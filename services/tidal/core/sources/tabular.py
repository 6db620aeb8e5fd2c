"""The ``tabular`` source: rows of a CSV or Parquet file, feature columns -> a target column.

``dataset.args``:

* ``path`` (required): a ``.csv``, ``.parquet`` or ``.pq`` file.
* ``target`` (required): the column to predict.
* ``features``: the input columns, in order (default: every other column, in file order,
  except ``split_column``). They must be numeric (integer, float or bool) with no missing
  or non-finite value.
* ``task``: ``"classification"`` (default; the target holds integer class ids >= 0) or
  ``"regression"`` (a numeric target, served as shape (1,)).
* ``num_classes``: classification only; default ``max(target) + 1`` over every row of the file.
* ``val_fraction`` (default 0.2): this share of the file's rows, drawn with the job's seed
  (the same on every worker), is held out for validation; or else
* ``split_column`` with ``val_value`` (default ``"val"``): the rows whose ``split_column`` equals
  ``val_value`` are the validation split, all others train.
* ``partition``: ``"rows"`` (default): every worker holds all training rows and takes its seeded
  share of them, as for the built-in data sets. ``"row_groups"`` (Parquet only): worker ``rank``
  of ``world_size`` keeps only the training rows of its own contiguous run of row groups
  (``world_size`` must not exceed the row groups).

Features are standardised with the mean and standard deviation of the training rows (population
std; a constant column is divided by 1). They are computed in one streaming pass over the file's
chunks (Parquet: its row groups; CSV: 65,536-row slices) in file order, combining each chunk's
float64 moments (Chan et al.), so every worker, whatever its part, gets identical statistics.

What a worker reads: a CSV file is parsed whole by every worker (CSV cannot be split without
parsing); a Parquet file is read one row group at a time, only the named columns, and a worker
keeps only its training rows and the validation rows (with ``partition: row_groups`` the other
workers' training rows are read for the statistics and dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.sources.api import SourceData
from tidal.core.sources.args import SourceArgs
from tidal.core.sources.table_files import TableFile, open_table
from tidal.core.sources.tensors import TensorPairs

__all__ = ["TABULAR_ARGS", "tabular"]

NAME = "tabular"
TABULAR_ARGS = {
    "path", "target", "features", "task", "num_classes", "val_fraction", "split_column", "val_value", "partition",
}  # fmt: skip


@dataclass(frozen=True)
class _Config:
    table: TableFile
    features: list[str]
    target: str
    classify: bool
    split_column: str | None
    val_value: Any
    val_fraction: float
    by_row_groups: bool


def _columns(args: SourceArgs, table: TableFile) -> tuple[str, list[str], str | None]:
    target, split = args.str("target", None), args.str("split_column", None)
    if target is None:
        raise InvalidArgumentError("dataset.args.target is required: the column to predict")
    for key, name in (("target", target), ("split_column", split)):
        if name is not None and name not in table.columns:
            raise InvalidArgumentError(f"dataset.args.{key}: {str(table.path)!r} has no column {name!r}")
    features = args.str_list("features") or [c for c in table.columns if c not in (target, split)]
    for name in features:
        if name not in table.columns:
            raise InvalidArgumentError(f"dataset.args.features: {str(table.path)!r} has no column {name!r}")
        if name in (target, split):
            raise InvalidArgumentError(f"dataset.args.features must not hold the target or split column {name!r}")
    if not features:
        raise InvalidArgumentError("dataset.args.features: no feature columns left")
    return target, features, split


def _config(args: SourceArgs) -> _Config:
    path = args.path("path")
    if path is None:
        raise InvalidArgumentError("dataset.args.path is required: a .csv or .parquet file")
    table = open_table(path, "dataset.args.path")
    target, features, split = _columns(args, table)
    if split is None and args.has("val_value"):
        raise InvalidArgumentError("dataset.args.val_value needs dataset.args.split_column")
    if split is not None and args.has("val_fraction"):
        raise InvalidArgumentError("dataset.args.val_fraction cannot be given with dataset.args.split_column")
    val_value = args.scalar("val_value", "val")
    partition = args.choice("partition", "rows", ("rows", "row_groups"))
    if partition == "row_groups" and not table.has_row_groups:
        raise InvalidArgumentError("dataset.args.partition 'row_groups' needs a Parquet file; a CSV file has none")
    classify = args.choice("task", "classification", ("classification", "regression")) == "classification"
    if not classify and args.has("num_classes"):
        raise InvalidArgumentError("dataset.args.num_classes is for classification, not task 'regression'")
    fraction = args.float("val_fraction", 0.2, 0.0, 1.0)
    return _Config(table, features, target, classify, split, val_value, fraction, partition == "row_groups")


def _numeric(chunk: pa.Table, name: str, key: str, start: int) -> np.ndarray:
    """Column ``name`` of ``chunk`` as float64, refused if not numeric or not all finite."""
    column = chunk.column(name)
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise InvalidArgumentError(f"dataset.args.{key}: column {name!r} holds {kind}, not numbers")
    if column.null_count:
        row = start + int(pc.index(pc.is_null(column), True).as_py())
        raise InvalidArgumentError(f"dataset.args.{key}: column {name!r} has a missing value (row {row})")
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise InvalidArgumentError(f"dataset.args.{key}: column {name!r} holds NaN or infinity (row {start + bad[0]})")
    return values


@dataclass
class _Moments:
    """Mean and variance per feature over chunks, combined pairwise (Chan et al.) in order."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        n, mean = len(rows), rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.m2 is None:
            raise InvalidArgumentError("dataset.args: no training rows")
        std = np.sqrt(self.m2 / self.count)
        return self.mean, np.where(std > 0, std, 1.0)


@dataclass
class _Kept:
    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x.append(x)
        self.y.append(y)

    def tensors(self, mean: np.ndarray, std: np.ndarray, classify: bool) -> TensorPairs:
        x = (np.concatenate(self.x) - mean) / std
        y = np.concatenate(self.y)
        targets = torch.from_numpy(y.astype(np.int64)) if classify else torch.from_numpy(y.astype(np.float32))[:, None]
        return TensorPairs(torch.from_numpy(x.astype(np.float32)), targets)


def _is_val(cfg: _Config, chunk: pa.Table, rows: slice, fraction_mask: np.ndarray | None) -> np.ndarray:
    if fraction_mask is not None:
        return fraction_mask[rows]
    try:
        equal = pc.equal(chunk.column(cfg.split_column), cfg.val_value)
    except (pa.ArrowException, TypeError) as exc:
        raise InvalidArgumentError(
            f"dataset.args.val_value {cfg.val_value!r} cannot be compared with column {cfg.split_column!r}: {exc}"
        ) from exc
    return equal.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


def _labels(values: np.ndarray, chunk: pa.Table, cfg: _Config, start: int) -> None:
    if not pa.types.is_integer(chunk.column(cfg.target).type):
        raise InvalidArgumentError(
            f"dataset.args.target: column {cfg.target!r} holds {chunk.column(cfg.target).type}, "
            "not integer class ids (use task 'regression' for a numeric target)"
        )
    if len(values) and values.min() < 0:
        raise InvalidArgumentError(
            f"dataset.args.target: column {cfg.target!r} has a negative class id (row {start + int(values.argmin())})"
        )


def _own_chunks(cfg: _Config, rank: int, world_size: int) -> range:
    count = len(cfg.table.chunk_rows)
    if not cfg.by_row_groups:
        return range(count)
    if world_size > count:
        raise InvalidArgumentError(
            f"dataset.args.partition 'row_groups': {str(cfg.table.path)!r} has {count} row groups, "
            f"fewer than the {world_size} workers"
        )
    return range(count * rank // world_size, count * (rank + 1) // world_size)


def _read(cfg: _Config, seed: int, own: range) -> tuple[_Kept, _Kept, _Moments, int]:
    """One pass over the file: (own training rows, validation rows, training moments, top label)."""
    fraction_mask = None
    if cfg.split_column is None:
        total = cfg.table.num_rows
        perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).numpy()
        fraction_mask = np.zeros(total, dtype=bool)
        fraction_mask[perm[: round(total * cfg.val_fraction)]] = True
    columns = list(dict.fromkeys([*cfg.features, cfg.target, *([cfg.split_column] if cfg.split_column else [])]))
    train, val, moments, top, start = _Kept(), _Kept(), _Moments(), -1, 0
    for index, rows in enumerate(cfg.table.chunk_rows):
        chunk = cfg.table.chunk(index, columns)
        x = np.stack([_numeric(chunk, name, "features", start) for name in cfg.features], axis=1)
        y = _numeric(chunk, cfg.target, "target", start)
        if cfg.classify:
            _labels(y, chunk, cfg, start)
            top = max(top, int(y.max(initial=-1)))
        is_val = _is_val(cfg, chunk, slice(start, start + rows), fraction_mask)
        moments.add(x[~is_val])
        if index in own:
            train.add(x[~is_val], y[~is_val])
        val.add(x[is_val], y[is_val])
        start += rows
    return train, val, moments, top


def tabular(*, rank: int, world_size: int, seed: int, **raw: Any) -> SourceData:
    """The ``tabular`` source (see the module docstring)."""
    args = SourceArgs(raw, TABULAR_ARGS, NAME)
    cfg = _config(args)
    own = _own_chunks(cfg, rank, world_size)
    train, val, moments, top = _read(cfg, seed, own)
    if not train.x or sum(len(x) for x in train.x) == 0:
        raise InvalidArgumentError(
            f"dataset.args.path: {str(cfg.table.path)!r} leaves no training rows for this worker"
        )
    if sum(len(x) for x in val.x) == 0:
        raise InvalidArgumentError(f"dataset.args.path: {str(cfg.table.path)!r} has no validation rows")
    mean, std = moments.scale()
    input_shape = (len(cfg.features),)
    if not cfg.classify:
        train_pairs, val_pairs = train.tensors(mean, std, False), val.tensors(mean, std, False)
        return SourceData(train_pairs, val_pairs, input_shape, output_shape=(1,), own_part=cfg.by_row_groups)
    classes = args.int("num_classes", max(top + 1, 2), 2, 1 << 24)
    if top >= classes:
        raise InvalidArgumentError(f"dataset.args.num_classes {classes} is not above the largest class id {top}")
    train_pairs, val_pairs = train.tensors(mean, std, True), val.tensors(mean, std, True)
    return SourceData(train_pairs, val_pairs, input_shape, num_classes=classes, own_part=cfg.by_row_groups)
