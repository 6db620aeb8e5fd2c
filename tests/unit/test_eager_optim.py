"""core/eager_optim.py: torch.optim's results bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch

from tidal.core import eager_optim

CASES: list[tuple[type[torch.optim.Optimizer], dict[str, Any]]] = [
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "fused": True}),
    (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.01, "fused": True}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.01, "fused": True}),
    (torch.optim.Adagrad, {"lr": 0.1, "eps": 1e-10, "weight_decay": 0.01, "fused": True}),
    (torch.optim.Adam, {"lr": 0.01}),
]


def _run(cls: type[torch.optim.Optimizer], options: dict[str, Any], eager: bool) -> tuple[torch.Tensor, dict]:
    params = torch.randn(1000, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    grads = torch.randn(4, 1000, generator=torch.Generator().manual_seed(2))
    optimizer = eager_optim.build(cls, [params], **options) if eager else cls([params], **options)
    for i, grad in enumerate(grads):
        optimizer.param_groups[0]["lr"] = options["lr"] / (i + 1)  # as a schedule changes it
        params.grad = grad.clone()
        eager_optim.step(optimizer) if eager else optimizer.step()
    saved = eager_optim.state_dict(optimizer) if eager else optimizer.state_dict()
    return params.detach(), saved


@pytest.mark.parametrize(("cls", "options"), CASES)
def test_same_results_as_torch_optim(cls: type[torch.optim.Optimizer], options: dict[str, Any]) -> None:
    params, saved = _run(cls, options, eager=True)
    expected_params, expected = _run(cls, options, eager=False)
    assert torch.equal(params, expected_params)
    assert saved["param_groups"] == expected["param_groups"]
    assert saved["state"].keys() == expected["state"].keys()
    for key, value in expected["state"][0].items():
        assert torch.equal(saved["state"][0][key], value), key
    assert torch.is_grad_enabled()


def test_state_dict_round_trip() -> None:
    cls, options = CASES[1]
    params, saved = _run(cls, options, eager=True)
    fresh = eager_optim.build(cls, [params.clone().requires_grad_(True)], **options)
    eager_optim.load_state_dict(fresh, saved)
    for key, value in saved["state"][0].items():
        assert torch.equal(fresh.state[fresh.param_groups[0]["params"][0]][key], value), key


def test_a_step_with_hooks_runs_them() -> None:
    params = torch.zeros(3, requires_grad=True)
    optimizer = eager_optim.build(torch.optim.SGD, [params], lr=1.0)
    calls: list[str] = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    params.grad = torch.ones(3)
    eager_optim.step(optimizer)
    assert calls == ["pre", "post"]
    assert torch.equal(params.detach(), -torch.ones(3))


# Run in a fresh process: the warm-up every member runs, a shard's Adam steps, a checkpoint
# written, read back and restored.
SHARD_JOB = """
import sys, tempfile, torch
from pathlib import Path
from tidal.core.checkpoint import CheckpointStore
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_snapshot import restore_shard, snapshot_shard
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec
from tidal.core.training import warm_up

warm_up()
spec = parse_job_spec({"mode": "async", "num_workers": 1, "num_shards": 1, "optimizer": {"name": "adam", "lr": 0.01}})
shard_map = build_shard_map((TensorInfo("w", (4, 5), "float32"),), 1)
state = ShardState(spec, 0, shard_map, torch.linspace(-1, 1, 20), membership_epoch=0, workers=["w0"])
for i in range(3):
    state.push("w0", f"w0:{i}", state.version, 0, torch.full((20,), 0.5))
with tempfile.TemporaryDirectory() as root:
    store = CheckpointStore(Path(root))
    store.write(snapshot_shard("job", state))
    fresh = ShardState(spec, 0, shard_map, None, membership_epoch=0, workers=["w0"])
    restore_shard(fresh, store.load_latest("job", 0)[0])
assert torch.equal(fresh.params.detach(), state.params.detach()) and fresh.version == 3
print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""


def test_a_shard_job_imports_no_torch_dynamo() -> None:
    out = subprocess.run([sys.executable, "-c", SHARD_JOB], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
