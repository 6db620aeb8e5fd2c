"""A job's objective and precision on a real cluster of processes: a user loss function behind
the operator's allow-list trains under bf16 and names its metric in the job's status; fp16
trains with loss scaling; an objective the data set cannot serve fails the job by name."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import run_job, submit, wait_for_job
from tidal.config import SECURITY_ENV
from tidal.launcher import LocalCluster
from tidal.v1 import common_pb2 as common_pb

pytestmark = pytest.mark.integration

LOSS_MODULE = "tidal_it_losses"
BASE: dict[str, Any] = {
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "dataset": {"name": "seattle_weather"},
    "batch_size": 16,
    "seed": 3,
    "num_workers": 2,
    "num_shards": 2,
    "steps": 10,
    "eval_every": 5,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def user_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster whose operator allows model and loss code from LOSS_MODULE only."""
    code = tmp_path_factory.mktemp("code")
    (code / f"{LOSS_MODULE}.py").write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F

            def smoothed(out, target):
                return F.cross_entropy(out, target, label_smoothing=0.1)
            """
        )
    )
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, SECURITY_ENV["model_modules"]: LOSS_MODULE}
    workdir = Path(tmp_path_factory.mktemp("objectives"))
    with LocalCluster(workdir, num_shards=2, worker_slowdowns=(1.0, 1.0), env=env) as c:
        yield c


def test_a_user_objective_trains_in_bf16_and_names_its_metric(user_cluster: LocalCluster) -> None:
    spec = {**BASE, "name": "user-bf16", "objective": f"{LOSS_MODULE}:smoothed", "precision": "bf16"}
    final = run_job(user_cluster.coordinator_address, spec)
    assert (final.val_metric, final.val_metric_higher_is_better) == ("smoothed", False)
    assert final.val_accuracy == pytest.approx(final.val_loss)  # a user objective's metric is its loss
    assert {e.metric for e in final.evals} == {"smoothed"} and len(final.evals) >= 2


def test_fp16_trains_with_loss_scaling(user_cluster: LocalCluster) -> None:
    final = run_job(user_cluster.coordinator_address, {**BASE, "name": "fp16", "precision": "fp16"})
    assert (final.val_metric, final.val_metric_higher_is_better) == ("accuracy", True)
    assert 0.0 < final.val_accuracy <= 1.0


def test_an_objective_the_data_cannot_serve_fails_the_job_by_name(user_cluster: LocalCluster) -> None:
    address = user_cluster.coordinator_address
    job = submit(address, {**BASE, "name": "mae-on-classes", "objective": "mae"})
    final = wait_for_job(address, job.job_id)
    assert final.state == common_pb.JOB_STATE_FAILED
    assert "objective: mae needs targets shaped like the model output" in final.message
