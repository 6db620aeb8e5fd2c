"""Job specs built in Python: `JobSpec(model={...}, mode="async", steps=200)`.

The same pydantic model as a YAML spec (core/spec.py), with one difference for scripts: a
bad field raises InvalidArgumentError naming it (``spec.optimizer.lr: ...``), the error every
other tidal entry point raises, instead of pydantic's ValidationError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tidal.client import load_spec_file
from tidal.core import spec as core_spec
from tidal.core.errors import InvalidArgumentError


class JobSpec(core_spec.JobSpec):
    """A job, from keyword arguments; nested parts as models (`ModelSpec(...)`) or plain dicts."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidArgumentError(core_spec.format_validation_error(exc)) from None

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with `changes` applied and validated again (pydantic's `model_copy(update=...)`
        would skip validation, and with it the mode's and the fields' checks)."""
        return type(self)(**{**self.model_dump(exclude_unset=True), **changes})

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """A spec from a YAML or JSON file, checked as `tidal submit` checks it."""
        data = load_spec_file(Path(path))
        core_spec.parse_job_spec(data)  # size, depth and field checks, with their messages
        return cls(**data)


def spec_payload(spec: core_spec.JobSpec | Mapping[str, Any]) -> dict[str, Any]:
    """What to submit: the fields a JobSpec was given (the coordinator fills in the same
    defaults), or a mapping as it is once it passed the same validation locally."""
    if isinstance(spec, core_spec.JobSpec):
        return spec.model_dump(mode="json", exclude_unset=True)  # as TidalClient.submit sends one
    if not isinstance(spec, Mapping):
        raise InvalidArgumentError(f"spec: expected a JobSpec or a mapping, got {type(spec).__name__}")
    payload = dict(spec)
    core_spec.parse_job_spec(payload)
    return payload
