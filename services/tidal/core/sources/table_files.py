"""Tables read in chunks of rows: a Parquet file by row groups, a CSV file whole then sliced.

Chunks come in file order, the same on every worker, which is what makes statistics computed
over them identical everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from tidal.core.errors import InvalidArgumentError

__all__ = ["CSV_CHUNK_ROWS", "TableFile", "open_table"]

CSV_CHUNK_ROWS = 1 << 16


class TableFile(Protocol):
    """One CSV or Parquet file: its column names, row count and row chunks."""

    path: Path
    columns: list[str]
    num_rows: int
    # Rows of each chunk, in file order.
    chunk_rows: list[int]
    # Whether chunks are the file's own (Parquet row groups), so a worker can read only some.
    has_row_groups: bool

    def chunk(self, index: int, columns: list[str]) -> pa.Table: ...


class _Parquet:
    has_row_groups = True

    def __init__(self, path: Path) -> None:
        self.path, self._file = path, pq.ParquetFile(path)
        self.columns = list(self._file.schema_arrow.names)
        self.num_rows = self._file.metadata.num_rows
        meta = self._file.metadata
        self.chunk_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def chunk(self, index: int, columns: list[str]) -> pa.Table:
        return self._file.read_row_group(index, columns=columns)


class _Csv:
    has_row_groups = False

    def __init__(self, path: Path) -> None:
        options = pa_csv.ReadOptions(use_threads=False)  # the same parse on every worker
        self.path, self._table = path, pa_csv.read_csv(path, read_options=options)
        self.columns = list(self._table.column_names)
        self.num_rows = self._table.num_rows
        self.chunk_rows = [min(CSV_CHUNK_ROWS, self.num_rows - lo) for lo in range(0, self.num_rows, CSV_CHUNK_ROWS)]

    def chunk(self, index: int, columns: list[str]) -> pa.Table:
        return self._table.select(columns).slice(index * CSV_CHUNK_ROWS, CSV_CHUNK_ROWS)


def open_table(path_value: str, field: str) -> TableFile:
    """The table at ``path_value`` (``.csv`` or ``.parquet``/``.pq``); errors name ``field``."""
    path = Path(path_value)
    if not path.is_file():
        raise InvalidArgumentError(f"{field}: no such file {path_value!r}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return _Parquet(path)
        if suffix == ".csv":
            return _Csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidArgumentError(f"{field}: cannot read {path_value!r}: {exc}") from exc
    raise InvalidArgumentError(f"{field}: {path_value!r} is not a .csv, .parquet or .pq file")
