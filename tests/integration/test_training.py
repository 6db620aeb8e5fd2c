"""End to end training on a real cluster of processes: exact numerics and accuracy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.integration.helpers import exchange_streams, plan, read_parameters, run_job, shard_addresses
from tidal.core.datasets import batch_indices, load_dataset, partition_indices
from tidal.core.models import build_model
from tidal.launcher import LocalCluster

pytestmark = pytest.mark.integration

# Seattle weather, a small MLP: compact enough to train exactly in seconds.
BASE: dict[str, Any] = {
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}},
    "dataset": {"name": "seattle_weather"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 16,
    "seed": 7,
    "num_shards": 2,
}
# Validation accuracy of always predicting "no rain" on 2015 is 0.605; the MLP reaches ~0.72.
TARGET_ACCURACY = 0.68


def reference_parameters(spec: dict[str, Any], optimizer_steps: int, world_size: int) -> torch.Tensor:
    """Single-process SGD on the mean gradient of the batches each worker would draw."""
    data = load_dataset(spec["dataset"]["name"], {}, spec["seed"])
    model = build_model("mlp", spec["model"]["args"], data.input_shape, data.num_classes, spec["seed"])
    opt = spec["optimizer"]
    optimizer = torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"])
    parts = [partition_indices(len(data.train_y), r, world_size, spec["seed"]) for r in range(world_size)]
    for step in range(optimizer_steps):
        per_worker = []
        for rank, part in enumerate(parts):
            idx = batch_indices(part, spec["batch_size"], step, spec["seed"], rank)
            model.zero_grad()
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            per_worker.append([p.grad.clone() for p in model.parameters()])
        for p, *grads in zip(model.parameters(), *per_worker, strict=True):
            p.grad = torch.stack(grads).mean(dim=0)
        optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="module")
def inline_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Like `cluster`, with TIDAL_SHARED_MEMORY=off: tensors travel inline in the gRPC
    messages, as between hosts (`cluster` moves them through shared memory)."""
    env = {"TIDAL_SHARED_MEMORY": "off"}
    with LocalCluster(tmp_path_factory.mktemp("inline"), num_shards=2, worker_slowdowns=(1.0, 1.0), env=env) as c:
        yield c


@pytest.mark.parametrize("transport", ["shared_memory", "grpc"])
def test_sync_two_workers_two_shards_equals_mean_gradient_sgd(request: pytest.FixtureRequest, transport: str) -> None:
    cluster: LocalCluster = request.getfixturevalue("cluster" if transport == "shared_memory" else "inline_cluster")
    spec = {**BASE, "name": "exact-sync", "mode": "sync", "num_workers": 2, "steps": 25}
    final = run_job(cluster.coordinator_address, spec)
    for shard in ("shard-0", "shard-1"):  # both workers' streams took the path under test
        assert exchange_streams(cluster, shard, transport) >= 2
    _, _, shard_map = plan(spec)
    params, versions = read_parameters(shard_addresses(cluster.coordinator_address), final.job_id, shard_map)
    assert versions == [25, 25]
    expected = reference_parameters(spec, optimizer_steps=25, world_size=2)
    torch.testing.assert_close(params, expected, atol=1e-5, rtol=0)
    # The shards really trained: far from the initial parameters.
    _, model, _ = plan(spec)
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert (params - initial).abs().max() > 1e-2


@pytest.mark.parametrize("transport", ["shared_memory", "grpc"])
def test_async_one_worker_equals_sequential_sgd(request: pytest.FixtureRequest, transport: str) -> None:
    cluster: LocalCluster = request.getfixturevalue("cluster" if transport == "shared_memory" else "inline_cluster")
    spec = {**BASE, "name": "exact-async", "mode": "async", "num_workers": 1, "steps": 30}
    final = run_job(cluster.coordinator_address, spec)
    assert exchange_streams(cluster, "shard-0", transport) >= 1
    assert final.staleness_max == 0
    _, _, shard_map = plan(spec)
    params, versions = read_parameters(shard_addresses(cluster.coordinator_address), final.job_id, shard_map)
    assert versions == [30, 30]
    torch.testing.assert_close(params, reference_parameters(spec, optimizer_steps=30, world_size=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reaches_target_accuracy_on_seattle_weather(cluster: LocalCluster, mode: str) -> None:
    spec = {
        **BASE,
        "name": f"accuracy-{mode}",
        "mode": mode,
        "num_workers": 2,
        "steps": 150,
        "batch_size": 32,
        "eval_every": 50,
        "model": {"name": "mlp", "args": {"hidden": [64, 64]}},
    }
    final = run_job(cluster.coordinator_address, spec)
    # Async's accuracy depends on timing (which version each gradient came from): its bar is the
    # timing-dependent modes' below (0.677 seen once on a loaded machine).
    assert final.val_accuracy >= (TARGET_ACCURACY if mode == "sync" else VARIANT_TARGET_ACCURACY), final
    assert final.version >= final.target_version
    if mode == "sync":
        assert final.samples == 150 * 2 * 32
    else:
        # Async stops when the shards reach 300 updates. Each worker may have one exchange in
        # flight as they do, and it goes on while the shard it heard from last is behind (the
        # shards see concurrent pushes in different orders): up to one extra step per worker
        # (302 x 32 seen in CI).
        assert 300 * 32 <= final.samples <= (300 + 2) * 32
    # Intermediate evaluations by rank 0 plus the final one.
    assert len(final.evals) >= 2
    if mode == "async":
        assert final.updates_applied == final.version * 2  # each shard applied every push
    else:
        assert final.staleness_max == 0


# In these modes timing decides which version each gradient is computed from (or which one is
# dropped), so the final accuracy moves run to run by a few points (0.68-0.75 seen, once 0.679
# for ssp); the bar sits below that spread and still well above the 0.605 majority baseline.
VARIANT_TARGET_ACCURACY = 0.66
MODE_VARIANTS = {
    "sync+backup": {"mode": "sync", "consistency": {"backup_workers": 1}},
    "ssp": {"mode": "ssp", "consistency": {"staleness_bound": 2}},
    "async+inverse-lr+bound": {"mode": "async", "consistency": {"staleness_lr": "inverse", "max_staleness": 8}},
    "async+dc-asgd": {"mode": "async", "consistency": {"compensation": "dc_asgd"}},
    "local_sgd": {"mode": "local_sgd", "consistency": {"sync_every": 4}},
    "auto": {"mode": "auto", "consistency": {"auto_window": 4}},
    "sync+bf16": {"mode": "sync", "compression": {"codec": "bf16"}},
    "async+fp16": {"mode": "async", "compression": {"codec": "fp16"}},
    "sync+topk": {"mode": "sync", "compression": {"codec": "topk", "topk_ratio": 0.1}},
    "local_sgd+topk": {
        "mode": "local_sgd",
        "consistency": {"sync_every": 4},
        "compression": {"codec": "topk", "topk_ratio": 0.2},
    },
    # Learning-rate schedules: applied by the shards (sync) and by the workers' inner optimizer (local SGD).
    "sync+warmup-cosine": {
        "mode": "sync",
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": {"warmup": 10, "decay": "cosine"}},
    },
    "local_sgd+step-decay": {
        "mode": "local_sgd",
        "consistency": {"sync_every": 4},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": {"decay": "step", "every": 50}},
    },
}


@pytest.mark.parametrize("variant", list(MODE_VARIANTS))
def test_every_mode_reaches_target_accuracy(cluster: LocalCluster, variant: str) -> None:
    spec = {
        **BASE,
        **MODE_VARIANTS[variant],
        "name": f"mode-{variant.replace('+', '-')}",
        "num_workers": 2,
        "steps": 150,
        "batch_size": 32,
        "model": {"name": "mlp", "args": {"hidden": [64, 64]}},
    }
    final = run_job(cluster.coordinator_address, spec)
    assert final.val_accuracy >= VARIANT_TARGET_ACCURACY, final
    assert final.version >= final.target_version
