"""Learning-rate schedules keyed off global progress.

The factor multiplies `optimizer.lr` and depends only on how far the whole job has come
(parameter versions on the shards; in local SGD, inner steps of the round schedule), never on
how many workers produced that progress, so workers that join or leave a running job do not
bend the schedule (docs/fault-tolerance.md).
"""

from __future__ import annotations

import math

from tidal.core.spec import ScheduleSpec


def lr_factor(schedule: ScheduleSpec | None, progress: int, total: int) -> float:
    """The multiplier of the base learning rate after `progress` of `total` units of progress.

    Linear warm-up from 1/warmup to 1 over the first `warmup` units, then the decay over the
    rest of `total`, from 1 down to `min_ratio` (cosine, linear), or `gamma` every `every` units (step).
    """
    if schedule is None:
        return 1.0
    progress = max(progress, 0)
    if progress < schedule.warmup:
        return (progress + 1) / schedule.warmup
    if schedule.decay == "none":
        return 1.0
    if schedule.decay == "step":
        return schedule.gamma ** ((progress - schedule.warmup) // schedule.every)
    span = max(total - schedule.warmup, 1)
    done = min((progress - schedule.warmup) / span, 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * done)) if schedule.decay == "cosine" else 1.0 - done
    return schedule.min_ratio + (1.0 - schedule.min_ratio) * shape
