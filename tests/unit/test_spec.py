"""Unit tests for tidal.core.spec.parse_job_spec: defaults, inputs and field-naming errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

# isort: split
from tidal.core.errors import InvalidArgumentError
from tidal.core.spec import JobSpec, Mode, parse_job_spec


def test_defaults_are_valid_and_documented_values() -> None:
    spec = parse_job_spec({})
    assert spec == JobSpec()
    assert spec.mode is Mode.SYNC
    assert spec.optimizer.name == "sgd"
    assert spec.optimizer.lr > 0
    assert spec.num_workers >= 1
    assert spec.num_shards >= 1
    assert spec.stragglers == []
    assert spec.target_version == spec.steps


@pytest.mark.parametrize("text", ["{}", b"{}", " {\n} "])
def test_json_text_and_bytes_are_accepted(text: str | bytes) -> None:
    assert parse_job_spec(text) == JobSpec()


def test_json_text_and_dict_give_the_same_spec() -> None:
    data = {
        "name": "exp-1.a_b",
        "mode": "async",
        "model": {"name": "mlp", "args": {"hidden": [8]}},
        "dataset": {"name": "synthetic", "args": {"n": 10}},
        "optimizer": {"name": "adam", "lr": 0.001, "betas": [0.8, 0.9]},
        "batch_size": 16,
        "steps": 7,
        "num_workers": 3,
        "num_shards": 2,
        "seed": 11,
        "stragglers": [{"rank": 2, "slowdown": 3.0, "delay": {"distribution": "exponential", "mean_s": 0.1}}],
    }
    from_dict = parse_job_spec(data)
    assert parse_job_spec(json.dumps(data)) == from_dict
    assert from_dict.mode is Mode.ASYNC
    assert from_dict.optimizer.betas == (0.8, 0.9)
    assert from_dict.model.args == {"hidden": [8]}
    assert from_dict.straggler(2) is not None
    assert from_dict.straggler(2).slowdown == 3.0
    assert from_dict.straggler(0) is None


def test_to_json_round_trips() -> None:
    spec = parse_job_spec({"mode": "async", "optimizer": {"name": "sgd", "momentum": 0.9}, "stragglers": [{"rank": 1}]})
    assert parse_job_spec(spec.to_json()) == spec


def test_spec_is_frozen() -> None:
    spec = parse_job_spec({})
    with pytest.raises(ValidationError):
        spec.steps = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mode", "steps", "workers", "target"),
    [("sync", 100, 4, 100), ("async", 100, 4, 400), ("sync", 1, 1, 1), ("async", 3, 1, 3), ("async", 5, 7, 35)],
)
def test_target_version(mode: str, steps: int, workers: int, target: int) -> None:
    assert parse_job_spec({"mode": mode, "steps": steps, "num_workers": workers}).target_version == target


# --- errors name the field ------------------------------------------------------------

FIELD_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("lr zero", {"optimizer": {"lr": 0}}, r"spec\.optimizer\.lr"),
    ("lr negative", {"optimizer": {"lr": -1}}, r"spec\.optimizer\.lr"),
    ("lr too big", {"optimizer": {"lr": 1000}}, r"spec\.optimizer\.lr"),
    ("lr not a number", {"optimizer": {"lr": "fast"}}, r"spec\.optimizer\.lr"),
    ("unknown optimizer", {"optimizer": {"name": "lbfgs"}}, r"spec\.optimizer\.name"),
    ("momentum 1", {"optimizer": {"momentum": 1.0}}, r"spec\.optimizer\.momentum"),
    ("eps zero", {"optimizer": {"eps": 0}}, r"spec\.optimizer\.eps"),
    ("mode", {"mode": "semi-sync"}, r"spec\.mode"),
    ("batch size", {"batch_size": 0}, r"spec\.batch_size"),
    ("steps", {"steps": 0}, r"spec\.steps"),
    ("workers", {"num_workers": 0}, r"spec\.num_workers"),
    ("shards", {"num_shards": 0}, r"spec\.num_shards"),
    ("seed", {"seed": -1}, r"spec\.seed"),
    ("name", {"name": "has space"}, r"spec\.name"),
    ("name empty", {"name": ""}, r"spec\.name"),
    ("timeout", {"step_timeout_s": 0}, r"spec\.step_timeout_s"),
    ("stragglers not a list", {"stragglers": 3}, r"spec\.stragglers"),
    ("straggler rank negative", {"stragglers": [{"rank": -1}]}, r"spec\.stragglers\.0\.rank"),
    ("straggler rank missing", {"stragglers": [{}]}, r"spec\.stragglers\.0\.rank"),
    ("straggler slowdown", {"stragglers": [{"rank": 0, "slowdown": 0.5}]}, r"spec\.stragglers\.0\.slowdown"),
    (
        "straggler distribution",
        {"stragglers": [{"rank": 0, "delay": {"distribution": "pareto"}}]},
        r"spec\.stragglers\.0\.delay\.distribution",
    ),
    ("unknown top-level field", {"epochs": 3}, r"spec\.epochs: Extra inputs"),
    ("unknown nested field", {"optimizer": {"lr": 0.1, "rho": 0.9}}, r"spec\.optimizer\.rho"),
    ("model not an object", {"model": "mlp"}, r"spec\.model"),
]


@pytest.mark.parametrize(("data", "needle"), [c[1:] for c in FIELD_ERRORS], ids=[c[0] for c in FIELD_ERRORS])
def test_error_names_the_field_path(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        parse_job_spec(data)
    # The same through JSON text.
    with pytest.raises(InvalidArgumentError, match=needle):
        parse_job_spec(json.dumps(data))


def test_every_offending_field_is_named() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_job_spec({"mode": "x", "optimizer": {"lr": 0}, "steps": -1})
    message = str(info.value)
    for path in ("spec.mode", "spec.optimizer.lr", "spec.steps"):
        assert path in message


@pytest.mark.parametrize("text", ["[]", "3", '"spec"', "null", "true", b"[1, 2]"])
def test_non_object_json_is_rejected(text: str | bytes) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^spec: expected a JSON object"):
        parse_job_spec(text)


@pytest.mark.parametrize("data", [[], None, 3, ("a",)])
def test_non_mapping_python_input_is_rejected(data: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^spec: expected a JSON object"):
        parse_job_spec(data)


@pytest.mark.parametrize("text", ["", "{", "{'mode': 'sync'}", '{"mode": }', b"{", "{} {}"])
def test_invalid_json_is_rejected(text: str | bytes) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^spec: not valid JSON"):
        parse_job_spec(text)


@pytest.mark.parametrize("text", [b"\xff", b'{"name": "\xe9"}'])
def test_bytes_that_are_not_utf8_are_rejected_as_invalid_json(text: bytes) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^spec: not valid JSON"):
        parse_job_spec(text)


# --- cross-field rules -----------------------------------------------------------------


@pytest.mark.parametrize(("rank", "workers"), [(2, 2), (5, 2), (1, 1)])
def test_straggler_rank_at_or_past_num_workers_is_rejected(rank: int, workers: int) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"stragglers: rank {rank} >= num_workers {workers}"):
        parse_job_spec({"num_workers": workers, "stragglers": [{"rank": rank}]})


def test_straggler_rank_below_num_workers_is_accepted() -> None:
    spec = parse_job_spec({"num_workers": 3, "stragglers": [{"rank": 0}, {"rank": 2, "slowdown": 2}]})
    assert [s.rank for s in spec.stragglers] == [0, 2]


def test_straggler_rank_error_is_reported_at_the_stragglers_path() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^spec\.stragglers: rank 2 >= num_workers 2$"):
        parse_job_spec({"num_workers": 2, "stragglers": [{"rank": 2}]})


def test_duplicate_straggler_ranks_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="stragglers: each rank may appear once"):
        parse_job_spec({"num_workers": 3, "stragglers": [{"rank": 1}, {"rank": 1, "slowdown": 2}]})


def test_nesterov_without_momentum_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.optimizer.*nesterov needs momentum"):
        parse_job_spec({"optimizer": {"name": "sgd", "nesterov": True}})
    assert parse_job_spec({"optimizer": {"name": "sgd", "nesterov": True, "momentum": 0.9}}).optimizer.nesterov


@pytest.mark.parametrize("name", ["adam", "adamw", "adagrad"])
@pytest.mark.parametrize("extra", [{"momentum": 0.9}, {"nesterov": True, "momentum": 0.9}])
def test_momentum_for_non_sgd_optimizers_is_rejected(name: str, extra: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"spec\.optimizer.*sgd only, not {name}"):
        parse_job_spec({"optimizer": {"name": name, **extra}})


@pytest.mark.parametrize("betas", [[1.0, 0.999], [0.9, -0.1], [0.9, 1.5]])
def test_betas_outside_unit_interval_are_rejected(betas: list[float]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.optimizer.*betas"):
        parse_job_spec({"optimizer": {"name": "adam", "betas": betas}})


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("field", ["lr", "weight_decay", "eps"])
def test_non_finite_optimizer_hyperparameters_are_rejected(field: str, value: float) -> None:
    # weight_decay=inf would turn every parameter into inf/NaN on the first step.
    with pytest.raises(InvalidArgumentError, match=rf"spec\.optimizer\.{field}"):
        parse_job_spec({"optimizer": {field: value}})


@pytest.mark.parametrize("text", ['{"step_timeout_s": Infinity}', '{"optimizer": {"weight_decay": NaN}}'])
def test_non_finite_json_numbers_are_rejected(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.(step_timeout_s|optimizer\.weight_decay)"):
        parse_job_spec(text)
