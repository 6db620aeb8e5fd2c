"""Typed reading of a built-in source's ``dataset.args``: the data sets' reader plus paths."""

from __future__ import annotations

from typing import Any

from tidal.core.climate.args import Args
from tidal.core.errors import InvalidArgumentError

__all__ = ["SourceArgs"]


class SourceArgs(Args):
    def path(self, key: str) -> str | None:
        """A file path given as a string, or None when absent (existence is the reader's check)."""
        value: Any = self._args.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidArgumentError(f"dataset.args.{key} must be a file path, got {value!r}")
        return value

    def scalar(self, key: str, default: str | int | float | bool) -> str | int | float | bool:
        """A string, number or bool (a value a column may hold)."""
        value: Any = self._args.get(key, default)
        if not isinstance(value, (str, int, float, bool)):
            raise InvalidArgumentError(f"dataset.args.{key} must be a string or a number, got {value!r}")
        return value
