"""`tidal compare` as a user runs it: real processes, a report folder, reproducible sync numbers."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from tests.integration.helpers import processes_mentioning
from tidal.compare.main import run_all
from tidal.compare.spec import parse_compare_spec, plan_runs

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JOB = {
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "dataset": {"name": "seattle_weather"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "steps": 20,
    "num_workers": 2,
    "num_shards": 2,
    "seed": 3,
    "eval_every": 5,
}
SPEC: dict[str, Any] = {
    "name": "tiny",
    "job": JOB,
    "cluster": {"num_shards": 2, "worker_slowdowns": [1, 3]},
    "target_val_loss": 0.66,
    "modes": [{"label": "sync", "mode": "sync"}, {"label": "async", "mode": "async"}],
    "kill": {"rank": 1, "at_step": 5, "labels": ["sync"]},
    "job_timeout_s": 60,
}


def _compare(spec_file: Path, *args: str, timeout_s: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidal", "compare", str(spec_file), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("compare")
    spec_file = root / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    out, workdir = root / "report", root / "work"
    result = _compare(spec_file, "--out", str(out), "--workdir", str(workdir))
    return out, result, workdir


def test_compare_writes_the_report_folder(compared: tuple[Path, subprocess.CompletedProcess[str], Path]) -> None:
    out, result, workdir = compared
    assert result.returncode == 0, result.stdout + result.stderr
    report = (out / "report.md").read_text()
    for label in ("sync", "async"):
        assert f"| {label} | succeeded |" in report, report
    # The killed worker's job goes on without it (fault tolerance, docs/fault-tolerance.md).
    assert "| sync | sync-kill-" in report and "succeeded at version" in report, report
    assert "torch" in report and "CPUs" in report
    for name in ("val_loss_vs_time.png", "staleness.png", "worker_throughput.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, f"{name}: {len(data)} bytes"
        assert f"]({name})" in report
    assert not processes_mentioning(str(workdir)), "compare left processes behind"


def test_results_json_has_every_number(compared: tuple[Path, subprocess.CompletedProcess[str], Path]) -> None:
    out, result, _ = compared
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    modes = {m["label"]: m for m in results["modes"]}
    assert list(modes) == ["sync", "async"]
    for label, mode in modes.items():
        run = mode["baseline"]
        assert run["state"] == "succeeded", run
        assert run["samples"] >= 20 * 2 * 32
        assert run["wall_s"] > 0
        assert 0 < run["step_p50_s"] <= run["step_p99_s"]
        assert run["samples_per_s"] > 0 and run["wire_bytes"] > 0
        assert run["final_val_loss"] > 0 and 0 < run["final_val_accuracy"] <= 1
        assert run["evals"] and run["evals"][-1]["version"] == run["version"]
        assert [w["slowdown"] for w in run["workers"]] == [1.0, 3.0], "rank r must run on the r-th machine"
        assert all(w["samples_per_s"] > 0 for w in run["workers"])
        assert run["staleness_buckets"][-1][0] == "+Inf"
        assert sum(count for _, count in run["staleness_buckets"]) == run["updates_applied"]
        assert mode["job_spec"]["mode"] == label
    assert modes["sync"]["baseline"]["staleness_max"] == 0
    killed = modes["sync"]["kill"]
    assert killed["state"] == "succeeded" and killed["killed"] is True, killed
    assert modes["async"]["kill"] is None
    assert any(e["expected"] and e["after_job"] == killed["job_id"] for e in results["worker_exits"])


def test_sync_numbers_are_reproducible(
    compared: tuple[Path, subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """The same spec and seed give the same sync numbers (all but the timings), run after run."""
    out, result, _ = compared
    assert result.returncode == 0, result.stdout + result.stderr
    first = json.loads((out / "results.json").read_text())["modes"][0]["baseline"]
    spec = parse_compare_spec({**SPEC, "modes": SPEC["modes"][:1], "kill": None})
    baselines, _, _ = asyncio.run(run_all(spec, plan_runs(spec), tmp_path, Console(file=io.StringIO())))
    again = baselines[0]
    fields = ("samples", "version", "updates_applied", "staleness_max", "final_val_loss", "final_val_accuracy")
    assert {f: getattr(again, f) for f in fields} == {f: first[f] for f in fields}
    assert again.evals[-1].val_loss == first["evals"][-1]["val_loss"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"modes": [{"label": "sync", "mode": "sync", "consistency": {"staleness_bound": 4}}]}, "compare.modes[0]"),
        ({"job": {**JOB, "num_workers": 3}}, "compare.job.num_workers"),
        ({"cluster": {"num_shards": 2, "worker_slowdowns": [1, 3], "gpus": 1}}, "compare.cluster.gpus"),
    ],
)
def test_bad_compare_spec_is_one_readable_line(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump({**SPEC, **change}))
    result = _compare(spec_file, "--out", str(tmp_path / "out"), timeout_s=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), result.stderr
    assert not (tmp_path / "out").exists(), "a bad spec must not start anything"
