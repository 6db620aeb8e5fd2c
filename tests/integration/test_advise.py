"""`tidal advise` end to end: a real probe on a local cluster, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tidal.core.spec import parse_job_spec
from tidal.security.bundle import create_bundle, environment

pytestmark = pytest.mark.integration

JOB = {
    "name": "advise-me",
    "model": {"name": "mlp", "args": {"hidden": [64, 64]}},
    "dataset": {"name": "seattle_weather"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "steps": 100,
    "num_workers": 3,
    "num_shards": 2,
}


def advise(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(JOB))
    return subprocess.run(
        [sys.executable, "-m", "tidal", "advise", str(spec), "--workdir", str(tmp_path / "work"), *args],
        capture_output=True, text=True, timeout=240, check=False, env=env,
    )  # fmt: skip


def test_advise_works_with_the_tls_settings_the_readme_exports(tmp_path: Path) -> None:
    """`tidal certs pki && export TIDAL_TLS_DIR=... TIDAL_TOKENS_FILE=...`: the probe's services
    run with mutual TLS and their HTTPS /metrics pages are read with the same settings."""
    pki = tmp_path / "pki"
    create_bundle(pki)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")} | environment(pki)
    done = advise(tmp_path, "--probe-steps", "10", "--json", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    workers = json.loads(done.stdout)["workers"]
    assert len(workers) == JOB["num_workers"] and all(w["busy_s"] > 0 for w in workers), workers


def test_advise_finds_the_slow_machine_and_does_not_recommend_plain_sync(tmp_path: Path) -> None:
    done = advise(tmp_path, "--slowdowns", "1,1,6", "--probe-steps", "20", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    workers = {w["worker"]: w for w in answer["workers"]}
    # The probe measured each worker's own pace: rank 2's machine is 6x slower.
    assert workers["rank 2"]["busy_s"] > 2 * max(workers["rank 0"]["busy_s"], workers["rank 1"]["busy_s"])
    assert answer["figures"]["stragglers"] == 1
    recommendation = answer["recommendation"]
    assert recommendation != {"mode": "sync"}, answer["reason"]
    parse_job_spec({**JOB, **recommendation})  # a spec the user can submit as it is
    assert "sync (backup_workers 1)" in answer["estimated_samples_per_s"]
    assert answer["reason"].strip()
    # The convergence check ran: the sync probe after as many samples as the async one.
    assert answer["figures"]["probe_sync_val_loss"] > 0 and answer["figures"]["probe_async_val_loss"] > 0
    assert "After the same 1920 samples" in answer["reason"]  # 20 steps x 3 workers x 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slowdowns", "1,x,3"], "--slowdowns: expected numbers separated by commas"),
        (["--slowdowns", "1,1"], "--slowdowns: 2 values for the job's 3 workers"),
        (["--slowdowns", "1,1,0.5"], "--slowdowns: every factor must lie in [1, 1000]"),
    ],
)
def test_advise_bad_input_is_one_line_and_non_zero(tmp_path: Path, args: list[str], message: str) -> None:
    done = advise(tmp_path, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
