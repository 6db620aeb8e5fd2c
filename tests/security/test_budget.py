"""The issue's budget: at least 10,000 generated inputs per CI run, gRPC and REST together.

Runs last in the session (conftest.py moves it there) and counts only inputs that were sent
and answered (the tally each fuzz test fills), never the examples asked of hypothesis, which
stops early on small input spaces.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import CI_BUDGET, COLLECTED, RAN, SCALE, TALLY


def test_fuzz_inputs_reach_the_ci_budget() -> None:
    if not COLLECTED:
        pytest.skip("no fuzz test in this session: run tests/security (or tests/) as a whole")
    if missing := COLLECTED - RAN:
        pytest.skip(f"{len(missing)} of {len(COLLECTED)} fuzz tests did not run (selected out or skipped)")
    grpc_inputs = sum(n for (target, _), n in TALLY.items() if target.startswith("grpc:"))
    rest_inputs = sum(n for (target, _), n in TALLY.items() if target.startswith("rest:"))
    assert grpc_inputs > 0 and rest_inputs > 0, (grpc_inputs, rest_inputs)
    assert grpc_inputs + rest_inputs >= CI_BUDGET * min(SCALE, 1.0), (
        f"{grpc_inputs} gRPC + {rest_inputs} REST inputs, the budget is {CI_BUDGET}"
    )
