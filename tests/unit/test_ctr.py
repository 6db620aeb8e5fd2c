"""The click-through pieces of issue 20 on one process: the ``ctr_synthetic`` source and its
planted model, the exact AUC metric, the ``ctr_mlp`` model (sharded and dense tables), and the
single-process reference showing the planted model is learnable with row-wise SGD."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
import torch

from tidal.core.auc import binary_auc
from tidal.core.ctr.flights import FIELDS
from tidal.core.ctr.reference import train_reference
from tidal.core.ctr.synthetic import ctr_synthetic
from tidal.core.errors import InvalidArgumentError
from tidal.core.models import build_model
from tidal.core.objectives import Metric, Objective, ObjectiveKind, job_objective
from tidal.core.sources.batches import eval_batches
from tidal.core.sources.registry import load_job_data
from tidal.core.training import evaluate
from tidal.nn import LocalRows, ShardedEmbedding, bind_rows, embedding_tables, row_gradients

SMALL = {"vocab_sizes": [50, 1000], "num_samples": 500, "num_val": 300, "num_dense": 2}


def _brute_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pairwise_count_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (80,), generator=gen).float()  # many ties
    labels = torch.randint(0, 2, (80,), generator=gen)
    assert binary_auc(scores, labels) == pytest.approx(_brute_auc(scores.tolist(), labels.tolist()))
    assert binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert binary_auc(torch.tensor([0.3, 0.3, 0.3]), torch.tensor([0, 1, 1])) == 0.5
    assert binary_auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) == 0.5  # one class: chance


def test_evaluate_reports_exact_auc_over_every_batch() -> None:
    model = torch.nn.Linear(3, 1)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    y = (torch.rand(50, 1, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    objective = Objective(ObjectiveKind.BCE_WITH_LOGITS, auc=True)
    batches = [(x[i : i + 7], y[i : i + 7]) for i in range(0, 50, 7)]
    result = evaluate(model, batches, objective)
    with torch.no_grad():
        expected, loss = binary_auc(model(x), y), float(objective.loss(model(x), y))
    assert result.metric == Metric("auc", True) and result.accuracy == pytest.approx(expected)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    # The spec naming the same objective keeps the data set's AUC; plain bce reports accuracy.
    assert job_objective("bce_with_logits", objective, ()).metric.name == "auc"
    assert Objective(ObjectiveKind.BCE_WITH_LOGITS).metric.name == "accuracy"


def test_samples_are_a_function_of_seed_and_index() -> None:
    a = ctr_synthetic(rank=0, world_size=1, seed=4, **SMALL)
    b = ctr_synthetic(rank=1, world_size=3, seed=4, **SMALL)
    xa, ya = a.train.__getitems__([7, 3, 7, 499])
    xb, yb = b.train.__getitems__([7, 3, 7, 499])
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa[0], xa[2])
    x1, y1 = a.train[3]
    assert torch.equal(x1, xa[1]) and torch.equal(y1, ya[1])
    other, _ = ctr_synthetic(rank=0, world_size=1, seed=5, **SMALL).train.__getitems__([7, 3])
    assert not torch.equal(other, xa[:2])
    assert not torch.equal(a.val.__getitems__([0, 1])[0], xa[:2])  # validation is its own draw
    ids = xa[:, :2]
    assert torch.equal(ids, ids.round()) and bool((ids >= 0).all())
    assert bool((ids[:, 0] < 50).all()) and bool((ids[:, 1] < 1000).all())
    assert set(ya.reshape(-1).tolist()) <= {0.0, 1.0} and ya.shape == (4, 1)
    with pytest.raises(IndexError):
        a.train.__getitems__([500])


def test_ids_follow_the_zipf_exponent() -> None:
    def top_share(zipf: float) -> float:
        data = ctr_synthetic(rank=0, world_size=1, seed=1, vocab_sizes=[1000], num_val=1, zipf=zipf)
        ids = data.train.__getitems__(list(range(20_000)))[0][:, 0].long()
        counts = torch.bincount(ids, minlength=1000).sort(descending=True).values
        return float(counts[:10].sum()) / 20_000

    # The ten most frequent of 1000 ids: 1% of draws if uniform; otherwise the power law's mass
    # on its first ten ranks, ln(11)/ln(1001) for exponent 1, (1 - 11^-0.5)/(1 - 1001^-0.5) for 1.5.
    assert top_share(0.0) < 0.025
    assert top_share(1.0) == pytest.approx(math.log(11) / math.log(1001), abs=0.02)
    assert top_share(1.5) == pytest.approx((1 - 11**-0.5) / (1 - 1001**-0.5), abs=0.02)


def test_the_planted_model_is_calibrated_and_beats_chance() -> None:
    data = ctr_synthetic(rank=0, world_size=1, seed=2, vocab_sizes=[100, 100, 100], num_val=20_000)
    planted = data.val.planted
    p, y = data.val.probabilities()
    assert 0.65 < planted.auc < 0.95 and planted.positive_rate == pytest.approx(float(y.mean()))
    assert float(y.mean()) == pytest.approx(float(p.mean()), abs=0.015)  # labels are drawn from p
    assert planted.log_loss < -(y.mean() * np.log(y.mean()) + (1 - y.mean()) * np.log(1 - y.mean()))
    # No signal, no skill: the planted AUC of a constant logit is chance.
    flat = ctr_synthetic(rank=0, world_size=1, seed=2, id_weight=0, dense_weight=0, interaction=0, num_val=2000)
    assert flat.val.planted.auc == 0.5


def test_a_ten_million_row_vocabulary_stores_no_table() -> None:
    tracemalloc.start()
    try:
        data = ctr_synthetic(rank=0, world_size=1, seed=0, vocab_sizes=[10_000_000] * 4, num_val=5000)
        x, _ = data.train.__getitems__(list(range(4096)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # a dense 10^7 x 4 planted table alone would be 320 MB per field
    assert float(x[:, :4].max()) < 10_000_000 and float(x[:, :4].max()) > 1_000_000


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"vocab_sizes": [1 << 25]}, "dataset.args.vocab_sizes"),
        ({"vocab_sizes": []}, "dataset.args.vocab_sizes"),
        ({"zipf": -1}, "dataset.args.zipf"),
        ({"num_samples": 0}, "dataset.args.num_samples"),
        ({"colour": 1}, "dataset.args.colour is not an argument"),
    ],
)
def test_bad_args_are_refused_naming_the_key(args: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        load_job_data("ctr_synthetic", args, 0, model_modules=None)


def test_the_source_trains_with_bce_and_reports_auc() -> None:
    data = load_job_data("ctr_synthetic", SMALL, 0, model_modules=None)
    assert data.objective.metric == Metric("auc", True) and data.num_classes == 1
    assert data.input_shape == (4,) and data.val_spec.y_shape == (1,)


def _ctr_model(dense: bool) -> torch.nn.Module:
    args: dict[str, object] = {"fields": ["small", "big", "small"], "dim": {"small": 3, "big": 5}, "hidden": [8]}
    if dense:
        args |= {"dense_tables": True, "table_rows": {"small": 50, "big": 1000}}
    return build_model("ctr_mlp", args, (5,), 1, seed=9)


def test_ctr_mlp_sharded_and_dense_tables_compute_the_same() -> None:
    sharded, dense = _ctr_model(False), _ctr_model(True)
    assert embedding_tables(sharded) == {"big": 5, "small": 3} and embedding_tables(dense) == {}
    assert sum(p.numel() for p in sharded.parameters()) + 50 * 3 + 1000 * 5 == sum(
        p.numel() for p in dense.parameters()
    )
    rows = LocalRows({"small": (50, 3), "big": (1000, 5)}, lr=0.1, seed=0)
    with torch.no_grad():
        dense.tables[0].weight.copy_(rows.tables["small"])
        dense.tables[1].weight.copy_(rows.tables["big"])
    bind_rows(sharded, rows)
    x = torch.tensor([[1.0, 999.0, 1.0, 0.5, -0.5], [49.0, 0.0, 2.0, 1.0, 2.0]])
    out_s, out_d = sharded(x), dense(x)
    assert out_s.shape == (2, 1) and torch.allclose(out_s, out_d)
    out_s.sum().backward()
    out_d.sum().backward()
    grads = {g.table: g for g in row_gradients(sharded)}
    assert torch.equal(grads["small"].ids, torch.tensor([1, 2, 49]))  # two fields share "small"
    for i, name in enumerate(("small", "big")):
        weight_grad = dense.tables[i].weight.grad
        assert torch.allclose(grads[name].grad, weight_grad[grads[name].ids], atol=1e-6)
        untouched = torch.ones(len(weight_grad), dtype=torch.bool)
        untouched[grads[name].ids] = False
        assert bool((weight_grad[untouched] == 0).all())
    assert sum(isinstance(m, ShardedEmbedding) for m in sharded.modules()) == 2


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({}, "model.args.fields"),
        ({"fields": ["a"] * 6}, "names 6 categorical columns"),
        ({"fields": ["a"], "dim": 0}, "model.args.dim"),
        ({"fields": ["a"], "dense_tables": True}, "model.args.table_rows is required"),
        ({"fields": ["a"], "table_rows": {"a": 3}}, "model.args.table_rows is for dense_tables"),
        ({"fields": ["a", "b"], "dense_tables": True, "table_rows": {"a": 3}}, "model.args.table_rows"),
    ],
)
def test_ctr_mlp_bad_args_name_the_key(args: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        build_model("ctr_mlp", args, (5,), 1, seed=0)


def test_single_process_reference_learns_the_planted_model() -> None:
    """Row-wise SGD on in-process tables + Adam on the MLP, 500 batches of 256: validation AUC
    well above chance and within reach of the planted model's (the Bayes-optimal) AUC."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared machine
    try:
        run = train_reference(
            dataset="ctr_synthetic",
            data_args={"vocab_sizes": [1000, 10_000, 100_000], "num_samples": 200_000, "num_val": 10_000},
            model_args={"fields": ["a", "b", "c"], "dim": 8, "hidden": [32, 16]},
            table_rows={"a": 1000, "b": 10_000, "c": 100_000},
            seed=3,
            steps=500,
            batch_size=256,
            row_lr=50.0,
            dense_lr=0.005,
        )
    finally:
        torch.set_num_threads(threads)
    planted = run.val.planted
    assert run.final.metric.name == "auc" and abs(run.initial.accuracy - 0.5) < 0.1
    assert run.final.accuracy > 0.70 and planted.auc - run.final.accuracy < 0.08
    assert run.final.loss < run.initial.loss and run.final.loss < planted.log_loss + 0.08
    assert sum(run.losses[-50:]) < sum(run.losses[:50])
    # The evaluation path the workers use scores the same AUC from the validation batches.
    assert len(list(eval_batches(load_job_data("ctr_synthetic", SMALL, 0, model_modules=None)))) == 1


def test_flights_are_real_categorical_data_with_known_vocabularies() -> None:
    data = load_job_data("ctr_flights", {}, 0, model_modules=None)
    vocab = data.train.vocab_sizes
    assert list(vocab) == list(FIELDS) and vocab["carrier"] == 16 and vocab["origin"] == 3
    assert vocab["route"] > 5000 and vocab["tailnum"] > 4000 and vocab["weekday"] == 7
    assert len(data.train) + len(data.val) == 327_346 and len(data.val) == 32_735
    x, y = data.train.x, data.train.y
    ids = x[:, : len(FIELDS)]
    assert torch.equal(ids, ids.round()) and bool((ids >= 0).all())
    assert all(int(ids[:, i].max()) == vocab[f] - 1 for i, f in enumerate(FIELDS))
    assert float(y.mean()) == pytest.approx(0.237, abs=0.005)  # BTS: late is > 15 minutes
    dense = x[:, len(FIELDS) :]
    assert torch.allclose(dense.mean(dim=0), torch.zeros(3), atol=1e-3)  # standardised on train
    assert data.objective.metric.name == "auc"
    other = load_job_data("ctr_flights", {}, 1, model_modules=None)
    assert not torch.equal(other.val.x[:100], data.val.x[:100])  # the split follows the seed
    with pytest.raises(InvalidArgumentError, match=r"dataset\.args\.val_fraction"):
        load_job_data("ctr_flights", {"val_fraction": 1.5}, 0, model_modules=None)


def test_flight_delays_are_learnable_with_sharded_tables() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_job_data("ctr_flights", {}, 3, model_modules=None)
        run = train_reference(
            dataset="ctr_flights",
            data_args={},
            model_args={"fields": list(FIELDS), "dim": 8, "hidden": [64, 32]},
            table_rows=data.train.vocab_sizes,
            seed=3,
            steps=300,
            batch_size=512,
            row_lr=50.0,
            dense_lr=0.003,
        )
    finally:
        torch.set_num_threads(threads)
    rate = float(data.val.y.mean())
    base_rate_loss = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert run.final.accuracy > 0.66 and run.final.accuracy > run.initial.accuracy + 0.03
    assert run.final.loss < base_rate_loss - 0.03
