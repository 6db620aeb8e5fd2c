"""tidal.nn.ShardedEmbedding against torch.nn.Embedding with the same weights: the same output,
and the same gradient once torch's dense gradient is reduced to the rows the batch read. The
row source here is an in-process table (LocalRows), the network's stand-in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tidal.nn import (
    LocalRows,
    RowGradient,
    RowSource,
    ShardedEmbedding,
    bind_rows,
    embedding_tables,
    reset_rows,
    row_gradients,
    row_stats,
)

ROWS, DIM = 50, 4


def _pair(seed: int = 0) -> tuple[LocalRows, nn.Embedding]:
    rows = LocalRows({"t": (ROWS, DIM)}, lr=0.1, seed=seed, init_std=1.0)
    dense = nn.Embedding(ROWS, DIM)
    with torch.no_grad():
        dense.weight.copy_(rows.tables["t"])
    return rows, dense


def _dense_rows(weight_grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's dense gradient as (ids with a nonzero gradient, their rows)."""
    ids = weight_grad.abs().sum(dim=1).nonzero().reshape(-1)
    return ids, weight_grad[ids]


def _by_table(grads: list[RowGradient]) -> dict[str, RowGradient]:
    assert len({g.table for g in grads}) == len(grads), "one record per table"
    return {g.table: g for g in grads}


def test_forward_and_gradient_equal_nn_embedding_with_duplicate_ids() -> None:
    rows, dense = _pair()
    layer = ShardedEmbedding("t", DIM)
    assert isinstance(rows, RowSource)
    bind_rows(layer, rows)
    ids = torch.tensor([[3, 7, 3], [7, 7, 41]])
    weight = torch.randn(2, 3, DIM)

    out = layer(ids)
    assert out.shape == (2, 3, DIM) and torch.equal(out, dense(ids))
    (out * weight).sum().backward()
    (dense(ids) * weight).sum().backward()

    (grad,) = row_gradients(layer)
    assert grad.table == "t" and torch.equal(grad.ids, torch.tensor([3, 7, 41]))
    ids_dense, rows_dense = _dense_rows(dense.weight.grad)
    assert torch.equal(grad.ids, ids_dense) and torch.allclose(grad.grad, rows_dense, atol=1e-6)
    assert row_gradients(layer) == []  # taken: the next step starts empty


def test_only_the_unique_ids_are_pulled_once_per_forward() -> None:
    pulled: list[torch.Tensor] = []

    class Recording:
        def pull(self, table: str, ids: torch.Tensor) -> torch.Tensor:
            pulled.append(ids)
            return torch.ones(len(ids), DIM)

    layer = ShardedEmbedding("t", DIM)
    bind_rows(layer, Recording())
    layer(torch.tensor([5, 5, 9, 5, 1]))
    assert len(pulled) == 1 and torch.equal(pulled[0], torch.tensor([1, 5, 9]))
    assert pulled[0].dtype == torch.int64


class TwoReaders(nn.Module):
    """Two layers on one table plus one layer called twice, and a second table."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = ShardedEmbedding("t", DIM), ShardedEmbedding("t", DIM), ShardedEmbedding("u", 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        both = self.a(ids[:, 0]) * self.b(ids[:, 1]) + self.a(ids[:, 1])
        return both.sum(dim=1) + self.c(ids[:, 0]).sum(dim=1)


class DenseTwoReaders(nn.Module):
    def __init__(self, t: nn.Embedding, u: nn.Embedding) -> None:
        super().__init__()
        self.t, self.u = t, u

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        both = self.t(ids[:, 0]) * self.t(ids[:, 1]) + self.t(ids[:, 1])
        return both.sum(dim=1) + self.u(ids[:, 0]).sum(dim=1)


def test_one_table_read_in_several_places_gives_one_summed_record() -> None:
    rows = LocalRows({"t": (ROWS, DIM), "u": (ROWS, 2)}, lr=0.1, seed=1, init_std=1.0)
    t, u = nn.Embedding(ROWS, DIM), nn.Embedding(ROWS, 2)
    with torch.no_grad():
        t.weight.copy_(rows.tables["t"])
        u.weight.copy_(rows.tables["u"])
    model, dense = TwoReaders(), DenseTwoReaders(t, u)
    assert bind_rows(model, rows) == {"t": DIM, "u": 2} == embedding_tables(model)
    ids = torch.tensor([[1, 2], [2, 2], [9, 1], [1, 30]])

    out = model(ids)
    assert torch.allclose(out, dense(ids))
    stats = row_stats(model)
    assert (stats["t"].seen, stats["t"].unique) == (12, 4) and stats["t"].unique_ratio == pytest.approx(4 / 12)
    assert (stats["u"].seen, stats["u"].unique) == (4, 3)
    out.pow(2).sum().backward()
    dense(ids).pow(2).sum().backward()

    grads = _by_table(row_gradients(model))
    for name, emb in (("t", t), ("u", u)):
        ids_dense, rows_dense = _dense_rows(emb.weight.grad)
        assert torch.equal(grads[name].ids, ids_dense)
        assert torch.allclose(grads[name].grad, rows_dense, atol=1e-5)
    assert row_stats(model) == {}


def test_row_sgd_matches_torch_sgd_on_the_dense_table() -> None:
    rows, dense = _pair(seed=2)
    layer = ShardedEmbedding("t", DIM)
    bind_rows(layer, rows)
    opt = torch.optim.SGD(dense.parameters(), lr=0.1)
    for step in range(3):
        ids = torch.randint(0, ROWS, (16,), generator=torch.Generator().manual_seed(step))
        layer(ids).tanh().sum().backward()
        rows.apply(row_gradients(layer))
        opt.zero_grad()
        dense(ids).tanh().sum().backward()
        opt.step()
    assert torch.allclose(rows.tables["t"], dense.weight.detach(), atol=1e-6)


def test_an_unbound_layer_names_its_table() -> None:
    model = nn.Sequential(ShardedEmbedding("clicks", DIM))
    with pytest.raises(RuntimeError, match=r"'clicks'.*no row source is bound"):
        model(torch.tensor([1]))
    rows, _ = _pair()
    bind_rows(model, rows)
    bind_rows(model, None)
    with pytest.raises(RuntimeError, match="'clicks'"):
        model(torch.tensor([1]))


def test_an_empty_batch_pulls_nothing_and_pushes_nothing() -> None:
    rows, _ = _pair()
    layer = ShardedEmbedding("t", DIM)
    bind_rows(layer, rows)
    out = layer(torch.zeros(0, 3, dtype=torch.int64))
    assert out.shape == (0, 3, DIM) and rows.pulls == 0
    assert row_gradients(layer) == [] and row_stats(layer) == {}


def test_evaluation_without_grad_records_nothing() -> None:
    rows, dense = _pair()
    layer = ShardedEmbedding("t", DIM)
    bind_rows(layer, rows)
    with torch.no_grad():
        assert torch.equal(layer(torch.tensor([4, 4])), dense(torch.tensor([4, 4])))
    assert row_gradients(layer) == []


def test_a_forward_without_backward_gives_zero_rows_and_reset_forgets() -> None:
    rows, _ = _pair()
    layer = ShardedEmbedding("t", DIM)
    bind_rows(layer, rows)
    layer(torch.tensor([2, 3]))
    (grad,) = row_gradients(layer)
    assert torch.equal(grad.grad, torch.zeros(2, DIM))
    layer(torch.tensor([2, 3]))
    reset_rows(layer)
    assert row_gradients(layer) == []


def test_bad_input_is_refused_clearly() -> None:
    rows, _ = _pair()
    layer = ShardedEmbedding("t", DIM)
    bind_rows(layer, rows)
    with pytest.raises(TypeError, match="'t': ids must be an integer tensor"):
        layer(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        ShardedEmbedding("t", 0)
    with pytest.raises(ValueError, match="read with dim 4 and with dim 3"):
        embedding_tables(nn.Sequential(ShardedEmbedding("t", 4), ShardedEmbedding("t", 3)))

    class Short:
        def pull(self, table: str, ids: torch.Tensor) -> torch.Tensor:
            return torch.zeros(1, DIM)

    bind_rows(layer, Short())
    with pytest.raises(RuntimeError, match=r"returned \(1, 4\) for 2 ids, expected \(2, 4\)"):
        layer(torch.tensor([1, 2]))
