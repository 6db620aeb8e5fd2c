"""Fuzzing fixtures: one in-process cluster per session, a tally of inputs by status code,
and the CI budget: at least `CI_BUDGET` inputs really sent per run, gRPC and REST together.

Every fuzz test adds each input it sends, with the status code it got back, to `TALLY`.
`test_budget.py::test_fuzz_inputs_reach_the_ci_budget` is moved to the end of the session
(`pytest_collection_modifyitems`), so it runs after both fuzz modules whether pytest was given
tests/security or the whole tests/ folder; it checks the total only when every fuzz test of
the session ran (a -k or a single file skips it, with the reason).

TIDAL_FUZZ_SCALE multiplies every test's example count (default 1: about 10,500 inputs,
about two minutes on two cores). TIDAL_FUZZ_REPORT=path writes the tally as JSON (the figures
in docs/security.md come from it).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.inprocess import InProcessCluster

SCALE = float(os.environ.get("TIDAL_FUZZ_SCALE", "1"))
CI_BUDGET = 10_000
TALLY: Counter[tuple[str, str]] = Counter()
FUZZ_MODULES = ("test_fuzz_grpc.py", "test_fuzz_rest.py")
BUDGET_TEST = "test_fuzz_inputs_reach_the_ci_budget"
# Node ids of the fuzz tests collected in this session, and of those that ran to the end.
COLLECTED: set[str] = set()
RAN: set[str] = set()


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


@pytest.fixture(scope="session")
def servers() -> Iterator[InProcessCluster]:
    cluster = InProcessCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def _is_fuzz(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1] in FUZZ_MODULES


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    COLLECTED.update(item.nodeid for item in items if _is_fuzz(item.nodeid))
    last = [item for item in items if item.name == BUDGET_TEST]
    items[:] = [item for item in items if item.name != BUDGET_TEST] + last


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and _is_fuzz(report.nodeid):
        RAN.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (path := os.environ.get("TIDAL_FUZZ_REPORT")) and TALLY:
        by_code: Counter[str] = Counter()
        by_target: Counter[str] = Counter()
        for (target, code), n in TALLY.items():
            by_code[code] += n
            by_target[target] += n
        report = {
            "total": sum(TALLY.values()),
            "by_code": dict(by_code.most_common()),
            "by_target": dict(by_target),
            "by_target_and_code": {f"{t} {c}": n for (t, c), n in sorted(TALLY.items())},
        }
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
