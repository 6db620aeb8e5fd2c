"""Is the machine quiet enough to measure on? The 1-minute load average before each case and the
CPU steal before and during it, read from /proc, and the policy that flags or refuses a busy case.

Why: interleaving tidal with its alternative does not protect a ratio when one side suffers more
from a busy CPU than the other (issue 18: a TensorPipe figure from a loaded run moved an async
ratio from 1.1 to 3.1), so every figure carries the load it was measured under.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice. guest
# and guest_nice are already counted in user and nice, so the total stops at steal.
_TOTAL_FIELDS = 8
_STEAL = 7


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time so far in jiffies (all CPUs together), from /proc/stat."""

    total: int
    steal: int

    @classmethod
    def parse(cls, proc_stat: str) -> CpuTimes:
        for line in proc_stat.splitlines():
            fields = line.split()
            if fields and fields[0] == "cpu":
                # Kernels before 2.6.11 have no steal field: missing fields count as 0.
                values = [int(v) for v in fields[1 : 1 + _TOTAL_FIELDS]]
                values += [0] * (_TOTAL_FIELDS - len(values))
                return cls(total=sum(values), steal=values[_STEAL])
        raise ValueError("/proc/stat has no aggregate 'cpu' line")


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """/proc/loadavg's 1, 5 and 15-minute load averages."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(f"/proc/loadavg: expected 3 load averages, got {text.strip()!r}")
    return float(fields[0]), float(fields[1]), float(fields[2])


def steal_share(before: CpuTimes, after: CpuTimes) -> float:
    """The share (0-1) of the CPU time between two readings that the hypervisor gave to others."""
    elapsed = after.total - before.total
    return (after.steal - before.steal) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class Sample:
    load: tuple[float, float, float]
    cpu: CpuTimes


def read_sample(proc: Path = PROC) -> Sample:
    return Sample(parse_loadavg((proc / "loadavg").read_text()), CpuTimes.parse((proc / "stat").read_text()))


@dataclass(frozen=True)
class Policy:
    """When a case counts as busy, and what the run does about it."""

    max_load: float  # 1-min load average at or above which the machine is busy
    max_steal: float  # share of CPU time (0-1) stolen above which the machine is busy
    allow_busy: bool  # measure a busy case anyway (its figures marked) instead of refusing it
    settle_s: float  # how long to wait before a case for a busy machine to become quiet

    def steal_reason(self, steal: float) -> list[str]:
        return [f"CPU steal {steal:.1%} > --max-steal {self.max_steal * 100:g}%"] if steal > self.max_steal else []

    def reasons(self, load1: float, steal: float) -> list[str]:
        """Why a machine with this load and steal is busy; empty when it is quiet."""
        load = [f"1-min load average {load1:.2f} >= --max-load {self.max_load:g}"] if load1 >= self.max_load else []
        return load + self.steal_reason(steal)


@dataclass(frozen=True)
class Check:
    """The machine just before a case: the reading, the steal over the moment before it, and
    why it is busy (empty: quiet)."""

    sample: Sample
    steal: float
    reasons: list[str]


@dataclass(frozen=True)
class CaseLoad:
    """What RESULTS.md prints beside a case's figures."""

    load_before: float
    load_after: float
    steal: float  # during the case
    reasons: list[str]  # empty: the case ran on a quiet machine

    @property
    def busy(self) -> bool:
        return bool(self.reasons)

    def cell(self) -> str:
        figures = f"{self.load_before:.2f}, {self.load_after:.2f}; {self.steal:.1%}"
        return f"**busy**: {figures}" if self.busy else figures


class Guard:
    """Checks the machine before each case (waiting up to the policy's settle time for it to
    become quiet) and measures the steal over each case."""

    def __init__(
        self,
        policy: Policy,
        proc: Path = PROC,
        sleep: Callable[[float], None] = time.sleep,
        window_s: float = 1.0,
        retry_s: float = 5.0,  # the kernel updates the load average every 5 s
    ) -> None:
        self.policy, self.proc, self.sleep, self.window_s, self.retry_s = policy, proc, sleep, window_s, retry_s

    def check(self, log: Callable[[str], None] | None = None) -> Check:
        waited = 0.0
        while True:
            first = read_sample(self.proc)
            self.sleep(self.window_s)
            last = read_sample(self.proc)
            steal = steal_share(first.cpu, last.cpu)
            reasons = self.policy.reasons(last.load[0], steal)
            if not reasons or waited + self.window_s + self.retry_s > self.policy.settle_s:
                return Check(last, steal, reasons)
            if log is not None and not waited:
                log(f"machine busy ({'; '.join(reasons)}): waiting up to {self.policy.settle_s:g} s for it to settle")
            self.sleep(self.retry_s)
            waited += self.window_s + self.retry_s

    def case_load(self, before: Check) -> CaseLoad:
        """The load around a case that ran since `before`; busy if the machine was before it or
        the steal during it was over the limit (the load after it is the case's own, mostly)."""
        after = read_sample(self.proc)
        steal = steal_share(before.sample.cpu, after.cpu)
        reasons = before.reasons + [f"during the case: {r}" for r in self.policy.steal_reason(steal)]
        return CaseLoad(before.sample.load[0], after.load[0], steal, reasons)


def refusal(what: str, check: Check) -> str:
    """The one line that says why a case or the run was not measured, and what to do."""
    return (
        f"bench: the machine is busy before {what}: {'; '.join(check.reasons)}; run it on a quiet machine, "
        "or pass --allow-busy to measure anyway with the figures marked busy"
    )
