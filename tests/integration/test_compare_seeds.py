"""`tidal compare` with two seeds, as CI runs the evidence study: real processes, few steps.

It only proves the pipeline: every mode and kill run once per seed, each run saved as it ends,
an interrupted compare (SIGTERM once the first run is saved) resumed by the same command without
redoing the runs done, the means and min-max computed right from the per-seed values, and the
loss chart's band drawn from them.
"""

from __future__ import annotations

import csv
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.integration.helpers import processes_mentioning

pytestmark = pytest.mark.integration

SEEDS = [3, 4]
SPEC: dict[str, Any] = {
    "name": "two-seeds",
    "job": {
        "model": {"name": "mlp", "args": {"hidden": [16]}},
        "dataset": {"name": "seattle_weather"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "batch_size": 32,
        "steps": 20,
        "num_workers": 2,
        "num_shards": 2,
        "eval_every": 5,
    },
    "cluster": {"num_shards": 2, "worker_slowdowns": [1, 3]},
    "target_val_loss": 0.66,
    "modes": [{"label": "sync", "mode": "sync"}, {"label": "async", "mode": "async"}],
    "kill": {"rank": 1, "at_step": 5, "labels": ["sync"]},
    "seeds": SEEDS,
    "warm_up_steps": 5,
    "job_timeout_s": 120,
}
# Per seed: sync, async, then sync with rank 1 killed.
RUNS = [f"{name}-seed{seed}" for seed in SEEDS for name in ("00-sync", "01-async", "00-sync-kill")]
# Generous: the machine is shared; every wait ends as soon as its condition holds.
FIRST_RUN_TIMEOUT_S = 300
STUDY_TIMEOUT_S = 900


def _command(spec_file: Path, out: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "tidal", "compare", str(spec_file), "--out", str(out), "--workdir", str(workdir)]


def _saved(out: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((out / "runs").glob("*-seed*.json"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Starts the study, stops it with SIGTERM once the first run is saved, then resumes it."""
    root = tmp_path_factory.mktemp("seeds")
    spec_file = root / "two-seeds.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    out, workdir = root / "report", root / "work"
    log = (root / "first.log").open("w")
    first = subprocess.Popen(_command(spec_file, out, workdir), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + FIRST_RUN_TIMEOUT_S
        while not _saved(out) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, f"compare ended before any run was saved: {(root / 'first.log').read_text()}"
        assert _saved(out), f"no run saved within {FIRST_RUN_TIMEOUT_S}s: {(root / 'first.log').read_text()}"
        first.send_signal(signal.SIGTERM)
        first_rc = first.wait(120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    before = _saved(out)
    interrupted = {
        "rc": first_rc,
        "log": (root / "first.log").read_text(),
        "report_written": (out / "report.md").exists(),
        "left_behind": processes_mentioning(str(workdir)),
    }
    second = subprocess.run(
        _command(spec_file, out, workdir), capture_output=True, text=True, timeout=STUDY_TIMEOUT_S, check=False
    )
    return {
        "root": root,
        "spec_file": spec_file,
        "out": out,
        "workdir": workdir,
        "interrupted": interrupted,
        "before": before,
        "second": second,
    }


def test_sigterm_stops_the_study_and_keeps_the_runs_done(study: dict[str, Any]) -> None:
    interrupted, before = study["interrupted"], study["before"]
    assert interrupted["rc"] == 1, interrupted["log"]
    assert "error: compare: stopped by SIGTERM" in interrupted["log"], interrupted["log"]
    assert f"runs saved: {len(before)} of {len(RUNS)}" in interrupted["log"], interrupted["log"]
    assert "run the same command to resume" in interrupted["log"], interrupted["log"]
    assert not interrupted["report_written"], "an interrupted study must not write a report"
    assert not interrupted["left_behind"], f"the cluster was not stopped: {interrupted['left_behind']}"
    # The runs are saved in plan order: the done ones are a prefix of it, the rest still to do.
    assert 1 <= len(before) < len(RUNS), list(before)
    assert list(before) == RUNS[: len(before)]


def test_the_same_command_resumes_without_redoing_runs(study: dict[str, Any]) -> None:
    second, before, out = study["second"], study["before"], study["out"]
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"Resuming: {len(before)} of {len(RUNS)} runs are done" in second.stdout, second.stdout
    after = _saved(out)
    assert sorted(after) == sorted(RUNS)
    for key, data in before.items():
        assert after[key] == data, f"{key} was run again"
    # Only the runs not done were started this time.
    started = [line.strip() for line in second.stdout.splitlines() if " seed " in line and line[:1] != " "]
    expected = [
        f"{label} seed {seed}{' (a worker is killed)' if kill else ''}"
        for seed in SEEDS
        for label, kill in (("sync", False), ("async", False), ("sync", True))
    ][len(before) :]
    assert started == expected, second.stdout
    assert not processes_mentioning(str(study["workdir"])), "compare left processes behind"
    report = (out / "report.md").read_text()
    assert f"{len(before)} of {len(RUNS)} runs come from an earlier invocation of the same command" in report


def _runs(out: Path) -> dict[tuple[str, int, bool], dict[str, Any]]:
    runs = {}
    for path in (out / "runs").glob("*-seed*.json"):
        data = json.loads(path.read_text())
        runs[(data["label"], data["seed"], data["kill"])] = data
    return runs


def test_every_mode_and_kill_ran_once_per_seed_with_that_seed(study: dict[str, Any]) -> None:
    runs = _runs(study["out"])
    assert sorted(runs) == sorted(
        [(label, seed, kill) for seed in SEEDS for label, kill in (("sync", False), ("async", False), ("sync", True))]
    )
    for (label, seed, kill), data in runs.items():
        assert data["job_spec"]["seed"] == seed and data["job_spec"]["mode"] == label
        assert data["result"]["state"] == "succeeded", data["result"]
        assert data["result"]["job_id"].startswith(f"{label}{'-kill' if kill else ''}-s{seed}-")
        assert data["code"].startswith(("git ", "tidal "))
    results = json.loads((study["out"] / "results.json").read_text())
    assert results["run_codes"] == sorted({data["code"] for data in runs.values()})
    # The seed reaches the job: sync is deterministic per seed, so two seeds give two models.
    assert runs[("sync", 3, False)]["result"]["final_val_loss"] != runs[("sync", 4, False)]["result"]["final_val_loss"]
    assert all(runs[("sync", seed, True)]["result"]["killed"] is True for seed in SEEDS)


def test_means_and_spread_come_from_the_per_seed_values(study: dict[str, Any]) -> None:
    out = study["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == SEEDS and results["resumed_runs"] == len(study["before"])
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == len(RUNS)
    report = (out / "report.md").read_text()
    assert "With fewer than 3 seeds no confidence interval is given (min–max only)" in report
    for mode in results["modes"]:
        label = mode["label"]
        base = [r["baseline"] for r in mode["runs"]]
        assert [r["seed"] for r in mode["runs"]] == SEEDS
        per_seed = {
            "wall_s": [b["wall_s"] for b in base],
            "samples_per_s": [b["samples_per_s"] for b in base],
            "final_val_loss": [b["final_val_loss"] for b in base],
            "staleness_mean": [b["staleness_mean"] for b in base],
        }
        for key, values in per_seed.items():
            stat = mode["summary"][key]
            assert stat["n"] == 2 and stat["ci95"] is None
            assert stat["mean"] == pytest.approx(statistics.fmean(values)), key
            assert (stat["low"], stat["high"]) == (min(values), max(values)), key
            csv_values = sorted(float(r[key]) for r in rows if r["label"] == label and r["kill"] == "False")
            assert csv_values == pytest.approx(sorted(values)), key
        wall = per_seed["wall_s"]
        cell = f"{statistics.fmean(wall):.1f} ({min(wall):.1f}–{max(wall):.1f})"
        assert f"| {label} | succeeded | {cell} |" in report, report


def test_the_loss_chart_draws_a_min_max_band_per_mode(study: dict[str, Any]) -> None:
    out = study["out"]
    assert (out / "val_loss_vs_time.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    curves = {c["label"]: c for c in json.loads((out / "val_loss_vs_time.json").read_text())}
    results = {m["label"]: m for m in json.loads((out / "results.json").read_text())["modes"]}
    assert list(curves) == ["sync", "async"]
    for label, curve in curves.items():
        evals = [r["baseline"]["evals"] for r in results[label]["runs"]]
        band = curve["band"]
        assert band["seeds"] == 2 and band["time_s"] == sorted(band["time_s"])
        assert band["time_s"][0] == max(e[0]["elapsed_s"] for e in evals)
        # Each seed's loss, linear between its evaluations and held after its last one.
        at = np.array(
            [np.interp(band["time_s"], [e["elapsed_s"] for e in ev], [e["val_loss"] for e in ev]) for ev in evals]
        )
        assert band["mean"] == pytest.approx(at.mean(axis=0).tolist())
        assert band["low"] == pytest.approx(at.min(axis=0).tolist())
        assert band["high"] == pytest.approx(at.max(axis=0).tolist())
        assert band["low"][-1] < band["high"][-1], "two seeds, two final losses"


def test_a_changed_spec_is_refused_and_an_unchanged_one_only_rewrites_the_report(study: dict[str, Any]) -> None:
    out, workdir, root = study["out"], study["workdir"], study["root"]
    assert study["second"].returncode == 0, study["second"].stdout + study["second"].stderr
    changed = root / "changed.yaml"
    changed.write_text(yaml.safe_dump({**SPEC, "target_val_loss": 0.5}))
    refused = subprocess.run(_command(changed, out, workdir), capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {out}: holds runs of a different compare spec")
    assert "--restart" in lines[0]
    before = _saved(out)
    again = subprocess.run(
        _command(study["spec_file"], out, workdir), capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Resuming: {len(RUNS)} of {len(RUNS)} runs are done" in again.stdout
    assert "Starting 1 coordinator" not in again.stdout, "nothing to run: no cluster"
    assert _saved(out) == before
