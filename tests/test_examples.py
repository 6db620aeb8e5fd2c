"""Every example job spec in the repository is valid and plans (model, data, shard map)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal.client import load_spec_file
from tidal.core.climate.synth import SynthConfig, write_field
from tidal.core.plan import job_dataset, job_model, job_shard_map
from tidal.core.spec import parse_job_spec

# Job specs only: examples/compare/ and examples/evidence/ hold compare specs, checked in
# tests/unit/test_compare_report.py and tests/integration/test_evidence_study.py.
COMPARE_SPEC_FOLDERS = {"compare", "evidence"}
EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parent.parent / "examples").rglob("*.yaml")
    if not COMPARE_SPEC_FOLDERS & set(p.parts)
)


BYO = Path(__file__).resolve().parent.parent / "examples" / "byo"


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_is_valid(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_job_spec(load_spec_file(path))
    store = spec.dataset.args.get("path") if spec.dataset.name == "climate_grid" else None
    if isinstance(store, str) and not Path(store).is_absolute():
        # Gridded examples name a generated field (`tidal climate synth`): plan them on a small one.
        monkeypatch.chdir(tmp_path)
        (tmp_path / store).parent.mkdir(parents=True, exist_ok=True)
        write_field(str(tmp_path / store), SynthConfig(n_lat=16, n_lon=32, steps=40))
    if BYO in path.parents:
        # The bring-your-own specs: the user package on the path, the CSV make_data.py writes.
        monkeypatch.syspath_prepend(str(BYO))
        monkeypatch.chdir(tmp_path)
        from make_data import write_csv  # examples/byo/make_data.py, on the path only now

        write_csv(tmp_path / "examples" / "byo" / "data")
    shard_map = job_shard_map(spec, job_model(spec, job_dataset(spec, model_modules=None)))
    assert shard_map.num_shards == spec.num_shards
