"""Typed reading of `dataset.args`: every error names the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tidal.core.errors import InvalidArgumentError


class Args:
    """The `dataset.args` of one data set; unknown keys are rejected up front."""

    def __init__(self, args: Mapping[str, Any], allowed: set[str], dataset: str) -> None:
        for key in sorted(args):
            if key not in allowed:
                accepted = ", ".join(sorted(allowed))
                raise InvalidArgumentError(
                    f"dataset.args.{key} is not an argument of dataset {dataset!r} (accepted: {accepted})"
                )
        self._args = dict(args)

    def has(self, key: str) -> bool:
        return key in self._args

    def int(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self._args.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise InvalidArgumentError(f"dataset.args.{key} must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    def float(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self._args.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not lo <= value <= hi:
            raise InvalidArgumentError(f"dataset.args.{key} must be a number in [{lo}, {hi}], got {value!r}")
        return float(value)

    def str(self, key: str, default: str | None) -> str | None:
        value = self._args.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidArgumentError(f"dataset.args.{key} must be a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._args.get(key, default)
        if value not in choices:
            raise InvalidArgumentError(f"dataset.args.{key} must be one of {list(choices)}, got {value!r}")
        return value

    def str_list(self, key: str) -> list[str] | None:
        value = self._args.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise InvalidArgumentError(f"dataset.args.{key} must be a non-empty list of names, got {value!r}")
        if len(set(value)) != len(value):
            raise InvalidArgumentError(f"dataset.args.{key} names a variable twice: {value!r}")
        return list(value)

    def int_list(self, key: str) -> list[int] | None:
        value = self._args.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InvalidArgumentError(f"dataset.args.{key} must be a list of integers, got {value!r}")
        return list(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._args.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise InvalidArgumentError(f"dataset.args.{key} must be a mapping of dimension names, got {value!r}")
        return dict(value)
