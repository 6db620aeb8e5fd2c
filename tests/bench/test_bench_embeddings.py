"""The bench's embeddings case works end to end in quick mode (tables of 10^4 and 10^5 rows, one
repetition, about 30 s): every row is measured, each goal row says met or not met. Its figures
are not checked (benchmarks are not timed tests), only that they are figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_quick_embeddings_case_measures_traffic_speed_and_accuracy(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--cases", "embeddings", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "## Embedding tables" in text
    rows = [line for line in text.splitlines() if line.startswith("| embeddings")]
    for case, metric in [
        ("embeddings traffic, 10^4 rows", "row bytes per step (pull + push)"),
        ("embeddings traffic, 10^5 rows", "row bytes per step (pull + push)"),
        ("embeddings traffic, 10^5 against 10^4 rows", "bytes per unique id"),
        (
            "embeddings speed, 10^5-row table, dense tensors through shared memory",
            "samples/s, table on the shards by id",
        ),
        ("embeddings accuracy, examples/ctr hybrid against all-sync", "validation AUC"),
        ("embeddings accuracy, examples/ctr hybrid against all-sync", "AUC shortfall (all-sync - hybrid, per seed)"),
        ("embeddings accuracy, examples/ctr hybrid against all-sync", "samples/s"),
    ]:
        found = [r for r in rows if r.startswith(f"| {case} | {metric} | ")]
        assert len(found) == 1, (case, metric, text)
        figure = found[0].split(" | ")[2]
        assert re.fullmatch(r"-?\d+(\.\d+)?", figure), found[0]
    # The four goals, each judged.
    goals = [r for r in text.splitlines() if r.startswith("| embeddings") and ("**met**" in r or "not met" in r)]
    assert len(goals) == 8, text  # four in the goals table, four in the case's
    for goal in ("bytes per unique id ratio <= 1.1", "ratio >= 10", "per seed) <= 0.005", "samples/s ratio > 1"):
        assert any(goal in r for r in goals), (goal, text)
    # Bytes are counted, not computed: the shards' own count of the payload is beside them.
    assert "the shards' count of the payload" in text
