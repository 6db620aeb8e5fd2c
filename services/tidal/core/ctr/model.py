"""``ctr_mlp``: one embedding per categorical field, concatenated with the dense features, an MLP
to one logit per output.

Input ``x`` is what the CTR sources serve: ``[id_0, ..., id_{F-1}, dense...]`` as float32 (ids
exact up to 2^24), ``F = len(fields)``. ``model.args``:

* ``fields`` (required): the table each categorical field reads, in column order; naming one
  table for several fields makes them share it (one pull per table per forward).
* ``dim`` (default 16): the row width of every table, or a mapping table -> width.
* ``hidden`` (default [64, 32]): the MLP's hidden widths; ``activation``: relu, gelu or tanh.
* ``dense_tables`` (default false): the tables become ordinary ``nn.Embedding`` parameters of the
  model (the dense baseline, served by the parameter shards like any weight) instead of
  `tidal.nn.ShardedEmbedding` layers; then ``table_rows`` (table -> rows) is required.
* ``table_init`` (dense tables only; default ``{distribution: normal, scale: 0.01}``): how the
  dense rows start, in the job spec's ``embeddings[].init`` terms (normal: std ``scale``;
  uniform: in [-scale, scale); zeros), so the baseline starts from the distribution the shards
  draw sharded rows from. The values differ: the shards hash (job seed, table, id), the dense
  table takes torch's generator seeded with the job seed (a model factory is not given the seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from tidal.core.embeddings.spec import RowInitSpec
from tidal.core.errors import InvalidArgumentError
from tidal.nn import ShardedEmbedding

__all__ = ["CtrMLP", "ctr_mlp"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class CtrMLP(nn.Module):
    def __init__(
        self, fields: list[str], dims: dict[str, int], num_dense: int, hidden: list[int], outputs: int,
        activation: str, table_rows: dict[str, int] | None, table_init: RowInitSpec | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_fields, self.num_dense = len(fields), num_dense
        self.table_names = list(dict.fromkeys(fields))
        # Per table (in first-use order), the input columns that read it.
        self.columns = [[i for i, f in enumerate(fields) if f == name] for name in self.table_names]
        self.table_rows = table_rows
        # The MLP first: its initial weights are then the same with sharded or dense tables.
        width = sum(dims[f] for f in fields) + num_dense
        mlp: list[nn.Module] = []
        for h in hidden:
            mlp += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        mlp.append(nn.Linear(width, outputs))
        self.mlp = nn.Sequential(*mlp)
        layers: list[nn.Module] = []
        for name in self.table_names:
            if table_rows is None:
                layers.append(ShardedEmbedding(name, dims[name]))
            else:
                emb = nn.Embedding(table_rows[name], dims[name])
                _init_rows(emb.weight, table_init or RowInitSpec())
                layers.append(emb)
        self.tables = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, : self.num_fields].to(torch.int64)
        parts = []
        for name, cols, table in zip(self.table_names, self.columns, self.tables, strict=True):
            table_ids = ids[:, cols]
            if self.table_rows is not None and len(table_ids):
                top, low = int(table_ids.max()), int(table_ids.min())
                if low < 0 or top >= self.table_rows[name]:
                    bad = low if low < 0 else top
                    raise ValueError(f"ctr_mlp: table {name!r} has {self.table_rows[name]} rows, got id {bad}")
            parts.append(table(table_ids).reshape(len(x), -1))  # one lookup per table
        parts.append(x[:, self.num_fields :])
        return self.mlp(torch.cat(parts, dim=1))


def _init_rows(weight: torch.Tensor, init: RowInitSpec) -> None:
    """A dense table's rows from the distribution a shard draws the same table's rows from."""
    with torch.no_grad():
        if init.distribution == "zeros" or init.scale == 0:
            weight.zero_()
        elif init.distribution == "uniform":
            weight.uniform_(-init.scale, init.scale)
        else:
            weight.normal_(0.0, init.scale)


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgumentError(f"model.args.fields must be a non-empty list of table names, got {value!r}")
    return value


def _per_table(key: str, value: Any, tables: list[str], default: int | None) -> dict[str, int]:
    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if value is None and default is not None:
        value = default
    if positive(value):
        return dict.fromkeys(tables, value)
    if isinstance(value, Mapping) and set(value) == set(tables) and all(positive(v) for v in value.values()):
        return {name: value[name] for name in tables}
    raise InvalidArgumentError(
        f"model.args.{key} must be a positive integer or a mapping of every table {tables} to one, got {value!r}"
    )


def ctr_mlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    fields: list[str] | None = None,
    dim: int | Mapping[str, int] = 16,
    hidden: list[int] | tuple[int, ...] = (64, 32),
    activation: str = "relu",
    dense_tables: bool = False,
    table_rows: Mapping[str, int] | None = None,
    table_init: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The ``ctr_mlp`` model (see the module docstring)."""
    names = _names(fields)
    tables = list(dict.fromkeys(names))
    if len(input_shape) != 1 or input_shape[0] < len(names):
        raise InvalidArgumentError(
            f"model.args.fields names {len(names)} categorical columns, but samples have shape {input_shape}"
        )
    dims = _per_table("dim", dim, tables, None)
    if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                                                        for h in hidden):  # fmt: skip
        raise InvalidArgumentError(f"model.args.hidden must be a list of positive integers, got {hidden!r}")
    if activation not in _ACTIVATIONS:
        raise InvalidArgumentError(f"model.args.activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if not isinstance(dense_tables, bool):
        raise InvalidArgumentError(f"model.args.dense_tables must be true or false, got {dense_tables!r}")
    rows = None
    if dense_tables:
        if table_rows is None:
            raise InvalidArgumentError("model.args.table_rows is required with dense_tables: rows of every table")
        rows = _per_table("table_rows", table_rows, tables, None)
    elif table_rows is not None:
        raise InvalidArgumentError("model.args.table_rows is for dense_tables: true (sharded tables live on shards)")
    init = None
    if table_init is not None:
        if not dense_tables:
            raise InvalidArgumentError("model.args.table_init is for dense_tables: true (sharded rows: spec init)")
        try:
            init = RowInitSpec.model_validate(table_init)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise InvalidArgumentError(f"model.args.table_init.{where}: {problem['msg']}") from None
    num_dense = input_shape[0] - len(names)
    return CtrMLP(names, dims, num_dense, list(hidden), num_classes, activation, rows, init)
