"""A team's own data factory, model and objective, importable by the workers only, train on a
real cluster exactly as single-process large-batch SGD does (issue 14)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.integration.byo import BYO_DIR, PACKAGE, WORKERS, byo_cluster, can_import_package
from tests.integration.helpers import plan, read_parameters, run_job, shard_addresses
from tidal.core.datasets import partition_indices
from tidal.core.models import build_model
from tidal.core.sources.batches import TrainBatches
from tidal.core.sources.registry import load_job_data
from tidal.launcher import LocalCluster

pytestmark = pytest.mark.integration

SPEC: dict[str, Any] = {
    "name": "byo-exact-sync",
    "mode": "sync",
    "dataset": {"name": f"{PACKAGE}.data:points", "args": {"num_samples": 64}},
    "model": {"name": f"{PACKAGE}.models:two_layer", "args": {"width": 16}},
    "objective": f"{PACKAGE}.losses:smoothed_cross_entropy",
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "batch_size": 8,
    "seed": 11,
    "num_workers": 2,
    "num_shards": 2,
    "steps": 12,
}


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with byo_cluster(tmp_path_factory.mktemp("byo-training")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def team_code() -> Iterator[None]:
    """This process plays the single-process reference: it imports the team's package too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BYO_DIR))
        yield


def reference_parameters(spec: dict[str, Any], world_size: int) -> torch.Tensor:
    """Single-process SGD on the mean gradient of the batches each worker draws, read from the
    team's own source with tidal's batch order (TrainBatches) and its own loss function."""
    seed, dataset = spec["seed"], spec["dataset"]
    data = load_job_data(dataset["name"], dataset["args"], seed, 0, 1, model_modules=None)
    model_args = spec["model"]["args"]
    model = build_model(spec["model"]["name"], model_args, data.input_shape, data.num_classes, seed)
    loss_fn = importlib.import_module(f"{PACKAGE}.losses").smoothed_cross_entropy
    opt = spec["optimizer"]
    optimizer = torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"])
    batches = [
        TrainBatches(data, partition_indices(len(data.train), rank, world_size, seed), spec["batch_size"], seed, rank)
        for rank in range(world_size)
    ]
    for step in range(spec["steps"]):
        per_worker = []
        for batch in batches:
            x, y = batch(step)
            model.zero_grad()
            loss_fn(model(x), y).backward()
            per_worker.append([p.grad.clone() for p in model.parameters()])
        for p, *grads in zip(model.parameters(), *per_worker, strict=True):
            p.grad = torch.stack(grads).mean(dim=0)
        optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_only_the_workers_can_import_the_teams_package(byo: LocalCluster) -> None:
    assert [can_import_package(byo, name) for name in ("coordinator", "shard-0", "shard-1")] == [False] * 3
    assert all(can_import_package(byo, name) for name in WORKERS)


def test_sync_with_user_code_equals_single_process_large_batch_sgd(byo: LocalCluster, team_code: None) -> None:
    final = run_job(byo.coordinator_address, SPEC)
    assert final.val_metric == "smoothed_cross_entropy"  # the team's objective evaluated it
    _, model, shard_map = plan(SPEC)
    params, versions = read_parameters(shard_addresses(byo.coordinator_address), final.job_id, shard_map)
    assert versions == [SPEC["steps"]] * 2
    torch.testing.assert_close(params, reference_parameters(SPEC, world_size=2), atol=1e-6, rtol=0)
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert (params - initial).abs().max() > 1e-2  # it really trained
