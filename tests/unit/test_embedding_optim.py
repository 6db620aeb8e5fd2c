"""The shards' row-wise optimizers against torch's own sparse ones (a contract table).

Reference: for each row, an nn.Embedding(1, dim, sparse=True) with its own torch optimizer,
stepped only when the row is pushed; its step count is then the row's push count, which is
what core/embeddings/optim.py counts. SGD and Adagrad are also held to one optimizer over the
whole table (their update of a row does not depend on the table's step count).
"""

from __future__ import annotations

import pytest
import torch

from tidal.core.embeddings.init import initial_rows
from tidal.core.embeddings.spec import EmbeddingTableSpec
from tidal.core.embeddings.table import RowTable

NUM, DIM, STEPS = 12, 5, 30

CASES = {
    "sgd": ({"name": "sgd", "lr": 0.3}, lambda p: torch.optim.SGD(p, lr=0.3)),
    "adagrad": (
        {"name": "adagrad", "lr": 0.2, "eps": 1e-10, "initial_accumulator_value": 0.1},
        lambda p: torch.optim.Adagrad(p, lr=0.2, eps=1e-10, initial_accumulator_value=0.1),
    ),
    "adam": (
        {"name": "adam", "lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
        lambda p: torch.optim.SparseAdam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    ),
}


def _table(optimizer: dict) -> RowTable:
    spec = EmbeddingTableSpec(name="t", num_embeddings=NUM, dim=DIM, optimizer=optimizer)
    return RowTable(spec, seed=3, max_rows=NUM)


def _pushes(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS pushes of random unique ids (some rows often, some rarely) with random gradients."""
    g = torch.Generator().manual_seed(seed)
    pushes = []
    for _ in range(STEPS):
        count = int(torch.randint(1, NUM + 1, (1,), generator=g))
        ids = torch.randperm(NUM, generator=g)[:count]
        pushes.append((ids, torch.randn(count, DIM, generator=g)))
    return pushes


@pytest.mark.parametrize("name", sorted(CASES))
def test_row_wise_update_equals_torch_per_row(name: str) -> None:
    options, make = CASES[name]
    table = _table(options)
    start = initial_rows(3, "t", torch.arange(NUM), DIM, table.spec.init)
    rows = [torch.nn.Embedding(1, DIM, sparse=True, _weight=start[i : i + 1].clone()) for i in range(NUM)]
    optimizers = [make(list(r.parameters())) for r in rows]
    for ids, grads in _pushes(seed=1):
        table.apply(ids, grads)
        for i, grad in zip(ids.tolist(), grads, strict=True):
            optimizers[i].zero_grad()
            rows[i](torch.tensor([0])).mul(grad).sum().backward()
            optimizers[i].step()
    expected = torch.cat([r.weight.detach() for r in rows])
    got, held = table.read(torch.arange(NUM), touch=False)
    assert bool(held.any())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, start), "the pushes moved the rows"


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_row_wise_update_equals_one_torch_optimizer_over_the_table(name: str) -> None:
    options, make = CASES[name]
    table = _table(options)
    start = initial_rows(3, "t", torch.arange(NUM), DIM, table.spec.init)
    embedding = torch.nn.Embedding(NUM, DIM, sparse=True, _weight=start.clone())
    optimizer = make(list(embedding.parameters()))
    for ids, grads in _pushes(seed=2):
        table.apply(ids, grads)
        optimizer.zero_grad()
        (embedding(ids) * grads).sum().backward()
        optimizer.step()
    got = table.read(torch.arange(NUM), touch=False)[0]
    torch.testing.assert_close(got, embedding.weight.detach(), rtol=1e-5, atol=1e-6)


def test_adam_bias_correction_counts_each_rows_own_pushes() -> None:
    """Hand-derived: a row's first push moves it by lr * sign(g) (m/sqrt(v) = g/|g| at t=1),
    whatever the table's other rows did before."""
    table = _table({"name": "adam", "lr": 0.1, "eps": 1e-12})
    for _ in range(5):
        table.apply(torch.tensor([0]), torch.full((1, DIM), 3.0))
    before = table.read(torch.tensor([1]), touch=False)[0]
    table.apply(torch.tensor([1]), torch.tensor([[2.0, -2.0, 0.5, -0.5, 1.0]]))
    moved = table.read(torch.tensor([1]), touch=False)[0] - before
    torch.testing.assert_close(moved, torch.tensor([[-0.1, 0.1, -0.1, 0.1, -0.1]]), rtol=1e-5, atol=1e-6)
