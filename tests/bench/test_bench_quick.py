"""The benchmark suite works end to end (quick mode: small sizes, one repetition). Its
figures are not checked: benchmarks are not timed tests; the committed bench/RESULTS.md
comes from a full run. Quick mode runs on shared CI machines: it records the load beside every
figure and marks busy cases, but never refuses one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tidal.transport.limits import CHUNK_BYTES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration
CASES = "serde,memory,wire,sync,async,e2e,target,control"


# About 2 minutes on an idle 2-core machine; the bound leaves room for a loaded one.
@pytest.mark.timeout(660)
def test_quick_mode_measures_every_case_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        # Every case but network, which test_bench_network.py runs alone (it needs root and checks its teardown).
        [sys.executable, "-m", "bench", "--quick", "--cases", CASES, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Goals", "## Data plane", "## What the changes bought", "## Memory", "## End to end",
                    "## Control plane"):  # fmt: skip
        assert heading in text, heading
    for case in ("wire 1.0M params", "sync step W=2", "async 2 trainers", "serde 1M", "shard memory",
                 "end to end, 1 worker, sync", "end to end, 1 worker, async", "time to target, 2 workers, sync",
                 "time to target, 2 workers, async", "control plane, 64 members"):  # fmt: skip
        assert case in text, case
    # tidal is measured both ways it moves tensors: inline in gRPC and through shared memory.
    for variant in ("(float32, shared memory)", "(float32, gRPC)", "tensors through shared memory", "inline in gRPC"):
        assert variant in text, variant
    # The wire's ceiling says which message size was its fastest (quick tries tidal's alone).
    assert f"the bare stream's fastest message size per repetition: {CHUNK_BYTES >> 20} MiB" in text
    # Every measured row has a number, never "n/a" or NaN.
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| case", "| goal"))]
    assert rows
    assert not [r for r in rows if "n/a" in r or "nan" in r], text
    # Every figure has the load it was measured under: 1-min load before and after, CPU steal.
    load_cell = re.compile(r"\| (\*\*busy\*\*: )?\d+\.\d\d, \d+\.\d\d; \d+\.\d% \|$")
    assert not [r for r in rows if not load_cell.search(r)], text
    assert "- **Quiet machine**: a case counts as busy when the 1-min load average" in text
    assert re.search(r"\*\*Machine\*\*: .+ \d+ CPUs", text)
    assert "**Versions**: Python" in text and "torch 2.13.0" in text
