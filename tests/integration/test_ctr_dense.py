"""The click-through pieces on a real cluster of processes (coordinator, a shard, two workers):
``ctr_mlp`` with its tables as dense parameters (the baseline of issue 20's speed goal) trains
on ``ctr_synthetic`` and the job reports the source's validation AUC by name, near the planted
model's. Named as user code here until core/builtin_names.py lists ``ctr_mlp`` and ``ctr_synthetic``."""

from __future__ import annotations

import pytest

import tidal
from tidal.core.ctr.synthetic import ctr_synthetic

pytestmark = pytest.mark.integration

DATA_ARGS = {"vocab_sizes": [1000, 100], "num_samples": 20_000, "num_val": 2000}
TABLES = {"a": 1000, "b": 100}
MODEL_ARGS = {"fields": ["a", "b"], "dim": 8, "hidden": [16], "dense_tables": True, "table_rows": TABLES}


def test_dense_table_baseline_trains_and_reports_auc() -> None:
    spec = tidal.JobSpec(
        name="ctr-dense",
        mode="sync",
        seed=7,
        model={"name": "tidal.core.ctr.model:ctr_mlp", "args": MODEL_ARGS},
        dataset={"name": "tidal.core.ctr.synthetic:ctr_synthetic", "args": DATA_ARGS},
        optimizer={"name": "adam", "lr": 0.01},
        steps=150,
        num_workers=2,
        eval_every=50,
    )
    with tidal.local_cluster(shards=1, workers=2, user_modules=["tidal.core.ctr"]) as cluster, cluster.client() as c:
        result = c.submit(spec).wait()
    planted = ctr_synthetic(rank=0, world_size=1, seed=7, **DATA_ARGS).val.planted
    assert planted is not None
    assert result.state == "succeeded" and result.val_metric == "auc"
    assert 0.6 < result.val_accuracy < planted.auc + 0.03
