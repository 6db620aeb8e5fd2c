"""Sparse parameters for user models: embedding tables that live on the parameter shards.

A model declares the tables it reads with `ShardedEmbedding(name, dim)`; a worker binds them
to a `RowSource` (`bind_rows`), and after each backward collects one `RowGradient` per table
(`row_gradients`) to push. `LocalRows` is an in-process source with row-wise SGD, the
single-process reference. This package imports torch only: no RPC, no transport.
"""

from tidal.nn.embedding import ShardedEmbedding
from tidal.nn.local_rows import LocalRows
from tidal.nn.model_rows import bind_rows, embedding_tables, reset_rows, row_gradients, row_stats
from tidal.nn.rows import RowGradient, RowSource, RowStats

__all__ = [
    "LocalRows",
    "RowGradient",
    "RowSource",
    "RowStats",
    "ShardedEmbedding",
    "bind_rows",
    "embedding_tables",
    "reset_rows",
    "row_gradients",
    "row_stats",
]
