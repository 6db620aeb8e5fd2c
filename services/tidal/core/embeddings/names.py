"""Table names against the model's dense parameter names.

A table's name has no dots (core/embeddings/spec.py), and dense names are module paths, dotted for every
parameter of a submodule: the two can only meet when a model has a top-level parameter of the table's
name. The worker side calls `check_names` with
the model's parameter names when it builds the model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tidal.core.errors import InvalidArgumentError
from tidal.core.spec import JobSpec


def check_names(spec: JobSpec, dense_names: Iterable[str]) -> None:
    """Refuses tables named like one of the model's dense parameters."""
    dense = set(dense_names)
    for i, table in enumerate(spec.embeddings):
        if table.name in dense:
            raise InvalidArgumentError(
                f"spec.embeddings[{i}].name: {table.name!r} is also the name of a dense parameter of the model; "
                "rename the table"
            )
