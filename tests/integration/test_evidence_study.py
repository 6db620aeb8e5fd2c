"""The evidence study (docs/evidence.md) as CI runs it: `python scripts/evidence.py --quick`,
two studies and the advise check, a few steps, real processes. It proves the pipeline (specs,
the field generated, every mode and seed run, a kill, advise on every scenario, the summary),
not the modes: docs/evidence.md holds the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tidal.compare.spec import load_compare_spec, plan_runs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "examples" / "evidence").glob("*.yaml"))
# Follow-up studies, and the job fields in which each departs from the others on purpose.
FOLLOW_UPS = {"dc-asgd-low-lr": {"optimizer"}, "ssp-low-lr": {"optimizer"}, "async-steps": {"steps"}}
STUDY_TIMEOUT_S = 900  # generous for a loaded machine; a passing run takes about a minute


def test_every_study_spec_plans_and_shares_one_job() -> None:
    """The studies differ only in what each varies (mode, workers, stragglers, the kill); a
    follow-up also in the job fields it names in FOLLOW_UPS; the lr is the one tuned for sync."""
    assert len(SPECS) >= 8
    specs = {path.stem: load_compare_spec(path) for path in SPECS}
    for stem, spec in specs.items():
        assert spec.name == f"evidence-{stem}" and spec.seeds and plan_runs(spec), stem
    reference = specs["backup-workers"].job
    assert reference["optimizer"] == {"name": "adam", "lr": 0.003}
    for stem, spec in specs.items():
        ignored = {"num_workers", "stragglers", *FOLLOW_UPS.get(stem, ())}
        differs = {k for k in reference.keys() | spec.job.keys() if reference.get(k) != spec.job.get(k)} - ignored
        assert not differs, f"{stem}: its job differs from the others in {sorted(differs)}"


def test_quick_study_runs_two_studies_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "evidence"
    cmd = [sys.executable, "scripts/evidence.py", "--quick", "--only", "backup-workers,faults", "--advise"]
    cmd += ["--out", str(out)]
    done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    backup = json.loads((out / "backup-workers" / "results.json").read_text())
    assert backup["seeds"] == [1, 2]
    assert [m["label"] for m in backup["modes"]] == ["sync", "sync+1 backup", "async"]
    for mode in backup["modes"]:
        assert [r["baseline"]["state"] for r in mode["runs"]] == ["succeeded", "succeeded"], mode["label"]
    quick = yaml.safe_load((out / "specs" / "backup-workers.yaml").read_text())
    assert quick["job"]["steps"] == 12 and quick["job"]["dataset"]["args"]["path"] == str((out / "t2m.nc").resolve())

    faults = json.loads((out / "faults" / "results.json").read_text())
    for mode in faults["modes"]:
        (run,) = mode["runs"]
        assert run["baseline"]["state"] == "succeeded" and run["kill"] is not None, mode["label"]

    summary = (out / "summary.md").read_text()
    assert "## backup-workers" in summary and "## faults" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| sync+1 backup |")]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "2"  # two seeds counted
    assert "time lost" in summary  # the faults study's kill column

    # The advise check, on every scenario's job; its table covers the studies that ran.
    for study in ("scale-4", "backup-workers", "ssp", "faults"):
        answer = json.loads((out / "advise" / f"{study}.json").read_text())
        assert answer["recommendation"]["mode"] in {"sync", "ssp", "async", "local_sgd"}, study
        assert answer["figures"]["probe_sync_val_loss"] > 0, study  # the convergence check ran
    advice = [line for line in summary.splitlines() if line.startswith("| one persistent straggler |")]
    # 12 steps reach no target: the row says so ("-") rather than agreeing or not.
    assert len(advice) == 1 and advice[0].rstrip().endswith(("| yes |", "| **no** |", "| - |")), advice
