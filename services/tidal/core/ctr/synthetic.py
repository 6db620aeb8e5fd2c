"""The ``ctr_synthetic`` source: click-through-like samples with a planted (known) model.

Each sample has ``len(vocab_sizes)`` categorical fields and ``num_dense`` dense features, and a
0/1 label drawn from a planted logistic model, so the best any model can do is known:

* field ``f``'s id follows a Zipf-like law over ``[0, vocab_sizes[f])`` (a discretised power law
  with exponent ``zipf``: rank ``r`` has probability about proportional to ``(r + 1)^-zipf``;
  0 is uniform), its ranks scattered over the ids by a seeded affine permutation;
* dense features are standard normal;
* the planted logit is ``bias + id_weight * sum_f w_f(id_f) / sqrt(F)
  + dense_weight * beta . x_dense / sqrt(D) + interaction * sum_{f<g} <h_f(id_f), h_g(id_g)> /
  sqrt(hidden_dim * pairs)``, with per-id weights ``w_f(id)`` and ``hidden_dim``-wide hidden
  embeddings ``h_f(id)``, all standard normal, and ``y ~ Bernoulli(sigmoid(logit))``.

Everything, per-id weights included, is a hash of (seed, what, index) (``hashing.py``): no
table is stored, so vocabularies up to 2^24 (16,777,216, the largest id a float32 input holds
exactly) cost no memory, and a sample is computed on demand from its index. The training split
is the whole training set on every worker (map-style; tidal takes each worker's seeded share,
the project's partitioning rules), and a batch depends only on (seed, indices).

A sample's ``x`` is float32 ``[id_0, ..., id_{F-1}, dense_0, ..., dense_{D-1}]``; ``y`` is float32
of shape (1,). The source's objective is bce_with_logits reporting validation AUC. The
validation split's ``planted`` (`PlantedMetrics`) is the planted model's own AUC and log-loss on
it: the Bayes-optimal predictor's scores, for reports to compare against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tidal.core.auc import binary_auc
from tidal.core.climate.args import Args
from tidal.core.errors import InvalidArgumentError
from tidal.core.objectives import Objective, ObjectiveKind
from tidal.core.sources.api import SourceData

from .hashing import normal, stream_key, uniform

__all__ = ["CTR_SYNTHETIC_ARGS", "CtrConfig", "CtrSplit", "PlantedMetrics", "ctr_synthetic", "planted_config"]

NAME = "ctr_synthetic"
MAX_VOCAB = 1 << 24  # ids are carried in float32 inputs, exact up to 2^24
CTR_SYNTHETIC_ARGS = {
    "num_samples", "num_val", "vocab_sizes", "zipf", "num_dense", "hidden_dim",
    "bias", "id_weight", "dense_weight", "interaction",
}  # fmt: skip
_TRAIN, _VAL = 0, 1
_FIELD, _DENSE, _LABEL, _WEIGHT, _HIDDEN, _BETA, _PERM = range(2, 9)


@dataclass(frozen=True)
class CtrConfig:
    seed: int
    vocab_sizes: tuple[int, ...]
    zipf: float
    num_dense: int
    hidden_dim: int
    bias: float
    id_weight: float
    dense_weight: float
    interaction: float


@dataclass(frozen=True)
class PlantedMetrics:
    """The planted model's scores on the validation split: the best any model can do there."""

    auc: float
    log_loss: float
    positive_rate: float


def _ranks(u: np.ndarray, vocab: int, s: float) -> np.ndarray:
    """Zipf-like ranks in [0, vocab): the inverse CDF of a power law on [1, vocab + 1)."""
    top = vocab + 1.0
    if abs(s - 1.0) < 1e-9:
        return np.clip(np.floor(np.exp(u * math.log(top))).astype(np.int64) - 1, 0, vocab - 1)
    x = ((top ** (1.0 - s) - 1.0) * u + 1.0) ** (1.0 / (1.0 - s))
    return np.clip(np.floor(x).astype(np.int64) - 1, 0, vocab - 1)


class _Planted:
    """The planted model of one configuration: ids, features and logits of sample indices."""

    def __init__(self, cfg: CtrConfig) -> None:
        self.cfg = cfg
        self.perm: list[tuple[int, int]] = []
        for f, vocab in enumerate(cfg.vocab_sizes):
            a = 1 + stream_key(cfg.seed, _PERM, f) % vocab
            while math.gcd(a, vocab) != 1:  # a bijection of [0, vocab) needs a coprime factor
                a = a % vocab + 1
            self.perm.append((a, stream_key(cfg.seed, _PERM, f, 1) % vocab))
        self.beta = normal(stream_key(cfg.seed, _BETA), np.arange(cfg.num_dense))

    def ids(self, split: int, index: np.ndarray) -> np.ndarray:
        cols = []
        for f, vocab in enumerate(self.cfg.vocab_sizes):
            rank = _ranks(uniform(stream_key(self.cfg.seed, split, _FIELD, f), index), vocab, self.cfg.zipf)
            a, b = self.perm[f]
            cols.append((a * rank + b) % vocab)
        return np.stack(cols, axis=1)

    def dense(self, split: int, index: np.ndarray) -> np.ndarray:
        cols = [normal(stream_key(self.cfg.seed, split, _DENSE, j), index) for j in range(self.cfg.num_dense)]
        return np.stack(cols, axis=1) if cols else np.zeros((len(index), 0))

    def logit(self, ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
        cfg, fields = self.cfg, len(self.cfg.vocab_sizes)
        z = np.full(len(ids), cfg.bias)
        w = sum(normal(stream_key(cfg.seed, _WEIGHT, f), ids[:, f]) for f in range(fields))
        z += cfg.id_weight * w / math.sqrt(fields)
        if cfg.num_dense:
            z += cfg.dense_weight * (dense @ self.beta) / math.sqrt(cfg.num_dense)
        pairs = fields * (fields - 1) // 2
        if pairs and cfg.interaction:
            k = cfg.hidden_dim
            h = [
                np.stack([normal(stream_key(cfg.seed, _HIDDEN, f, j), ids[:, f]) for j in range(k)], axis=1)
                for f in range(fields)
            ]
            total = h[0] * 0.0
            for f in range(fields):
                total += h[f]
            # sum_{f<g} <h_f, h_g> = (|sum_f h_f|^2 - sum_f |h_f|^2) / 2
            inter = ((total**2).sum(axis=1) - sum((hf**2).sum(axis=1) for hf in h)) / 2
            z += cfg.interaction * inter / math.sqrt(k * pairs)
        return z

    def sample(self, split: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x as float32, 0/1 labels, the planted click probability) of samples ``index``."""
        ids, dense = self.ids(split, index), self.dense(split, index)
        p = 1.0 / (1.0 + np.exp(-self.logit(ids, dense)))
        y = (uniform(stream_key(self.cfg.seed, split, _LABEL), index) < p).astype(np.float32)
        x = np.concatenate([ids.astype(np.float32), dense.astype(np.float32)], axis=1)
        return x, y, p


class CtrSplit:
    """A map-style split of ``length`` samples computed on demand (``__getitems__`` batches)."""

    def __init__(self, planted: _Planted, split: int, length: int) -> None:
        self._planted, self._split, self._length = planted, split, length
        self.planted: PlantedMetrics | None = None  # the validation split's, set by the factory

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(torch.as_tensor(indices, dtype=torch.int64))
        if len(index) and (index.min() < 0 or index.max() >= self._length):
            raise IndexError(f"{NAME}: sample index outside [0, {self._length})")
        x, y, _ = self._planted.sample(self._split, index)
        return torch.from_numpy(x), torch.from_numpy(y)[:, None]

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """(planted click probability, label) of every sample, in order."""
        ps, ys = [], []
        for lo in range(0, self._length, 1 << 16):
            _, y, p = self._planted.sample(self._split, np.arange(lo, min(lo + (1 << 16), self._length)))
            ps.append(p)
            ys.append(y)
        return np.concatenate(ps), np.concatenate(ys)


def _metrics(split: CtrSplit) -> PlantedMetrics:
    p, y = split.probabilities()
    eps = 1e-12
    loss = -float(np.mean(y * np.log(np.maximum(p, eps)) + (1 - y) * np.log(np.maximum(1 - p, eps))))
    return PlantedMetrics(binary_auc(torch.from_numpy(p), torch.from_numpy(y)), loss, float(y.mean()))


def planted_config(seed: int, raw: dict[str, Any]) -> tuple[CtrConfig, int, int]:
    """(the planted model's configuration, training samples, validation samples) of ``dataset.args``."""
    args = Args(raw, CTR_SYNTHETIC_ARGS, NAME)
    vocab = args.int_list("vocab_sizes") if args.has("vocab_sizes") else [1000, 10_000, 100_000]
    if not vocab or not all(2 <= v <= MAX_VOCAB for v in vocab):
        raise InvalidArgumentError(
            f"dataset.args.vocab_sizes must be a non-empty list of integers in [2, {MAX_VOCAB}], got {vocab!r}"
        )
    cfg = CtrConfig(
        seed=seed,
        vocab_sizes=tuple(vocab),
        zipf=args.float("zipf", 1.1, 0.0, 3.0),
        num_dense=args.int("num_dense", 4, 0, 64),
        hidden_dim=args.int("hidden_dim", 4, 1, 64),
        bias=args.float("bias", -1.0, -10.0, 10.0),
        id_weight=args.float("id_weight", 1.0, 0.0, 10.0),
        dense_weight=args.float("dense_weight", 0.5, 0.0, 10.0),
        interaction=args.float("interaction", 0.5, 0.0, 10.0),
    )
    return cfg, args.int("num_samples", 100_000, 1, MAX_VOCAB), args.int("num_val", 10_000, 1, 1 << 22)


def ctr_synthetic(*, rank: int, world_size: int, seed: int, **raw: Any) -> SourceData:
    """The ``ctr_synthetic`` source (see the module docstring). Every worker holds the same
    virtual training set (``rank`` and ``world_size`` select nothing here: tidal partitions)."""
    del rank, world_size
    cfg, num_samples, num_val = planted_config(seed, raw)
    planted = _Planted(cfg)
    train, val = CtrSplit(planted, _TRAIN, num_samples), CtrSplit(planted, _VAL, num_val)
    val.planted = _metrics(val)
    return SourceData(
        train,
        val,
        input_shape=(len(cfg.vocab_sizes) + cfg.num_dense,),
        output_shape=(1,),
        objective=Objective(ObjectiveKind.BCE_WITH_LOGITS, auc=True),
    )
