"""The worker's checks of a job's embedding tables against its model (worker/prepare.py
`check_tables`), and that the tables stay out of the dense parameters (the flat buffer)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tidal.core.errors import InvalidArgumentError
from tidal.core.flat import build_flat_model
from tidal.core.plan import job_dataset, job_model, model_layout
from tidal.core.spec import parse_job_spec
from tidal.nn import ShardedEmbedding
from tidal.worker.prepare import check_tables

TABLES = [
    {"name": "ads", "num_embeddings": 1000, "dim": 8},
    {"name": "sites", "num_embeddings": 100, "dim": 8},
]
SPEC: dict[str, Any] = {
    "model": {"name": "ctr_mlp", "args": {"fields": ["ads", "sites"], "dim": 8, "hidden": [16]}},
    "dataset": {"name": "ctr_synthetic", "args": {"vocab_sizes": [1000, 100], "num_samples": 64, "num_val": 16}},
    "embeddings": TABLES,
}


def _model(spec: dict[str, Any]) -> tuple[Any, nn.Module]:
    parsed = parse_job_spec(spec)
    return parsed, job_model(parsed, job_dataset(parsed, model_modules=None))


def test_matching_tables_pass_and_stay_out_of_the_flat_buffer() -> None:
    spec, model = _model(SPEC)
    check_tables(spec, model)
    names = [name for name, _ in model.named_parameters()]
    assert names and all(name.startswith("mlp.") for name in names), names
    flat = build_flat_model(model, torch.device("cpu"))
    assert flat.params.numel() == sum(p.numel() for p in model.parameters()) == model_layout(model).parameters
    assert not any(isinstance(p, ShardedEmbedding) for p in model.parameters())


def test_a_width_mismatch_names_the_table_and_both_widths() -> None:
    spec, model = _model({**SPEC, "embeddings": [{**TABLES[0], "dim": 4}, TABLES[1]]})
    with pytest.raises(InvalidArgumentError) as caught:
        check_tables(spec, model)
    assert str(caught.value) == (
        "spec.embeddings[0].dim: the model reads embedding table 'ads' with dim 8, the job spec declares dim 4"
    )


@pytest.mark.parametrize(("tables", "missing"), [(TABLES[:1], "sites"), ([], "ads")])
def test_a_table_the_spec_lacks(tables: list[dict[str, Any]], missing: str) -> None:
    spec, model = _model({**SPEC, "embeddings": tables})
    with pytest.raises(InvalidArgumentError, match=rf"reads embedding table '{missing}' \(dim 8\), which the job spec"):
        check_tables(spec, model)


def test_a_spec_table_the_model_does_not_read_is_allowed() -> None:
    spec, model = _model({**SPEC, "embeddings": [*TABLES, {"name": "unused", "capacity": 10, "dim": 2}]})
    check_tables(spec, model)


def test_fp16_is_refused_with_tables() -> None:
    spec, model = _model({**SPEC, "precision": "fp16"})
    with pytest.raises(InvalidArgumentError, match=r"^precision: fp16 is not supported with embedding tables"):
        check_tables(spec, model)


def test_a_table_named_like_a_top_level_dense_parameter() -> None:
    class Clash(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ads = nn.Parameter(torch.zeros(2))
            self.emb = ShardedEmbedding("sites", 8)

    spec, _ = _model(SPEC)
    with pytest.raises(InvalidArgumentError, match=r"^spec.embeddings\[0\].name: 'ads' is also the name"):
        check_tables(spec, Clash())


@pytest.mark.parametrize(
    ("init", "check"),
    [
        (None, lambda w: abs(float(w.std()) - 0.01) < 0.002),
        ({"distribution": "uniform", "scale": 0.5}, lambda w: float(w.abs().max()) <= 0.5 < 4 * float(w.std())),
        ({"distribution": "zeros"}, lambda w: not w.any()),
    ],
)
def test_the_dense_baseline_starts_from_the_spec_init_distribution(init: Any, check: Any) -> None:
    args = {"fields": ["ads"], "dim": 8, "hidden": [4], "dense_tables": True, "table_rows": {"ads": 1000}}
    if init is not None:
        args["table_init"] = init
    _, model = _model({**SPEC, "model": {"name": "ctr_mlp", "args": args}, "embeddings": []})
    weight = dict(model.named_parameters())["tables.0.weight"].detach()
    assert check(weight), weight


def test_table_init_is_checked() -> None:
    args = {"fields": ["ads"], "dense_tables": True, "table_rows": {"ads": 10}, "table_init": {"scale": -1}}
    with pytest.raises(InvalidArgumentError, match=r"^model.args.table_init.scale: Input should be greater"):
        _model({**SPEC, "model": {"name": "ctr_mlp", "args": args}, "embeddings": []})
