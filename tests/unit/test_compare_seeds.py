"""`tidal compare` with repeat runs, without sockets: the seeds in the spec, the statistics over
seeds, the loss band, the run files an interrupted study resumes from, and the report."""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tidal.compare.aggregate import T975, Stat, loss_at, loss_band
from tidal.compare.charts import DATA_FILE, FILES, write_charts
from tidal.compare.report import Provenance, summarize_modes, write_report
from tidal.compare.results import Eval, RunResult, Target, WorkerResult, result_from_dict
from tidal.compare.spec import MAX_SEEDS, parse_compare_spec, plan_runs
from tidal.compare.store import RunStore, StoredRun, run_key, spec_digest
from tidal.core.errors import InvalidArgumentError


def _spec(**changes: object) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "job": {"steps": 10, "num_workers": 2, "num_shards": 1, "eval_every": 2},
        "cluster": {"num_shards": 1, "worker_slowdowns": [1, 3]},
        "target_val_loss": 0.6,
        "modes": [{"label": "sync", "mode": "sync"}, {"label": "auto", "mode": "auto"}],
    }
    spec.update(changes)
    return spec


# --- seeds in the spec ---------------------------------------------------------------------------
def test_every_mode_and_kill_runs_once_per_seed_seed_by_seed() -> None:
    spec = parse_compare_spec(_spec(seeds=[7, 3], kill={"rank": 1, "at_step": 4, "labels": ["auto"]}))
    runs = plan_runs(spec)
    assert [(r.label, r.kill, r.seed) for r in runs] == [
        ("sync", False, 7),
        ("auto", False, 7),
        ("auto", True, 7),
        ("sync", False, 3),
        ("auto", False, 3),
        ("auto", True, 3),
    ]
    assert [r.spec.seed for r in runs] == [7, 7, 7, 3, 3, 3]
    assert [r.spec_dict["name"] for r in runs[:3]] == ["sync-s7", "auto-s7", "auto-kill-s7"]
    assert len({run_key(r) for r in runs}) == len(runs)


def test_without_seeds_the_jobs_own_seed_runs_once_and_names_stay() -> None:
    spec = parse_compare_spec(_spec(job={"steps": 10, "num_workers": 2, "seed": 5}))
    assert spec.seed_list() == [5]
    assert [(r.seed, r.spec_dict["name"]) for r in plan_runs(spec)] == [(5, "sync"), (5, "auto")]
    assert parse_compare_spec(_spec()).seed_list() == [0]


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"seeds": [1, 2, 1]}, "compare.seeds[2]: seed 1 appears twice (also entry 0)"),
        ({"seeds": [1, -1]}, "compare.seeds[1]: "),
        ({"seeds": [2**31]}, "compare.seeds[0]: "),
        ({"seeds": ["a"]}, "compare.seeds[0]: "),
        ({"seeds": []}, "compare.seeds: "),
        ({"seeds": list(range(MAX_SEEDS + 1))}, "compare.seeds: "),
        ({"seeds": [1, 2], "job": {"num_workers": 2, "seed": 1}}, "compare.job.seed: not allowed together"),
    ],
)
def test_bad_seeds_are_one_line_naming_the_entry(changes: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_compare_spec(_spec(**changes))
    assert str(caught.value).startswith(where), str(caught.value)
    assert "\n" not in str(caught.value)


# --- statistics over seeds ---------------------------------------------------------------------
def _t_cdf(t: float, df: int) -> float:
    """Student's t CDF by Simpson integration of its density (only to check the table)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    n = 4000
    h = t / n
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))


@pytest.mark.parametrize("df", sorted(T975))
def test_t_table_is_the_0975_quantile(df: int) -> None:
    assert _t_cdf(T975[df], df) == pytest.approx(0.975, abs=2e-6)


def test_stat_mean_spread_and_interval() -> None:
    values = [1.0, 2.0, 4.0]
    stat = Stat.of(values)
    assert stat is not None
    assert (stat.n, stat.mean, stat.low, stat.high) == (3, pytest.approx(7 / 3), 1.0, 4.0)
    half = 4.302653 * statistics.stdev(values) / math.sqrt(3)
    assert stat.ci95 == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))
    two = Stat.of([1.0, 3.0])
    assert two is not None and (two.mean, two.low, two.high, two.ci95) == (2.0, 1.0, 3.0, None)
    assert Stat.of([]) is None


def test_loss_band_holds_a_finished_runs_last_loss_and_starts_when_every_seed_has_a_value() -> None:
    a = _result("sync", evals=[(1.0, 0.9), (2.0, 0.7), (3.0, 0.5)])
    b = _result("sync", evals=[(1.5, 0.8), (2.5, 0.6)])
    band = loss_band([a, b])
    assert band is not None and band.seeds == 2
    assert band.time_s == [1.5, 2.0, 2.5, 3.0]
    # a at 1.5: halfway from 0.9 to 0.7; b at 3.0: its last loss, held.
    assert band.low == pytest.approx([0.8, 0.7, 0.6, 0.5])
    assert band.high == pytest.approx([0.8, 0.7, 0.6, 0.6])
    assert band.mean == pytest.approx([0.8, 0.7, 0.6, 0.55])
    assert loss_at([(1.0, 1.0), (1.0, 0.5), (2.0, 0.0)], 1.0) == 0.5


# --- run files ----------------------------------------------------------------------------------
def _result(label: str, seed: int = 0, evals: list[tuple[float, float]] | None = None, **extra: Any) -> RunResult:
    points = [Eval(t, 10 * (i + 1), v, 0.7) for i, (t, v) in enumerate(evals or [(1.0, 0.7), (2.0, 0.5)])]
    target = next((Target(e.elapsed_s, e.version, e.val_loss) for e in points if e.val_loss <= 0.6), None)
    fields: dict[str, Any] = dict(
        label=label, mode=label, kill=False, job_id=f"{label}-{seed}", state="succeeded", message="",
        wall_s=10.0 + seed, samples=640, version=points[-1].version, target_version=20, staleness_mean=0.5 * seed,
        staleness_max=seed, updates_applied=20, updates_rejected=0, final_val_loss=points[-1].val_loss,
        final_val_accuracy=0.7, evals=points, target=target,
        workers=[
            WorkerResult(0, "w0", "worker-0", 1.0, 10, 320.0, 30.0 + seed),
            WorkerResult(1, "w1", "worker-1", 3.0, 10, 320.0, 10.0),
        ],
        samples_per_s=64.0 + seed, step_p50_s=0.01, step_p99_s=0.05, wire_bytes=2.0**20,
        staleness_buckets=[(0.0, 10.0), (1.0, 10.0), (math.inf, 0.0)],
    )  # fmt: skip
    fields.update(extra)
    return RunResult(**fields)


def _stored(label: str, seed: int, kill: bool = False, index: int = 0, **extra: Any) -> StoredRun:
    key = f"{index:02d}-{label}{'-kill' if kill else ''}-seed{seed}"
    result = _result(label, seed, **extra)
    result.kill = kill
    return StoredRun(key, label, kill, seed, result, [], {"seed": seed}, "git abc", "2026-12-04T00:00:00", 1.0)


def test_result_round_trips_through_its_json_file(tmp_path: Path) -> None:
    spec = parse_compare_spec(_spec(seeds=[1, 2]))
    store = RunStore(tmp_path, spec)
    store.open(restart=False)
    planned = plan_runs(spec)
    stored = _stored("sync", 1)
    stored.key = run_key(planned[0])
    store.save(stored)
    found, notes = store.load(planned)
    assert notes == [] and list(found) == [run_key(planned[0])]
    assert found[run_key(planned[0])].result == stored.result  # infinities, tuples, dataclasses
    assert result_from_dict(_as_json(stored.result)) == stored.result
    assert not list((tmp_path / "runs").glob(".*.tmp"))


def _as_json(result: RunResult) -> dict[str, Any]:
    from dataclasses import asdict

    from tidal.compare.results import dumps

    return json.loads(dumps(asdict(result)))


def test_a_damaged_run_file_is_run_again_with_a_note(tmp_path: Path) -> None:
    spec = parse_compare_spec(_spec(seeds=[1, 2]))
    store = RunStore(tmp_path, spec)
    store.open(restart=False)
    planned = plan_runs(spec)
    (tmp_path / "runs" / f"{run_key(planned[1])}.json").write_text('{"format": 1, "dig')
    found, notes = store.load(planned)
    assert found == {} and len(notes) == 1 and "not a valid result" in notes[0] and "running it again" in notes[0]


def test_another_spec_in_the_folder_is_refused_unless_restart(tmp_path: Path) -> None:
    first = parse_compare_spec(_spec(seeds=[1]))
    store = RunStore(tmp_path, first)
    store.open(restart=False)
    store.save(replace(_stored("sync", 1), key=run_key(plan_runs(first)[0])))
    # More seeds: the same study, the runs done are kept.
    more = parse_compare_spec(_spec(seeds=[1, 2]))
    assert spec_digest(more) == spec_digest(first)
    RunStore(tmp_path, more).open(restart=False)
    assert len(RunStore(tmp_path, more).load(plan_runs(more))[0]) == 1
    changed = parse_compare_spec(_spec(seeds=[1], target_val_loss=0.5))
    with pytest.raises(InvalidArgumentError) as caught:
        RunStore(tmp_path, changed).open(restart=False)
    message = str(caught.value)
    assert message.startswith(f"--out {tmp_path}: holds runs of a different compare spec"), message
    assert "use a new --out folder, or --restart" in message and "\n" not in message
    RunStore(tmp_path, changed).open(restart=True)
    assert RunStore(tmp_path, changed).load(plan_runs(changed)) == ({}, [])


# --- the report ---------------------------------------------------------------------------------
def _write(tmp_path: Path, seeds: list[int]) -> tuple[Path, list[StoredRun]]:
    spec = parse_compare_spec(_spec(seeds=seeds, kill={"rank": 1, "at_step": 4, "labels": ["sync"]}))
    runs = []
    for run in plan_runs(spec):
        settings = {"backup_workers": 1.0} if run.label == "auto" else {}
        stored = _stored(run.label, run.seed, run.kill, run.index, settings=settings, auto_decisions=2.0)
        stored.key = run_key(run)
        runs.append(stored)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: t\n")
    summaries = summarize_modes(spec, runs)
    prov = Provenance("tidal compare spec.yaml --out out", "git abc", datetime(2026, 12, 4, tzinfo=UTC), 5.0, 1)
    write_report(spec, spec_file, summaries, runs, {"sync": {"eval_every": 2}}, tmp_path, prov)
    write_charts(summaries, 0.6, "t", tmp_path)
    return tmp_path, runs


def test_three_seeds_report_mean_min_max_and_interval(tmp_path: Path) -> None:
    out, runs = _write(tmp_path, [0, 1, 2])
    report = (out / "report.md").read_text()
    # wall 10, 11, 12: mean 11 (10-12); samples/s 64, 65, 66.
    assert "| sync | succeeded | 11.0 (10.0–12.0) | 640 (640–640) |" in report, report
    assert "| 65 (64–66) |" in report
    assert "### 95% confidence intervals of the means (3 seeds, t with 2 degrees of freedom)" in report
    half = 4.302653 * 1.0 / math.sqrt(3)
    assert f"| {11 - half:.1f} – {11 + half:.1f} |" in report
    assert "3 of 3 seeds succeeded" in report and "| sync | 2 | sync-kill-2 |" not in report
    assert "Generated by `tidal compare spec.yaml --out out` with code `git abc`" in report
    assert "The runs took 9s (jobs and warm-ups). 1 of 9 runs come from an earlier invocation" in report
    assert "| auto | backup_workers 1 (1–1) | 2 (2–2) |" in report
    results = json.loads((out / "results.json").read_text())
    sync = results["modes"][0]
    assert [r["seed"] for r in sync["runs"]] == [0, 1, 2]
    assert sync["summary"]["wall_s"]["mean"] == pytest.approx(11.0)
    assert sync["runs"][2]["kill"]["kill"] is True
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == len(runs) == 9
    assert sorted(float(r["wall_s"]) for r in rows if r["label"] == "sync" and r["kill"] == "False") == [10, 11, 12]
    for name in FILES:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    curves = json.loads((out / DATA_FILE).read_text())
    assert curves[0]["label"] == "sync" and curves[0]["band"]["seeds"] == 3


def test_one_seed_report_says_there_is_no_spread(tmp_path: Path) -> None:
    out, _ = _write(tmp_path, [4])
    report = (out / "report.md").read_text()
    assert "One seed (4): every number is one run's, so there is no spread and no interval" in report
    assert "| sync | succeeded | 14.0 | 640 |" in report, report
    assert "confidence interval" not in report and "14.0 (" not in report and "min–max over seeds" not in report
    assert "succeeded at version 20" in report


def test_the_loss_chart_turns_logarithmic_when_a_run_diverged() -> None:
    """A diverged run's losses lie orders of magnitude above the others': on a linear axis the
    other curves would be flat on the floor (docs/evidence.md's async runs)."""
    from tidal.compare.charts import LOG_LOSS_SPAN, val_loss_vs_time

    spec = parse_compare_spec(_spec(seeds=[1]))
    calm = [_stored("sync", 1, evals=[(1.0, 0.7), (2.0, 0.5)])]
    axis = val_loss_vs_time(summarize_modes(spec, calm), 0.6, "t").axes[0]
    assert axis.get_yscale() == "linear" and axis.get_ylabel() == "validation loss (the job's objective)"
    diverged = [_stored("sync", 1, evals=[(1.0, 0.7), (2.0, 0.5 * LOG_LOSS_SPAN * 10)])]
    axis = val_loss_vs_time(summarize_modes(spec, diverged), 0.6, "t").axes[0]
    assert axis.get_yscale() == "log" and axis.get_ylabel().endswith("log scale)")
