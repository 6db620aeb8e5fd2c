"""The ``arrays`` source: inputs and labels (or targets) stored as array files.

``dataset.args``:

* ``x`` (required): the inputs, a ``.npy``, ``.npz`` or ``.safetensors`` file; rows are samples.
* ``y``: the labels or targets (default: the same file as ``x``, for .npz/.safetensors).
* ``x_key``, ``y_key`` (default ``"x"``, ``"y"``): array names inside .npz/.safetensors files.
* ``val_x``, ``val_y``: separate validation files (``val_y`` defaults to ``val_x``); or else
* ``val_fraction`` (default 0.2): this share of the rows, drawn with the job's seed (the same on
  every worker), is held out for validation.
* ``task``: ``"classification"`` (default; integer labels ``y`` of shape (N,)) or
  ``"regression"`` (float targets; ``y`` of shape (N,) is read as (N, 1)).
* ``num_classes``: classification only; default ``max(y) + 1`` over the train and validation labels.

Nothing is loaded whole: ``.npy`` and uncompressed ``.npz`` arrays are memory-mapped
(``mmap_mode="r"``), ``.safetensors`` tensors read by row ranges (``safe_open``), and each batch
reads only its own rows, so a worker's memory grows with the rows it visits (its partition),
not with the file. Only counting classes reads all of ``y`` (in chunks). Values are used as
stored (converted to float32): normalise them before saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.sources.api import SourceData
from tidal.core.sources.args import SourceArgs
from tidal.core.sources.array_files import RowReader, open_rows

__all__ = ["ARRAY_ARGS", "ArrayRows", "arrays"]

NAME = "arrays"
ARRAY_ARGS = {"x", "y", "x_key", "y_key", "val_x", "val_y", "val_fraction", "task", "num_classes"}
_CHUNK_ROWS = 1 << 16  # rows of y per read when counting classes


class ArrayRows:
    """Map-style view of rows ``rows`` of an x and a y reader; a batch reads only its rows."""

    def __init__(self, x: RowReader, y: RowReader, rows: np.ndarray, y_column: bool) -> None:
        self.x, self.y, self.rows = x, y, rows
        self._y_column = y_column  # regression targets stored as (N,): served as (N, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        wanted = self.rows[np.asarray(indices, dtype=np.int64)]
        # Read each row once, in file order, then put the batch back in the asked order.
        unique, inverse = np.unique(wanted, return_inverse=True)
        back = torch.from_numpy(inverse.astype(np.int64))
        x, y = self.x.take(unique)[back], self.y.take(unique)[back]
        return x, (y[:, None] if self._y_column else y)


def _pair(args: SourceArgs, x_field: str, y_field: str) -> tuple[RowReader, RowReader]:
    x_key = args.str("x_key", "x") or "x"
    y_key = args.str("y_key", "y") or "y"
    x_path = args.path(x_field)
    x = open_rows(x_path, x_key, f"dataset.args.{x_field}")
    y = open_rows(args.path(y_field) or x_path, y_key, f"dataset.args.{y_field}")
    if len(x.shape) < 2:
        raise InvalidArgumentError(
            f"dataset.args.{x_field}: inputs must have a row and a feature dimension, got shape {x.shape}"
        )
    if y.shape[0] != x.shape[0]:
        raise InvalidArgumentError(
            f"dataset.args.{y_field}: {y.shape[0]} rows, but dataset.args.{x_field} has {x.shape[0]}"
        )
    if x.shape[0] == 0:
        raise InvalidArgumentError(f"dataset.args.{x_field}: the array has no rows")
    return x, y


def _num_classes(args: SourceArgs, readers: list[tuple[RowReader, str]]) -> int:
    for reader, field in readers:
        if not reader.integer or len(reader.shape) != 1:
            raise InvalidArgumentError(
                f"{field}: classification labels must be integers of shape (N,), got shape {reader.shape}"
            )
    if args.has("num_classes"):
        return args.int("num_classes", 2, 2, 1 << 24)
    top = -1
    for reader, _ in readers:  # in chunks: labels are small, but need not fit at once
        for lo in range(0, reader.shape[0], _CHUNK_ROWS):
            top = max(top, int(reader.take(np.arange(lo, min(lo + _CHUNK_ROWS, reader.shape[0]))).max()))
    return max(top + 1, 2)


def _split_rows(args: SourceArgs, total: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of one file: a seeded ``val_fraction`` held out."""
    fraction = args.float("val_fraction", 0.2, 0.0, 1.0)
    num_val = round(total * fraction)
    if num_val >= total:
        raise InvalidArgumentError(f"dataset.args.val_fraction {fraction} leaves no training rows of {total}")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[num_val:]), np.sort(perm[:num_val])


def arrays(*, rank: int, world_size: int, seed: int, **raw: Any) -> SourceData:
    """The ``arrays`` source (see the module docstring). Every worker opens the same files and
    reads its own rows batch by batch, so ``rank`` and ``world_size`` are not needed here."""
    del rank, world_size
    args = SourceArgs(raw, ARRAY_ARGS, NAME)
    if not args.has("x"):
        raise InvalidArgumentError("dataset.args.x is required: the file of inputs")
    task = args.choice("task", "classification", ("classification", "regression"))
    x, y = _pair(args, "x", "y")
    column = task == "regression" and len(y.shape) == 1
    if args.has("val_x"):
        if args.has("val_fraction"):
            raise InvalidArgumentError("dataset.args.val_fraction cannot be given with dataset.args.val_x")
        val_x, val_y = _pair(args, "val_x", "val_y")
        if val_x.shape[1:] != x.shape[1:] or val_y.shape[1:] != y.shape[1:]:
            raise InvalidArgumentError("dataset.args.val_x: validation rows have another shape than training rows")
        train = ArrayRows(x, y, np.arange(x.shape[0]), column)
        val = ArrayRows(val_x, val_y, np.arange(val_x.shape[0]), column)
        readers = [(y, "dataset.args.y"), (val_y, "dataset.args.val_y")]
    else:
        train_rows, val_rows = _split_rows(args, x.shape[0], seed)
        train, val = ArrayRows(x, y, train_rows, column), ArrayRows(x, y, val_rows, column)
        readers = [(y, "dataset.args.y")]
    input_shape = tuple(x.shape[1:])
    if task == "classification":
        return SourceData(train, val, input_shape, num_classes=_num_classes(args, readers))
    if args.has("num_classes"):
        raise InvalidArgumentError("dataset.args.num_classes is for classification, not task 'regression'")
    return SourceData(train, val, input_shape, output_shape=(1,) if column else tuple(y.shape[1:]))
