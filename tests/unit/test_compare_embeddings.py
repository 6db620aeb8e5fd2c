"""`tidal compare` modes that set the mode of the job's embedding tables (`embeddings_mode`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal.compare.spec import load_compare_spec, parse_compare_spec, plan_runs
from tidal.core.errors import InvalidArgumentError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compare" / "ctr-tables.yaml"


def test_each_mode_sets_the_tables_mode() -> None:
    runs = plan_runs(load_compare_spec(EXAMPLE))
    modes = {r.label: (r.spec.mode.value, [t.mode for t in r.spec.embeddings]) for r in runs}
    assert modes == {
        "hybrid": ("sync", ["async", "async"]),
        "all-sync": ("sync", ["sync", "sync"]),
        "all-async": ("async", ["async", "async"]),
    }


def _spec(mode: object, tables: object) -> dict[str, object]:
    job: dict[str, object] = {"steps": 10, "num_workers": 1}
    if tables is not None:
        job["embeddings"] = tables
    return {
        "name": "t",
        "job": job,
        "cluster": {"num_shards": 1, "worker_slowdowns": [1]},
        "target_val_loss": 0.6,
        "modes": [{"label": "sync", "mode": "sync", "embeddings_mode": mode}],
    }


def test_embeddings_mode_without_tables_names_the_field() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^compare\.modes\[0\]\.embeddings_mode: compare\.job has no"):
        parse_compare_spec(_spec("sync", None))


def test_embeddings_mode_is_sync_or_async() -> None:
    tables = [{"name": "a", "num_embeddings": 10, "dim": 2}]
    with pytest.raises(InvalidArgumentError, match=r"^compare\.modes\[0\]\.embeddings_mode: Input should be 'sync'"):
        parse_compare_spec(_spec("sideways", tables))
