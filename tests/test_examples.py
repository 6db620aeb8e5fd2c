"""Every example job spec in the repository is valid and plans (model, data, shard map)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal.client import load_spec_file
from tidal.core.plan import job_dataset, job_model, job_shard_map
from tidal.core.spec import parse_job_spec

# Job specs only: examples/compare/ holds compare specs, checked in tests/unit/test_compare_report.py.
EXAMPLES = sorted(
    p for p in (Path(__file__).resolve().parent.parent / "examples").rglob("*.yaml") if "compare" not in p.parts
)


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_is_valid(path: Path) -> None:
    spec = parse_job_spec(load_spec_file(path))
    shard_map = job_shard_map(spec, job_model(spec, job_dataset(spec)))
    assert shard_map.num_shards == spec.num_shards
