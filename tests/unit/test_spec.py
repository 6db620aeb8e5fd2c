"""Unit tests for tidal.core.spec.parse_job_spec: defaults, inputs and field-naming errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

# isort: split
from tidal.core.errors import InvalidArgumentError
from tidal.core.json_depth import json_depth_exceeds
from tidal.core.spec import (
    APPLIES_TO,
    MAX_SPEC_BYTES,
    MAX_SPEC_DEPTH,
    ConsistencySpec,
    JobSpec,
    Mode,
    parse_job_spec,
)


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
    [
        ("sync", 100, 4, 100),
        ("async", 100, 4, 400),
        ("sync", 1, 1, 1),
        ("async", 3, 1, 3),
        ("async", 5, 7, 35),
        # SSP: one version per clock, like sync.
        ("ssp", 100, 4, 100),
        ("ssp", 1, 1, 1),
        # local_sgd: one version per outer round (default sync_every 8), rounded up.
        ("local_sgd", 100, 4, 13),
        ("local_sgd", 96, 4, 12),
        ("local_sgd", 1, 2, 1),
    ],
)
def test_target_version(mode: str, steps: int, workers: int, target: int) -> None:
    assert parse_job_spec({"mode": mode, "steps": steps, "num_workers": workers}).target_version == target


@pytest.mark.parametrize(
    ("steps", "sync_every", "rounds"), [(10, 1, 10), (10, 3, 4), (9, 3, 3), (1, 100, 1), (100, 100, 1), (101, 100, 2)]
)
def test_local_sgd_target_version_is_the_number_of_rounds_rounded_up(steps: int, sync_every: int, rounds: int) -> None:
    spec = parse_job_spec({"mode": "local_sgd", "steps": steps, "consistency": {"sync_every": sync_every}})
    assert spec.target_version == rounds


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
    ("straggler rank negative", {"stragglers": [{"rank": -1}]}, r"spec\.stragglers\[0\]\.rank"),
    ("straggler rank missing", {"stragglers": [{}]}, r"spec\.stragglers\[0\]\.rank"),
    ("straggler slowdown", {"stragglers": [{"rank": 0, "slowdown": 0.5}]}, r"spec\.stragglers\[0\]\.slowdown"),
    (
        "straggler distribution",
        {"stragglers": [{"rank": 0, "delay": {"distribution": "pareto"}}]},
        r"spec\.stragglers\[0\]\.delay\.distribution",
    ),
    ("unknown top-level field", {"epochs": 3}, r"spec\.epochs: Extra inputs"),
    ("unknown nested field", {"optimizer": {"lr": 0.1, "rho": 0.9}}, r"spec\.optimizer\.rho"),
    ("model not an object", {"model": "mlp"}, r"spec\.model"),
    # consistency options, each in its own mode (so only the range is wrong)
    ("backup negative", {"consistency": {"backup_workers": -1}}, r"spec\.consistency\.backup_workers"),
    ("bound negative", {"mode": "ssp", "consistency": {"staleness_bound": -1}}, r"spec\.consistency\.staleness_bound"),
    ("bound huge", {"mode": "ssp", "consistency": {"staleness_bound": 10**6}}, r"spec\.consistency\.staleness_bound"),
    ("staleness lr", {"mode": "async", "consistency": {"staleness_lr": "sqrt"}}, r"spec\.consistency\.staleness_lr"),
    ("max staleness", {"mode": "async", "consistency": {"max_staleness": -1}}, r"spec\.consistency\.max_staleness"),
    ("compensation", {"mode": "async", "consistency": {"compensation": "dc"}}, r"spec\.consistency\.compensation"),
    ("dc lambda", {"mode": "async", "consistency": {"dc_lambda": -0.1}}, r"spec\.consistency\.dc_lambda"),
    ("sync every", {"mode": "local_sgd", "consistency": {"sync_every": 0}}, r"spec\.consistency\.sync_every"),
    ("outer lr", {"mode": "local_sgd", "consistency": {"outer_lr": 0}}, r"spec\.consistency\.outer_lr"),
    (
        "outer momentum",
        {"mode": "local_sgd", "consistency": {"outer_momentum": 1}},
        r"spec\.consistency\.outer_momentum",
    ),
    ("unknown option", {"consistency": {"gossip": True}}, r"spec\.consistency\.gossip: Extra inputs"),
    # compression
    ("codec", {"compression": {"codec": "gzip"}}, r"spec\.compression\.codec"),
    ("codec case", {"compression": {"codec": "FP16"}}, r"spec\.compression\.codec"),
    ("codec not a string", {"compression": {"codec": 16}}, r"spec\.compression\.codec"),
    ("compression unknown field", {"compression": {"level": 3}}, r"spec\.compression\.level"),
    # straggler pauses and kills
    ("pause every negative", {"stragglers": [{"rank": 0, "pause_every": -1}]}, r"spec\.stragglers\[0\]\.pause_every"),
    ("pause every fractional", {"stragglers": [{"rank": 0, "pause_every": 2.5}]}, r"stragglers\[0\]\.pause_every"),
    ("pause s negative", {"stragglers": [{"rank": 0, "pause_s": -1}]}, r"spec\.stragglers\[0\]\.pause_s"),
    ("pause s too long", {"stragglers": [{"rank": 0, "pause_s": 3601}]}, r"spec\.stragglers\[0\]\.pause_s"),
    ("pause s infinite", {"stragglers": [{"rank": 0, "pause_s": float("inf")}]}, r"spec\.stragglers\[0\]\.pause_s"),
    ("kill negative", {"stragglers": [{"rank": 0, "kill_at_step": -1}]}, r"spec\.stragglers\[0\]\.kill_at_step"),
    ("kill not a step", {"stragglers": [{"rank": 0, "kill_at_step": "soon"}]}, r"spec\.stragglers\[0\]\.kill_at_step"),
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


# --- consistency options belong to their mode ---------------------------------------------

# Each option, the one mode it applies to, and a value other than its default. Written out
# here (not read from APPLIES_TO) so that moving an option to another mode is a visible change.
CONSISTENCY_OPTIONS: list[tuple[str, str, Any]] = [
    ("backup_workers", "sync", 1),
    ("staleness_bound", "ssp", 5),
    ("staleness_lr", "async", "inverse"),
    ("max_staleness", "async", 3),
    ("compensation", "async", "dc_asgd"),
    ("dc_lambda", "async", 0.5),
    ("sync_every", "local_sgd", 4),
    ("outer_lr", "local_sgd", 0.5),
    ("outer_momentum", "local_sgd", 0.5),
    ("outer_nesterov", "local_sgd", False),
    ("auto_max_backup_workers", "auto", 1),
    ("auto_max_staleness_bound", "auto", 2),
    ("auto_window", "auto", 4),
]
MODES = [m.value for m in Mode]


def test_every_consistency_option_is_listed_with_its_mode() -> None:
    assert {name for name, _, _ in CONSISTENCY_OPTIONS} == set(ConsistencySpec.model_fields)
    assert {name: mode for name, mode, _ in CONSISTENCY_OPTIONS} == {k: v.value for k, v in APPLIES_TO.items()}
    defaults = ConsistencySpec()
    assert all(getattr(defaults, name) != value for name, _, value in CONSISTENCY_OPTIONS)


WRONG_MODE_CASES = [
    (name, right, value, mode) for name, right, value in CONSISTENCY_OPTIONS for mode in MODES if mode != right
]


@pytest.mark.parametrize(
    ("name", "right", "value", "mode"),
    WRONG_MODE_CASES,
    ids=[f"{name}-in-{mode}" for name, _, _, mode in WRONG_MODE_CASES],
)
def test_consistency_option_set_for_another_mode_is_rejected(name: str, right: str, value: Any, mode: str) -> None:
    data = {"mode": mode, "num_workers": 3, "consistency": {name: value}}
    needle = rf"^spec\.consistency: {name} applies to mode {right}, not {mode}$"
    with pytest.raises(InvalidArgumentError, match=needle):
        parse_job_spec(data)
    with pytest.raises(InvalidArgumentError, match=needle):
        parse_job_spec(json.dumps(data))


@pytest.mark.parametrize(("name", "right", "value"), CONSISTENCY_OPTIONS, ids=[c[0] for c in CONSISTENCY_OPTIONS])
def test_consistency_option_in_its_own_mode_is_accepted(name: str, right: str, value: Any) -> None:
    spec = parse_job_spec({"mode": right, "num_workers": 3, "consistency": {name: value}})
    assert getattr(spec.consistency, name) == value


@pytest.mark.parametrize(("name", "right", "value"), CONSISTENCY_OPTIONS, ids=[c[0] for c in CONSISTENCY_OPTIONS])
def test_consistency_option_without_a_mode_is_checked_against_the_default_sync(
    name: str, right: str, value: Any
) -> None:
    data = {"num_workers": 3, "consistency": {name: value}}
    if right == "sync":
        assert getattr(parse_job_spec(data).consistency, name) == value
    else:
        with pytest.raises(InvalidArgumentError, match=rf"spec\.consistency: {name} applies to mode {right}, not sync"):
            parse_job_spec(data)


def test_only_the_option_of_another_mode_is_named() -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.consistency: ") as info:
        parse_job_spec({"mode": "ssp", "consistency": {"staleness_bound": 4, "backup_workers": 1}})
    assert "backup_workers applies to mode sync, not ssp" in str(info.value)
    assert "staleness_bound applies" not in str(info.value)


@pytest.mark.parametrize("mode", MODES)
def test_default_consistency_values_are_allowed_in_any_mode(mode: str) -> None:
    everything = ConsistencySpec().model_dump()
    assert set(everything) == set(ConsistencySpec.model_fields)
    spec = parse_job_spec({"mode": mode, "consistency": everything})
    assert spec.consistency == ConsistencySpec()
    for name, value in everything.items():
        assert parse_job_spec({"mode": mode, "consistency": {name: value}}).consistency == ConsistencySpec()


@pytest.mark.parametrize(("backups", "workers"), [(1, 2), (2, 3), (0, 1), (7, 8)])
def test_backup_workers_below_num_workers_are_accepted(backups: int, workers: int) -> None:
    spec = parse_job_spec({"mode": "sync", "num_workers": workers, "consistency": {"backup_workers": backups}})
    assert spec.consistency.backup_workers == backups


@pytest.mark.parametrize(("backups", "workers"), [(2, 2), (3, 2), (1, 1), (100, 4)])
def test_backup_workers_at_or_past_num_workers_are_rejected(backups: int, workers: int) -> None:
    data = {"mode": "sync", "num_workers": workers, "consistency": {"backup_workers": backups}}
    with pytest.raises(InvalidArgumentError, match=rf"spec.*backup_workers {backups} must be < num_workers {workers}"):
        parse_job_spec(data)


# --- compression and straggler injection --------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16"])
@pytest.mark.parametrize("mode", MODES)
def test_compression_codecs_are_accepted_in_every_mode(codec: str, mode: str) -> None:
    assert parse_job_spec({"mode": mode, "compression": {"codec": codec}}).compression.codec == codec


def test_compression_defaults_to_none() -> None:
    assert parse_job_spec({}).compression.codec == "none"


def test_straggler_pause_and_kill_defaults_never_fire() -> None:
    straggler = parse_job_spec({"stragglers": [{"rank": 0}]}).straggler(0)
    assert straggler is not None
    assert straggler.pause_every == 0
    assert straggler.pause_s == 0.0
    assert straggler.kill_at_step is None


@pytest.mark.parametrize(
    "fields",
    [
        {"pause_every": 5, "pause_s": 0.5},
        {"pause_every": 1, "pause_s": 3600},
        {"kill_at_step": 0},
        {"kill_at_step": 10, "slowdown": 2.0, "pause_every": 3, "pause_s": 0.01},
    ],
)
def test_straggler_pause_and_kill_fields_are_accepted(fields: dict[str, Any]) -> None:
    straggler = parse_job_spec({"num_workers": 2, "stragglers": [{"rank": 1, **fields}]}).straggler(1)
    assert straggler is not None
    for name, value in fields.items():
        assert getattr(straggler, name) == value


# --- round trip ---------------------------------------------------------------------------

FULL_CONSISTENCY = {
    "sync": {"backup_workers": 1},
    "ssp": {"staleness_bound": 3},
    "async": {"staleness_lr": "inverse", "max_staleness": 4, "compensation": "dc_asgd", "dc_lambda": 0.1},
    "local_sgd": {"sync_every": 5, "outer_lr": 0.5, "outer_momentum": 0.8, "outer_nesterov": False},
    "auto": {"auto_max_backup_workers": 1, "auto_max_staleness_bound": 3, "auto_window": 6},
}


@pytest.mark.parametrize("mode", MODES)
def test_full_spec_round_trips_through_to_json_in_every_mode(mode: str) -> None:
    spec = parse_job_spec(
        {
            "name": f"full-{mode}",
            "mode": mode,
            "model": {"name": "mlp", "args": {"hidden": [8, 4]}},
            "dataset": {"name": "synthetic", "args": {"n": 64}},
            "consistency": FULL_CONSISTENCY[mode],
            "compression": {"codec": "bf16"},
            "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.001},
            "batch_size": 16,
            "steps": 21,
            "num_workers": 3,
            "num_shards": 2,
            "seed": 5,
            "eval_every": 4,
            "step_timeout_s": 30,
            "stragglers": [
                {"rank": 0, "slowdown": 2.5, "delay": {"distribution": "lognormal", "mean_s": 0.01, "sigma": 0.5}},
                {"rank": 2, "pause_every": 3, "pause_s": 0.2, "kill_at_step": 7},
            ],
        }
    )
    text = spec.to_json()
    again = parse_job_spec(text)
    assert again == spec
    assert again.to_json() == text
    assert again.target_version == spec.target_version
    # Every option reached the spec (none was dropped as a default).
    for name, value in FULL_CONSISTENCY[mode].items():
        assert getattr(again.consistency, name) == value
    # The dumped JSON carries every consistency option, defaults of other modes included.
    assert set(json.loads(text)["consistency"]) == set(ConsistencySpec.model_fields)


@pytest.mark.parametrize("mode", MODES)
def test_default_spec_round_trips_in_every_mode(mode: str) -> None:
    spec = parse_job_spec({"mode": mode})
    assert parse_job_spec(spec.to_json()) == spec
    assert parse_job_spec(json.loads(spec.to_json())) == spec


# --- auto -----------------------------------------------------------------------------------


def test_auto_backup_cap_defaults_to_a_minority_of_the_workers() -> None:
    assert [parse_job_spec({"mode": "auto", "num_workers": n}).max_auto_backups for n in (1, 2, 3, 4, 5)] == [
        0,
        0,
        1,
        1,
        2,
    ]
    spec = parse_job_spec({"mode": "auto", "num_workers": 4, "consistency": {"auto_max_backup_workers": 3}})
    assert spec.max_auto_backups == 3


def test_auto_backup_cap_must_leave_a_worker() -> None:
    with pytest.raises(InvalidArgumentError, match=r"auto_max_backup_workers 2 must be < num_workers 2"):
        parse_job_spec({"mode": "auto", "num_workers": 2, "consistency": {"auto_max_backup_workers": 2}})


def test_auto_trains_the_same_number_of_versions_as_sync() -> None:
    assert parse_job_spec({"mode": "auto", "steps": 40, "num_workers": 3}).target_version == 40


# --- size and nesting bounds ----------------------------------------------------------------


def _nested(depth: int) -> str:
    """A spec whose model.args nest `depth` levels in all (the spec object itself is one)."""
    inner = "[" * (depth - 3) + "]" * (depth - 3)
    return '{"model": {"args": {"x": ' + inner + "}}}"


def test_spec_nested_to_the_limit_parses_and_one_deeper_is_refused() -> None:
    parse_job_spec(_nested(MAX_SPEC_DEPTH))  # the args are not checked here: only the nesting
    with pytest.raises(InvalidArgumentError, match=rf"spec: nested deeper than {MAX_SPEC_DEPTH}"):
        parse_job_spec(_nested(MAX_SPEC_DEPTH + 1))


@pytest.mark.parametrize(
    "text",
    ["[" * 5000 + "]" * 5000, '{"a": ' * 5000 + "1" + "}" * 5000, "[" * 5000, '{"model": {"args": ' * 3000],
    ids=["arrays", "objects", "unclosed arrays", "unclosed objects"],
)
def test_deeply_nested_json_is_an_invalid_argument_not_a_recursion_error(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^spec: "):
        parse_job_spec(text)
    with pytest.raises(InvalidArgumentError, match=r"^spec: "):
        parse_job_spec(text.encode())


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    name = "[{" * 100 + '\\"'
    assert not json_depth_exceeds(json.dumps({"name": name, "args": {}}), 2)
    with pytest.raises(InvalidArgumentError, match=r"spec\.name"):  # refused for its pattern, not its depth
        parse_job_spec(json.dumps({"name": name}))


@pytest.mark.parametrize(("text", "limit", "deeper"), [("[]", 1, False), ("[[]]", 1, True), ("{}", 0, True),
                                                       ('[{"a": [1]}, []]', 3, False), ('[{"a": [1]}, []]', 2, True),
                                                       ("[[]", 1, False), ("[}", 1, False)])  # fmt: skip
def test_json_depth_exceeds(text: str, limit: int, deeper: bool) -> None:
    assert json_depth_exceeds(text, limit) is deeper


def test_deeply_nested_mapping_is_refused_without_recursion() -> None:
    args: dict[str, Any] = {}
    inner = args
    for _ in range(5000):
        inner["x"] = inner = {}
    with pytest.raises(InvalidArgumentError, match=rf"spec: nested deeper than {MAX_SPEC_DEPTH}"):
        parse_job_spec({"model": {"name": "mlp", "args": args}})


def test_spec_over_the_byte_limit_is_refused_before_parsing() -> None:
    padding = " " * MAX_SPEC_BYTES
    with pytest.raises(InvalidArgumentError, match=rf"spec: {MAX_SPEC_BYTES + 2} bytes, more than the limit"):
        parse_job_spec("{" + padding + "}")
    # Counted in UTF-8 bytes, not characters.
    wide = '{"name": "' + "é" * (MAX_SPEC_BYTES // 2) + '"}'
    with pytest.raises(InvalidArgumentError, match=r"more than the limit"):
        parse_job_spec(wide)


def test_integer_past_pythons_digit_limit_is_invalid_json() -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec: not valid JSON"):
        parse_job_spec('{"seed": ' + "9" * 5000 + "}")


def test_the_built_in_names_the_coordinator_checks_are_the_registries() -> None:
    # core/builtin_names.py knows them without torch; the registries are what the workers build from.
    from tidal.core.builtin_names import BUILT_IN_DATASETS, BUILT_IN_MODELS
    from tidal.core.datasets import DATASETS, PARTITIONED
    from tidal.core.models import MODELS
    from tidal.core.sources.registry import SOURCES

    assert set(BUILT_IN_MODELS) == set(MODELS)
    assert set(BUILT_IN_DATASETS) == {*DATASETS, *PARTITIONED, *SOURCES}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {"name": "transformer-xxl"}}, "spec.model.name"),
        ({"model": {"name": "pkg.mod:"}}, "spec.model.name"),
        ({"dataset": {"name": "nope"}}, "spec.dataset.name"),
        ({"dataset": {"name": "a b:c"}}, "spec.dataset.name"),
    ],
)
def test_a_name_that_is_neither_built_in_nor_user_code_is_refused_at_submit(spec: dict, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{field}: must be one of"):
        parse_job_spec(spec)
    parse_job_spec({"model": {"name": "team.models:net"}, "dataset": {"name": "team.data:rows"}})
