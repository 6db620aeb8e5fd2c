"""The spec of the sparse parameters (issue 20, docs/embeddings.md): one embedding table, its
row-wise optimizer and its rows' initial values, with the bounds a job's tables must keep.

The job spec (core/spec.py) holds a list of these tables; this module does not import it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tidal.core.strict_model import StrictModel

# Sparse parameters (issue 20, docs/embeddings.md): embedding tables held row by row on the
# shards. Bounds: tables per job, row width, and elements per table (rows x dim, over all the
# job's shards; optimizer state comes on top: x2 for adagrad, x3 for adam).
MAX_EMBEDDING_TABLES = 64
MAX_EMBEDDING_DIM = 4096
MAX_EMBEDDING_ELEMENTS = 1 << 31
# A table's name: an identifier without dots. Dense parameter names are module paths, dotted
# for every parameter of a submodule, so a table can only meet a dense name that is a model's
# own top-level parameter: the worker's layer checks that one (docs/embeddings.md).
EMBEDDING_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class RowOptimizerSpec(StrictModel):
    """The row-wise optimizer of one table, run by the shards on each pushed row alone
    (core/embeddings/optim.py): a row that no gradient touched does not move."""

    name: Literal["sgd", "adagrad", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0, le=100)
    # adam: decay rates of the first and second moment.
    betas: tuple[float, float] = (0.9, 0.999)
    # adagrad, adam: added to the denominator (torch's defaults: 1e-10 for Adagrad, 1e-8 for Adam).
    eps: float = Field(1e-8, gt=0, le=1)
    # adagrad: the accumulator's starting value.
    initial_accumulator_value: float = Field(0.0, ge=0, le=1e6)

    @model_validator(mode="after")
    def _options_of_the_optimizer(self) -> RowOptimizerSpec:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.name != "adam" and self.betas != (0.9, 0.999):
            raise ValueError(f"betas apply to adam only, not {self.name}")
        if self.name != "adagrad" and self.initial_accumulator_value:
            raise ValueError(f"initial_accumulator_value applies to adagrad only, not {self.name}")
        return self


class RowInitSpec(StrictModel):
    """A row's initial values, drawn from (job seed, table, id) alone: the same on any shard,
    at any time, after any restart or eviction (core/embeddings/init.py)."""

    distribution: Literal["normal", "uniform", "zeros"] = "normal"
    # normal: the standard deviation; uniform: the half-width (values in [-scale, scale)).
    scale: float = Field(0.01, ge=0, le=10)


class EmbeddingTableSpec(StrictModel):
    """One embedding table: `num_embeddings` rows with ids in [0, num_embeddings) (bounded), or
    hashed int64 ids of which at most `capacity` rows are held, the least recently used evicted
    first (exactly one of the two)."""

    name: str = Field(pattern=EMBEDDING_NAME_PATTERN)
    num_embeddings: int | None = Field(None, ge=1, le=MAX_EMBEDDING_ELEMENTS)
    capacity: int | None = Field(None, ge=1, le=MAX_EMBEDDING_ELEMENTS)
    dim: int = Field(ge=1, le=MAX_EMBEDDING_DIM)
    optimizer: RowOptimizerSpec = Field(default_factory=RowOptimizerSpec)
    init: RowInitSpec = Field(default_factory=RowInitSpec)
    # async: each push is applied on arrival; sync: the pushes of one step from every worker are
    # summed and applied once, when the last of them arrived.
    mode: Literal["async", "sync"] = "async"

    @model_validator(mode="after")
    def _bounded_or_hashed(self) -> EmbeddingTableSpec:
        if (self.num_embeddings is None) == (self.capacity is None):
            raise ValueError("give exactly one of num_embeddings (a bounded table) and capacity (hashed ids)")
        if self.rows * self.dim > MAX_EMBEDDING_ELEMENTS:
            raise ValueError(
                f"{self.rows} rows x dim {self.dim} = {self.rows * self.dim} elements, more than the limit of "
                f"{MAX_EMBEDDING_ELEMENTS}"
            )
        return self

    @property
    def bounded(self) -> bool:
        return self.num_embeddings is not None

    @property
    def rows(self) -> int:
        """Most rows the table holds over all shards."""
        return self.num_embeddings if self.num_embeddings is not None else int(self.capacity or 0)


def unique_table_names(tables: list[EmbeddingTableSpec]) -> list[EmbeddingTableSpec]:
    """`tables` itself, once no two of them share a name (the first repeat is named)."""
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        if table.name in seen:
            raise ValueError(f"embeddings[{i}].name {table.name!r} repeats embeddings[{seen[table.name]}].name")
        seen[table.name] = i
    return tables
