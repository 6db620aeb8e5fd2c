"""Reading one job's numbers out of Prometheus text pages: parse, select, aggregate.

Pure functions (no sockets) so they are unit-tested; `scrape` is the one that fetches a page.
`histogram_quantile` follows PromQL's function of the same name, so the report's p50/p99
agree with what the Grafana dashboard shows for the same buckets.
"""

from __future__ import annotations

import math
import ssl
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tidal.core.errors import UnavailableError

# (upper bound "le", cumulative count), as in Prometheus' _bucket series; the last bound is +Inf.
Bucket = tuple[float, float]


@dataclass(frozen=True)
class Sample:
    name: str  # the series name as exposed, e.g. tidal_worker_samples_total, ..._bucket
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def scrape(url: str, context: ssl.SSLContext | None = None, timeout_s: float = 10.0) -> list[Sample]:
    """Fetches and parses one /metrics page; HTTPS ones are checked against `context`
    (SecurityConfig.ssl_context: the same CA and client certificate as everything else)."""
    if url.startswith("https:") and context is None:
        raise UnavailableError(f"cannot scrape {url}: it is HTTPS and no TLS settings (TIDAL_TLS_*) were given")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            return parse_metrics(reply.read().decode())
    except OSError as exc:
        raise UnavailableError(f"cannot scrape {url}: {getattr(exc, 'reason', None) or exc}") from None


def for_job(samples: Iterable[Sample], job_id: str) -> list[Sample]:
    """The series of one tidal job (label `tidal_job`)."""
    return [s for s in samples if s.labels.get("tidal_job") == job_id]


def sum_by(samples: Iterable[Sample], name: str, label: str) -> dict[str, float]:
    """Sum of the series `name` per value of `label` (PromQL: sum by (label) (name))."""
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == name:
            out[s.labels.get(label, "")] += s.value
    return dict(out)


def total(samples: Iterable[Sample], name: str) -> float:
    return sum(s.value for s in samples if s.name == name)


def summed_buckets(samples: Iterable[Sample], histogram: str) -> list[Bucket]:
    """The buckets of `histogram` summed over all its series (PromQL: sum by (le) (histogram_bucket))."""
    counts: dict[float, float] = defaultdict(float)
    for s in samples:
        if s.name == f"{histogram}_bucket":
            counts[float(s.labels["le"])] += s.value
    return sorted(counts.items())


def histogram_quantile(q: float, buckets: Sequence[Bucket]) -> float | None:
    """The q-quantile estimated from cumulative buckets, as PromQL's histogram_quantile.

    Linear interpolation inside the bucket that holds the rank; the lowest bucket starts at 0
    (when its bound is positive); a rank in the +Inf bucket returns the highest finite bound.
    None where PromQL returns NaN: no +Inf bucket, fewer than two buckets, no observations.
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    # Counts must not decrease with the bound (PromQL's ensureMonotonic: scrapes of sums can race).
    cumulative: list[Bucket] = []
    highest = 0.0
    for le, count in ordered:
        highest = max(highest, count)
        cumulative.append((le, highest))
    observations = cumulative[-1][1]
    if observations <= 0:
        return None
    rank = q * observations
    # The first bucket (+Inf excluded) whose count reaches the rank; the +Inf bucket when none does.
    b = next((i for i in range(len(cumulative) - 1) if cumulative[i][1] >= rank), len(cumulative) - 1)
    if b == len(cumulative) - 1:
        return cumulative[-2][0]
    end, count = cumulative[b]
    if b == 0 and end <= 0:
        return end
    start, below = (0.0, 0.0) if b == 0 else cumulative[b - 1]
    if count - below <= 0:
        return start
    return start + (end - start) * (rank - below) / (count - below)


def bucket_counts(buckets: Sequence[Bucket]) -> list[Bucket]:
    """Cumulative buckets -> observations per bucket: (upper bound, count in (previous bound, bound])."""
    out: list[Bucket] = []
    below = 0.0
    for le, count in sorted(buckets):
        out.append((le, max(0.0, count - below)))
        below = max(below, count)
    return out
