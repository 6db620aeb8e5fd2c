"""`tidal compare` without sockets: histogram quantiles, time to target, metric pages, the compare spec."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from tidal.compare.charts import bucket_labels
from tidal.compare.metrics import bucket_counts, for_job, histogram_quantile, parse_metrics, sum_by, summed_buckets
from tidal.compare.results import Eval, Target, first_reaching
from tidal.compare.spec import load_compare_spec, parse_compare_spec, plan_runs, warm_up_spec
from tidal.compare.tables import markdown_table
from tidal.core.errors import InvalidArgumentError

INF = math.inf
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "compare").glob("*.yaml"))


# --- histogram_quantile, as PromQL computes it ------------------------------------------------
@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.1),  # rank 10 is the top of the first bucket
        (0.25, 0.05),  # the first bucket starts at 0: halfway through it
        (0.75, 0.15),  # rank 15: halfway through (0.1, 0.2]
        (0.9, 0.18),
        (1.0, 0.2),
        (0.0, 0.0),
    ],
)
def test_histogram_quantile_interpolates_linearly_inside_the_bucket(q: float, expected: float) -> None:
    buckets = [(0.1, 10.0), (0.2, 20.0), (INF, 20.0)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_in_the_inf_bucket_returns_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, [(0.1, 10.0), (0.2, 20.0), (INF, 30.0)]) == 0.2


def test_histogram_quantile_sorts_buckets_and_skips_empty_ones() -> None:
    # Exposition order does not matter; an empty bucket below the rank is stepped over.
    buckets = [(INF, 4.0), (1.0, 4.0), (0.5, 0.0), (0.25, 0.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.75)


def test_histogram_quantile_non_positive_lowest_bound_is_returned_as_is() -> None:
    assert histogram_quantile(0.1, [(0.0, 5.0), (1.0, 10.0), (INF, 10.0)]) == 0.0


def test_histogram_quantile_repairs_non_monotonic_counts() -> None:
    # A scrape of a sum can race an observation: PromQL treats a lower count as the previous one.
    assert histogram_quantile(0.5, [(0.1, 10.0), (0.2, 9.0), (0.4, 20.0), (INF, 20.0)]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "buckets",
    [
        [],
        [(INF, 10.0)],  # fewer than two buckets
        [(0.1, 1.0), (0.2, 2.0)],  # no +Inf bucket
        [(0.1, 0.0), (INF, 0.0)],  # no observations
    ],
)
def test_histogram_quantile_is_undefined_like_promql_nan(buckets: list[tuple[float, float]]) -> None:
    assert histogram_quantile(0.5, buckets) is None


def test_histogram_quantile_outside_zero_one() -> None:
    buckets = [(0.1, 1.0), (INF, 1.0)]
    assert histogram_quantile(-0.1, buckets) == -INF
    assert histogram_quantile(1.1, buckets) == INF
    assert histogram_quantile(math.nan, buckets) is None


# --- metric pages ------------------------------------------------------------------------------
PAGE = """\
# HELP tidal_worker_step_duration_seconds Wall time of whole steps, in seconds.
# TYPE tidal_worker_step_duration_seconds histogram
tidal_worker_step_duration_seconds_bucket{le="0.01",mode="sync",tidal_job="a-1",worker="w1"} 2.0
tidal_worker_step_duration_seconds_bucket{le="0.1",mode="sync",tidal_job="a-1",worker="w1"} 4.0
tidal_worker_step_duration_seconds_bucket{le="+Inf",mode="sync",tidal_job="a-1",worker="w1"} 4.0
tidal_worker_step_duration_seconds_count{mode="sync",tidal_job="a-1",worker="w1"} 4.0
tidal_worker_step_duration_seconds_sum{mode="sync",tidal_job="a-1",worker="w1"} 0.2
tidal_worker_step_duration_seconds_bucket{le="0.01",mode="sync",tidal_job="a-1",worker="w2"} 0.0
tidal_worker_step_duration_seconds_bucket{le="0.1",mode="sync",tidal_job="a-1",worker="w2"} 4.0
tidal_worker_step_duration_seconds_bucket{le="+Inf",mode="sync",tidal_job="a-1",worker="w2"} 4.0
tidal_worker_step_duration_seconds_count{mode="sync",tidal_job="a-1",worker="w2"} 4.0
tidal_worker_step_duration_seconds_sum{mode="sync",tidal_job="a-1",worker="w2"} 0.3
tidal_worker_step_duration_seconds_bucket{le="0.01",mode="sync",tidal_job="old-7",worker="w1"} 100.0
tidal_worker_step_duration_seconds_bucket{le="0.1",mode="sync",tidal_job="old-7",worker="w1"} 100.0
tidal_worker_step_duration_seconds_bucket{le="+Inf",mode="sync",tidal_job="old-7",worker="w1"} 100.0
# HELP tidal_worker_samples_total Training samples processed.
# TYPE tidal_worker_samples_total counter
tidal_worker_samples_total{mode="sync",tidal_job="a-1",worker="w1"} 128.0
tidal_worker_samples_total{mode="sync",tidal_job="a-1",worker="w2"} 96.0
tidal_worker_samples_total{mode="sync",tidal_job="old-7",worker="w1"} 5000.0
# HELP tidal_worker_slowdown Configured straggler factor.
# TYPE tidal_worker_slowdown gauge
tidal_worker_slowdown{worker="w1"} 1.0
"""


def test_parse_select_and_sum_one_jobs_series() -> None:
    samples = for_job(parse_metrics(PAGE), "a-1")
    assert {s.labels["tidal_job"] for s in samples} == {"a-1"}
    assert sum_by(samples, "tidal_worker_samples_total", "worker") == {"w1": 128.0, "w2": 96.0}
    buckets = summed_buckets(samples, "tidal_worker_step_duration_seconds")
    assert buckets == [(0.01, 2.0), (0.1, 8.0), (INF, 8.0)]
    # p50 over both workers: rank 4 of 8 lies in (0.01, 0.1], 2 of its 6 observations in.
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 + 0.09 * 2 / 6)


def test_bucket_counts_are_per_bucket() -> None:
    assert bucket_counts([(0.0, 5.0), (1.0, 7.0), (2.0, 7.0), (INF, 8.0)]) == [
        (0.0, 5.0),
        (1.0, 2.0),
        (2.0, 0.0),
        (INF, 1.0),
    ]


def test_staleness_bucket_labels() -> None:
    assert bucket_labels([0, 1, 2, 4, 8, INF]) == ["0", "1", "2", "3-4", "5-8", ">8"]


# --- time to target ------------------------------------------------------------------------
def test_first_reaching_is_the_earliest_evaluation_at_or_below_the_target() -> None:
    evals = [
        Eval(3.0, 30, 0.55, 0.7),
        Eval(1.0, 10, 0.62, 0.6),
        Eval(2.0, 20, 0.58, 0.65),  # exactly the target counts
        Eval(2.5, 25, 0.60, 0.64),  # going back up does not undo it
    ]
    assert first_reaching(evals, 0.58) == Target(2.0, 20, 0.58)
    assert first_reaching(evals, 0.56) == Target(3.0, 30, 0.55)


def test_first_reaching_not_reached() -> None:
    assert first_reaching([Eval(1.0, 10, 0.62, 0.6)], 0.5) is None
    assert first_reaching([], 0.5) is None


def test_markdown_table_right_aligns_numbers_only() -> None:
    table = markdown_table(["mode", "wall (s)", "outcome"], [["sync", "1.5", "failed at version 3"]])
    assert table.splitlines()[1] == "| :-- | --: | :-- |"


# --- the compare spec --------------------------------------------------------------------------
def _spec(**changes: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "name": "t",
        "job": {"steps": 10, "num_workers": 2, "num_shards": 1},
        "cluster": {"num_shards": 1, "worker_slowdowns": [1, 3]},
        "target_val_loss": 0.6,
        "modes": [{"label": "sync", "mode": "sync"}, {"label": "ssp", "mode": "ssp"}],
    }
    spec.update(changes)
    return spec


def test_plan_runs_baselines_then_kills_with_the_kill_merged_into_stragglers() -> None:
    spec = parse_compare_spec(
        _spec(
            job={"steps": 10, "num_workers": 2, "stragglers": [{"rank": 1, "slowdown": 2}]},
            kill={"rank": 1, "at_step": 4, "labels": ["ssp"]},
        )
    )
    runs = plan_runs(spec)
    assert [(r.label, r.kill) for r in runs] == [("sync", False), ("ssp", False), ("ssp", True)]
    assert runs[0].spec.stragglers[0].kill_at_step is None
    killed = runs[2].spec.straggler(1)
    assert killed is not None and (killed.slowdown, killed.kill_at_step) == (2.0, 4)
    assert runs[2].spec_dict["name"] == "ssp-kill"
    warm = warm_up_spec(spec)
    assert (warm["mode"], warm["steps"], "stragglers" in warm) == ("sync", 10, False)
    assert warm_up_spec(parse_compare_spec(_spec(job={"steps": 40, "num_workers": 2})), short=True)["steps"] == 10
    assert warm_up_spec(parse_compare_spec(_spec(warm_up_steps=3)))["steps"] == 3


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        (
            {"modes": [{"label": "a", "mode": "sync", "consistency": {"staleness_bound": 3}}]},
            "compare.modes[0].consistency",
        ),
        ({"modes": [{"label": "a", "mode": "sideways"}]}, "compare.modes[0].mode"),
        ({"modes": [{"label": "a", "mode": "sync"}, {"label": "a", "mode": "async"}]}, "compare.modes"),
        ({"job": {"num_workers": 2, "optimizer": {"lr": -1}}}, "compare.job.optimizer.lr"),
        ({"job": {"num_workers": 2, "mode": "async"}}, "compare.job.mode"),
        ({"job": {"num_workers": 3}}, "compare.job.num_workers"),
        ({"cluster": {"worker_slowdowns": [1, 0.5]}}, "compare.cluster.worker_slowdowns[1]"),
        ({"kill": {"rank": 2, "at_step": 1}}, "compare.kill.rank"),
        ({"kill": {"rank": 1, "at_step": 10}}, "compare.kill.at_step"),
        ({"kill": {"rank": 1, "at_step": 1, "labels": ["nope"]}}, "compare.kill"),
        ({"target_val_loss": 0}, "compare.target_val_loss"),
        ({"colour": "blue"}, "compare.colour"),
    ],
)
def test_bad_compare_spec_names_the_field(changes: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_compare_spec(_spec(**changes))
    assert str(caught.value).startswith(where), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_compare_specs_are_valid(path: Path) -> None:
    spec = load_compare_spec(path)
    assert plan_runs(spec)


def _run(label: str, mode: str, to_target_s: float | None, rate: float, **extra: object) -> object:
    from tidal.compare.results import RunResult

    target = Target(to_target_s, 10, 0.5) if to_target_s is not None else None
    return RunResult(
        label=label, mode=mode, kill=False, job_id=f"job-{label}", state="succeeded", message="", wall_s=10.0,
        samples=100, version=10, target_version=10, staleness_mean=0.0, staleness_max=0, updates_applied=10,
        updates_rejected=0, final_val_loss=0.5, final_val_accuracy=0.7, evals=[], target=target, workers=[],
        samples_per_s=rate, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def test_auto_section_places_auto_among_the_fixed_modes() -> None:
    from tidal.compare.auto_section import auto_section

    runs = [
        _run("sync", "sync", 9.0, 100.0),
        _run("sync+1 backup", "sync", 4.0, 300.0),
        _run("auto", "auto", 5.0, 250.0, settings={"backup_workers": 1.0, "staleness_bound": 0.0}, auto_decisions=2),
        _run("async", "async", None, 400.0),
    ]
    text = "\n".join(auto_section(runs, 0.55))  # type: ignore[arg-type]
    assert "### Where mode auto landed" in text
    assert "| auto | backup_workers 1, staleness_bound 0 | 2 | 2 of 4 (fastest: sync+1 backup) | 3 of 4 |" in text


def test_auto_section_is_empty_without_an_auto_run() -> None:
    from tidal.compare.auto_section import auto_section

    assert auto_section([_run("sync", "sync", 9.0, 100.0)], 0.55) == []  # type: ignore[list-item]


def test_the_report_names_the_jobs_metric_not_always_accuracy() -> None:
    from tidal.compare.tables import headers, metric_name

    spec = parse_compare_spec(_spec())
    skill = [_run("sync", "sync", 9.0, 100.0, val_metric="skill")]
    assert "final val skill" in headers(spec, metric=metric_name(skill))  # type: ignore[arg-type]
    assert "val skill" in headers(spec, compact=True, metric="skill")
    assert "val acc" in headers(spec, compact=True) and "final val accuracy" in headers(spec)


def test_a_job_spec_given_to_compare_is_one_error_saying_a_compare_spec_is_needed() -> None:
    job = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "seattle-sync.yaml").read_text())
    with pytest.raises(InvalidArgumentError) as caught:
        parse_compare_spec(job)
    message = str(caught.value)
    assert message.startswith("compare: this is a job spec; tidal compare needs a compare spec")
    assert "Extra inputs" not in message and "Field required" not in message
