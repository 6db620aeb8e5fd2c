"""JobSpec.embeddings: the table block's bounds, and errors that name the table and field."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tidal.core.embeddings.names import check_names
from tidal.core.embeddings.spec import MAX_EMBEDDING_TABLES
from tidal.core.errors import InvalidArgumentError
from tidal.core.spec import parse_job_spec

GOOD = {"name": "items", "num_embeddings": 1000, "dim": 16}


def test_defaults_and_round_trip() -> None:
    spec = parse_job_spec({"embeddings": [GOOD, {"name": "users", "capacity": 50, "dim": 8, "mode": "sync"}]})
    items, users = spec.embeddings
    assert (items.mode, items.optimizer.name, items.init.distribution) == ("async", "sgd", "normal")
    assert items.bounded
    assert (users.bounded, users.rows, users.mode) == (False, 50, "sync")
    assert parse_job_spec(spec.to_json()) == spec
    assert spec.embedding("users") is users and spec.embedding("nope") is None
    assert parse_job_spec({}).embeddings == []


@pytest.mark.parametrize(
    ("tables", "needle"),
    [
        ([{"name": "t", "dim": 4}], "spec.embeddings[0]: give exactly one of num_embeddings"),
        ([{"name": "t", "dim": 4, "num_embeddings": 5, "capacity": 5}], "spec.embeddings[0]: give exactly one"),
        ([GOOD, {**GOOD, "name": "a.b"}], "spec.embeddings[1].name: String should match pattern"),
        ([GOOD, {**GOOD, "dim": 5000}], "spec.embeddings[1].dim: Input should be less than or equal to 4096"),
        ([GOOD, {**GOOD, "dim": 0}], "spec.embeddings[1].dim: Input should be greater than or equal to 1"),
        ([{**GOOD, "num_embeddings": 2**30, "dim": 4}], "spec.embeddings[0]: 1073741824 rows x dim 4"),
        ([{**GOOD, "num_embeddings": 0}], "spec.embeddings[0].num_embeddings: Input should be greater than"),
        ([GOOD, GOOD], "spec.embeddings: embeddings[1].name 'items' repeats embeddings[0].name"),
        ([{**GOOD, "optimizer": {"name": "adam", "lr": 0}}], "spec.embeddings[0].optimizer.lr: Input should be"),
        ([{**GOOD, "optimizer": {"name": "sgd", "betas": [0.5, 0.5]}}], "optimizer: betas apply to adam only"),
        ([{**GOOD, "optimizer": {"name": "adam", "betas": [0.5, 1.0]}}], "betas must lie in [0, 1)"),
        ([{**GOOD, "optimizer": {"name": "adam", "initial_accumulator_value": 1}}], "applies to adagrad only"),
        ([{**GOOD, "optimizer": {"name": "rmsprop"}}], "spec.embeddings[0].optimizer.name: Input should be"),
        ([{**GOOD, "init": {"distribution": "normal", "scale": -1}}], "spec.embeddings[0].init.scale"),
        ([{**GOOD, "mode": "ssp"}], "spec.embeddings[0].mode: Input should be 'async' or 'sync'"),
        ([{**GOOD, "extra": 1}], "spec.embeddings[0].extra: Extra inputs are not permitted"),
        ([{**GOOD, "name": f"t{i}"} for i in range(MAX_EMBEDDING_TABLES + 1)], "spec.embeddings: List should have"),
    ],
)
def test_errors_name_the_table_and_field(tables: list[dict[str, Any]], needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(needle)):
        parse_job_spec({"embeddings": tables})


def test_a_table_named_like_a_top_level_dense_parameter_is_refused() -> None:
    spec = parse_job_spec({"embeddings": [GOOD, {**GOOD, "name": "bias"}]})
    check_names(spec, ["encoder.0.weight", "encoder.0.bias", "items_scale"])
    with pytest.raises(InvalidArgumentError, match=re.escape("spec.embeddings[1].name: 'bias' is also the name")):
        check_names(spec, ["encoder.0.weight", "bias"])
