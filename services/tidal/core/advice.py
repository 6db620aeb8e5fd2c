"""`tidal advise`: from a short probe's timings to a recommended mode, with the reason.

Pure: the probe (services/tidal/advise.py) runs the job asynchronously for a few steps, so
no worker waits for another and each one's own pace shows; this module turns what it
measured into a decision. The rules follow the literature the modes come from:

Candidates, in order of freshness (how synchronous their updates are):

1. plain sync: on uniform hardware it is hard to beat (every gradient used, no staleness,
   reproducible);
2. sync with backup workers (Chen et al. 2016), when a minority of workers is persistently
   slow (at least `STRAGGLER_RATIO` times the median worker's busy time);
3. bounded staleness (Ho et al. 2013), when workers are equally fast on average but single
   steps jitter (step p90 at least `JITTER_RATIO` times the median), with a bound covering it;
4. local SGD / DiLoCo (Douillard et al. 2023), when communication costs at least as much as
   computation: synchronising every H steps divides the traffic by H;
5. async with the learning rate divided by the staleness (Zhang et al. 2016): nothing waits.

Each gets a throughput estimate (samples/s) from the same timings; the freshest candidate
within `PREFER_FRESHER` of the fastest estimate wins, because staleness and dropped
gradients cost convergence per sample, which the estimates do not model.

How much staleness costs depends on the job (its learning rate above all: docs/evidence.md
measured async failing to train at the lr tuned for sync, while one worker taking the same
steps without staleness trained well). So the probe also runs the job in sync for as many
samples (`ConvergenceProbe`): when async's validation loss after them is more than
`STALE_LOSS_RATIO` times sync's, the candidates that train on stale gradients (ssp, async)
are left out, whatever their throughput. The estimates:
sync = N·B / max(slowest busy + comm, the expected slowest of N jittery steps);
b backups = (N-b)·B / ((N-b)-th fastest busy + comm); ssp = N·B / (mean busy + comm);
async = Σ B / (busy_w + comm_w); local SGD = N·B / (slowest busy + comm / H).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from tidal.core.auto import STRAGGLER_RATIO
from tidal.core.errors import InvalidArgumentError
from tidal.core.spec import Mode

# Communication over computation from which local SGD pays.
COMM_HEAVY_RATIO = 1.0
# Step-time p90 over p50 (within a worker) from which the jitter is worth a staleness bound.
JITTER_RATIO = 1.5
# A less synchronous mode must be estimated this many times faster to be preferred: staleness
# and dropped gradients cost convergence per sample, which the estimates do not model.
PREFER_FRESHER = 1.5
# Largest sync_every and staleness bound the advice proposes.
MAX_SYNC_EVERY = 64
MAX_BOUND = 8
# Async's validation loss over sync's, after the same samples, beyond which stale gradients
# are judged to cost this job more than waiting does.
STALE_LOSS_RATIO = 1.1
# Modes whose updates train on stale gradients: the convergence check can rule them out.
STALE_MODES = frozenset({Mode.SSP, Mode.ASYNC})


@dataclass(frozen=True)
class WorkerTiming:
    """One worker's probe figures, in seconds per step."""

    worker: str
    busy_s: float  # computation, including any straggler delay: the worker's own pace
    comm_s: float  # push + barrier + pull
    step_p50_s: float | None = None
    step_p90_s: float | None = None


@dataclass(frozen=True)
class ConvergenceProbe:
    """Validation loss after the same samples, trained in sync and asynchronously."""

    samples: int
    sync_val_loss: float
    async_val_loss: float

    @property
    def stale_gradients_hurt(self) -> bool:
        return self.async_val_loss > self.sync_val_loss * STALE_LOSS_RATIO

    def sentence(self) -> str:
        ratio = self.async_val_loss / self.sync_val_loss
        return (
            f"After the same {self.samples} samples, the async probe's validation loss was {self.async_val_loss:.4g} "
            f"against {self.sync_val_loss:.4g} in sync ({ratio:.2f}x)"
        )


@dataclass(frozen=True)
class Advice:
    mode: Mode
    consistency: dict[str, Any]
    reason: str
    # What the rules looked at.
    figures: dict[str, float]
    # Estimated samples/s of each candidate, from the same timings.
    estimates: dict[str, float] = field(default_factory=dict)

    def spec_fields(self) -> dict[str, Any]:
        """The job spec fields to set."""
        fields: dict[str, Any] = {"mode": self.mode.value}
        if self.consistency:
            fields["consistency"] = dict(self.consistency)
        return fields


def advise(timings: list[WorkerTiming], batch_size: int, convergence: ConvergenceProbe | None = None) -> Advice:
    if not timings:
        raise InvalidArgumentError("probe: no worker timings; the probe job measured nothing")
    if any(t.busy_s <= 0 for t in timings):
        raise InvalidArgumentError("probe: a worker reported no computation time")
    n = len(timings)
    busy = sorted(t.busy_s for t in timings)
    median_busy = statistics.median_low(busy)
    comm = statistics.median(t.comm_s for t in timings)
    comm_ratio = comm / median_busy
    slowness = {t.worker: t.busy_s / median_busy for t in timings}
    stragglers = sorted((w for w, r in slowness.items() if r >= STRAGGLER_RATIO), key=lambda w: -slowness[w])
    tails = [t.step_p90_s / t.step_p50_s for t in timings if t.step_p50_s and t.step_p90_s]
    jitter = statistics.median(tails) if tails else 1.0
    figures = {
        "workers": float(n),
        "median_busy_s": median_busy,
        "slowest_busy_s": busy[-1],
        "comm_s": comm,
        "comm_over_compute": comm_ratio,
        "step_p90_over_p50": jitter,
        "stragglers": float(len(stragglers)),
    }
    # A sync step waits for the slowest of n draws of the step time: roughly the (1 - 1/n)
    # point between the median step's p50 and p90 (an approximation, good enough to rank).
    p50s = [t.step_p50_s for t in timings if t.step_p50_s and t.step_p90_s]
    p90s = [t.step_p90_s for t in timings if t.step_p50_s and t.step_p90_s]
    jittery_step = (
        statistics.median(p50s) + (statistics.median(p90s) - statistics.median(p50s)) * (1 - 1 / n) if p50s else 0.0
    )
    sync_step = max(busy[-1] + comm, jittery_step)
    sync_every = min(MAX_SYNC_EVERY, max(2, math.ceil(4 * comm_ratio)))
    bound = min(MAX_BOUND, max(1, math.ceil(jitter - 1)))
    backups = len(stragglers) if stragglers and len(stragglers) <= (n - 1) // 2 else 0
    pace = ", ".join(f"{w} {slowness[w]:.1f}x" for w in stragglers)
    candidates: list[_Candidate] = [
        _Candidate(
            "sync",
            Mode.SYNC,
            {},
            n * batch_size / sync_step,
            f"The workers are uniform enough (slowest {busy[-1] / median_busy:.1f}x the median worker, step p90 "
            f"{jitter:.1f}x its median, communication {comm_ratio:.1f}x computation) that plain sync is hard to "
            "beat: every step uses every worker's gradient, no gradient is stale, and runs are reproducible.",
        )
    ]
    if backups:
        kept = n - backups
        candidates.append(
            _Candidate(
                f"sync (backup_workers {backups})",
                Mode.SYNC,
                {"backup_workers": backups},
                kept * batch_size / (busy[kept - 1] + comm),
                f"{'Worker' if backups == 1 else 'Workers'} {pace} slower than the median worker "
                f"({median_busy * 1000:.0f} ms of computation per step): plain sync would run every step at "
                f"{'its' if backups == 1 else 'their'} pace. Sync with {backups} backup "
                f"worker{'s' if backups > 1 else ''} applies each step with the first {kept} gradients and drops "
                f"the late ones (Chen et al. 2016), at the cost of {backups}/{n} of the computed gradients; the "
                "updates stay synchronous and fresh. If slow workers come and go during a run, `mode: auto` "
                "makes this choice online.",
            )
        )
    if jitter >= JITTER_RATIO and not stragglers:
        candidates.append(
            _Candidate(
                f"ssp (staleness_bound {bound})",
                Mode.SSP,
                {"staleness_bound": bound},
                n * batch_size / (statistics.mean(busy) + comm),
                f"The workers are equally fast on average, but single steps jitter: the 90th percentile of a "
                f"step is {jitter:.1f}x its median, and plain sync waits for the slowest worker of every step. "
                f"Bounded staleness with staleness_bound {bound} lets fast workers run up to {bound} "
                f"step{'s' if bound > 1 else ''} ahead of a briefly slow one, with gradients at most that stale "
                "(Ho et al. 2013).",
            )
        )
    if comm_ratio >= COMM_HEAVY_RATIO:
        candidates.append(
            _Candidate(
                f"local_sgd (sync_every {sync_every})",
                Mode.LOCAL_SGD,
                {"sync_every": sync_every},
                n * batch_size / (busy[-1] + comm / sync_every),
                f"Communication dominates: a step spends {comm * 1000:.0f} ms exchanging parameters and "
                f"gradients against {median_busy * 1000:.0f} ms of computation ({comm_ratio:.1f}x). Local SGD "
                f"(DiLoCo, Douillard et al. 2023) takes {sync_every} local steps between synchronisations, so "
                f"the traffic falls {sync_every}-fold; the shards' outer Nesterov optimizer makes up for the "
                "fewer, larger updates. bf16 on the wire halves the bytes again if the model tolerates it.",
            )
        )
    candidates.append(
        _Candidate(
            "async (staleness_lr inverse)",
            Mode.ASYNC,
            {"staleness_lr": "inverse"},
            sum(batch_size / (t.busy_s + t.comm_s) for t in timings),
            f"The fleet is uneven{f' ({pace} slower than the median worker)' if pace else ''} and no small set "
            "of backup workers hides it: async lets every worker push at its own pace, and dividing the "
            "learning rate by the staleness (Zhang et al. 2016) keeps the slow workers' stale gradients from "
            "hurting convergence.",
        )
    )
    estimates = {c.label: c.samples_per_s for c in candidates}
    stale_note = ""
    if convergence is not None:
        figures["probe_sync_val_loss"] = convergence.sync_val_loss
        figures["probe_async_val_loss"] = convergence.async_val_loss
        if convergence.stale_gradients_hurt:
            left_out = [c.label for c in candidates if c.mode in STALE_MODES]
            candidates = [c for c in candidates if c.mode not in STALE_MODES]
            stale_note = (
                f" {convergence.sentence()}: at this learning rate stale gradients cost more than waiting "
                f"does, so {', '.join(left_out)} {'was' if len(left_out) == 1 else 'were'} left out whatever "
                "the throughput (lower the learning rate to make them usable; docs/evidence.md)."
            )
        else:
            stale_note = f" {convergence.sentence()}: stale gradients cost this job little."
    best = max(c.samples_per_s for c in candidates)
    # Candidates are in order of freshness: the first within reach of the fastest wins.
    chosen = next(c for c in candidates if c.samples_per_s * PREFER_FRESHER >= best)
    others = "; ".join(f"{label} {rate:.0f}" for label, rate in estimates.items() if label != chosen.label)
    reason = (
        f"{chosen.why} Estimated throughput {chosen.samples_per_s:.0f} samples/s (others: {others}); a more "
        f"synchronous mode is preferred unless a less synchronous one is estimated {PREFER_FRESHER:g}x faster."
        f"{stale_note}"
    )
    return Advice(chosen.mode, chosen.consistency, reason, figures, estimates)


@dataclass(frozen=True)
class _Candidate:
    label: str
    mode: Mode
    consistency: dict[str, Any]
    samples_per_s: float
    why: str
