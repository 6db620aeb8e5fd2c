"""Learning-rate schedules: the factor as a function of progress, the spec's checks, and the
shard applying it by version, so the schedule does not depend on how many workers there are."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.schedule import lr_factor
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_state import ShardState
from tidal.core.spec import ScheduleSpec, parse_job_spec


def test_no_schedule_is_a_constant_learning_rate() -> None:
    assert [lr_factor(None, v, 10) for v in (0, 5, 100)] == [1.0, 1.0, 1.0]
    assert lr_factor(ScheduleSpec(), 7, 10) == 1.0


def test_warmup_climbs_linearly_to_the_base_rate() -> None:
    warm = ScheduleSpec(warmup=4)
    assert [lr_factor(warm, v, 100) for v in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("decay", "halfway"),
    [("cosine", 0.5 * (1 + math.cos(math.pi * 0.5))), ("linear", 0.5)],
)
def test_cosine_and_linear_decay_from_the_end_of_warmup_to_min_ratio(decay: str, halfway: float) -> None:
    schedule = ScheduleSpec(warmup=10, decay=decay, min_ratio=0.1)  # type: ignore[arg-type]
    total = 110  # 100 versions of decay after the warm-up
    assert lr_factor(schedule, 10, total) == pytest.approx(1.0)
    assert lr_factor(schedule, 60, total) == pytest.approx(0.1 + 0.9 * halfway)
    assert lr_factor(schedule, 110, total) == pytest.approx(0.1)
    assert lr_factor(schedule, 500, total) == pytest.approx(0.1)  # past the end: stays at the floor


def test_step_decay_multiplies_by_gamma_every_interval() -> None:
    schedule = ScheduleSpec(decay="step", every=3, gamma=0.5)
    assert [lr_factor(schedule, v, 100) for v in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


@pytest.mark.parametrize(
    "bad",
    [{"warmup": -1}, {"decay": "exponential"}, {"min_ratio": 1.5}, {"gamma": 0}, {"every": 0}, {"period": 3}],
)
def test_bad_schedules_are_refused_with_the_field_named(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.optimizer\.schedule"):
        parse_job_spec({"optimizer": {"name": "sgd", "lr": 0.1, "schedule": bad}})


def _updates(num_workers: int, versions: int) -> list[float]:
    """The step sizes a shard takes, version by version, when `num_workers` push the same
    unit gradient under a warm-up plus cosine schedule (plain SGD: step = lr * gradient)."""
    spec = parse_job_spec(
        {
            "mode": "sync",
            "num_workers": num_workers,
            "steps": versions,
            "optimizer": {"name": "sgd", "lr": 0.1, "schedule": {"warmup": 2, "decay": "cosine"}},
        }
    )
    shard_map = build_shard_map([TensorInfo("w", (4,), "float32")], 1)
    workers = [f"w{i}" for i in range(num_workers)]
    state = ShardState(spec, 0, shard_map, torch.zeros(4), 1, workers)
    steps = []
    for version in range(versions):
        before = state.params.detach().clone()
        for worker in workers:
            state.push(worker, f"{worker}-{version}", version, 1, torch.ones(4))
        steps.append(float((before - state.params.detach())[0]))
    return steps


def test_the_shard_follows_the_schedule_by_version_whatever_the_number_of_workers() -> None:
    expected = [0.1 * lr_factor(ScheduleSpec(warmup=2, decay="cosine"), v, 8) for v in range(8)]
    assert _updates(2, 8) == pytest.approx(expected, rel=1e-5)  # float32 parameters
    assert _updates(5, 8) == pytest.approx(expected, rel=1e-5)  # more workers: same schedule
