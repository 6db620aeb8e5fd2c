"""Token tables (core/tokens.py) and the model-module allow-list (core/model_source.py)."""

from __future__ import annotations

import json

import pytest

from tidal.core.authz import AuthRole
from tidal.core.errors import InvalidArgumentError, PermissionDeniedError
from tidal.core.model_source import allowed_prefixes, check_model_module
from tidal.core.tokens import TokenTable, new_token

A, W = "a" * 32, "w" * 40


def _table(*entries: dict[str, str]) -> TokenTable:
    return TokenTable.parse(json.dumps({"tokens": list(entries)}))


def test_lookup_finds_the_principal_and_nothing_else() -> None:
    table = _table({"token": A, "role": "admin", "identity": "alice"}, {"token": W, "role": "worker", "identity": "w0"})
    admin = table.lookup(A)
    assert admin is not None and admin.role is AuthRole.ADMIN and admin.identity == "alice" and admin.via == "token"
    worker = table.lookup(W)
    assert worker is not None and worker.role is AuthRole.WORKER
    for wrong in ("", A[:-1], A + "a", "b" * 32, "é" * 40, "\x00" * 32):
        assert table.lookup(wrong) is None


def test_yaml_is_accepted() -> None:
    table = TokenTable.parse(f"tokens:\n  - {{token: {A}, role: shard, identity: shard-0}}\n")
    assert table.lookup(A) is not None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "non-empty list"),
        ("[1, 2]", "non-empty list"),
        ("tokens: []", "non-empty list"),
        ("{: bad", "not JSON or YAML"),
        (json.dumps({"tokens": [{"token": "short", "role": "admin", "identity": "a"}]}), "tokens[0].token"),
        (json.dumps({"tokens": [{"token": A, "role": "root", "identity": "a"}]}), "tokens[0].role"),
        (json.dumps({"tokens": [{"token": A, "role": "admin", "identity": "a b"}]}), "tokens[0].identity"),
        (json.dumps({"tokens": [{"token": A, "role": "admin"}]}), "tokens[0]: needs exactly"),
        (
            json.dumps({"tokens": [{"token": A, "role": "admin", "identity": "a"}] * 2}),
            "tokens[1].token: the same token appears twice",
        ),
    ],
)
def test_bad_tables_name_the_field(text: str, where: str) -> None:
    with pytest.raises(InvalidArgumentError, match=where.replace("[", r"\[").replace("]", r"\]")):
        TokenTable.parse(text)


def test_new_tokens_are_long_and_distinct() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) >= 32 for t in tokens)


def test_model_modules_allow_list() -> None:
    assert allowed_prefixes({}) is None
    check_model_module("anything.at_all", allowed_prefixes({}))  # unset: unrestricted (today's default)
    env = allowed_prefixes({"TIDAL_MODEL_MODULES": "mymodels, lab.nets"})
    assert env == ("mymodels", "lab.nets")
    check_model_module("mymodels", env)
    check_model_module("mymodels.vision", env)
    check_model_module("lab.nets.resnet", env)
    for refused in ("os", "mymodelsevil", "lab", "lab.other"):
        with pytest.raises(PermissionDeniedError, match=r"model\.name"):
            check_model_module(refused, env)
    with pytest.raises(PermissionDeniedError, match="allowed: none"):
        check_model_module("mymodels", allowed_prefixes({"TIDAL_MODEL_MODULES": ""}))
