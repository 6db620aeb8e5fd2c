"""Data sources beyond the contract: a user factory's failures named by field, the operator's
allow-list, missing files, the tabular and arrays arguments, batches prepared ahead, streams,
evaluation over any validation split, and a worker's memory with a large array file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from tidal.core.data_types import DatasetInfo
from tidal.core.errors import InvalidArgumentError, PermissionDeniedError
from tidal.core.plan import job_dataset, job_dataset_info, job_partition
from tidal.core.sources.batches import TrainBatches, eval_batches, fetch
from tidal.core.sources.job_data import SampleSpec
from tidal.core.sources.prefetch import Prefetcher
from tidal.core.sources.registry import load_job_data
from tidal.core.sources.tensors import TensorPairs
from tidal.core.spec import JobSpec
from tidal.core.training import evaluate, tensor_batches

USER = "tests.user_sources"


def load(name: str, args: dict[str, Any], rank: int = 0, world: int = 1, modules: Any = None) -> Any:
    return load_job_data(name, args, 0, rank, world, model_modules=modules)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("raises", r"dataset.name 'tests.user_sources:broken': the factory failed: RuntimeError: the bucket"),
        ("not_source_data", r"dataset.name '.*': the factory returned dict, not SourceData"),
        ("shape", r"dataset.name '.*': train sample 0: x has sample shape \(4,\), declared \(5,\)"),
        ("not_a_dataset", r"dataset.name '.*': train sample 0: sample 0 is a int, not an \(x, y\) pair"),
        ("label", r"dataset.name '.*': train sample 0: class label \d is outside \[0, 3\)"),
        ("neither", r"dataset.name '.*': give num_classes \(classification\) or output_shape"),
    ],
)
def test_a_failing_user_factory_is_named(kind: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        load(f"{USER}:broken", {"kind": kind})


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        (
            f"{USER}:blobs",
            {"colour": 1},
            r"dataset.args.colour is not an argument of dataset 'tests.user_sources:blobs'",
        ),
        (f"{USER}:blobs", {"seed": 1}, r"dataset.args.seed is not an argument"),
        (f"{USER}:missing", {}, r"dataset.name '.*': module 'tests.user_sources' has no callable 'missing'"),
        ("tests.no_such_module:f", {}, r"dataset.name '.*': cannot import module 'tests.no_such_module'"),
        ("tests.user_sources:", {}, r"dataset.name must look like 'package.module:factory'"),
        ("mnist", {}, r"dataset.name must be one of \[.*'arrays'.*'tabular'\] or 'package.module:factory'"),
    ],
)
def test_bad_source_names_and_args_are_named(name: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        load(name, args)


def test_the_allow_list_is_checked_before_the_import() -> None:
    # The same error as for a model or an objective outside the list (core/model_source.py).
    with pytest.raises(
        PermissionDeniedError, match=r"dataset.name: module 'tests.no_such_module' is not in TIDAL_MODEL"
    ):
        load("tests.no_such_module:f", {}, modules=("tidal",))
    with pytest.raises(PermissionDeniedError, match=r"allowed: none"):
        load(f"{USER}:blobs", {}, modules=())
    assert load(f"{USER}:blobs", {}, modules=("tests",)).num_classes == 3
    # The worker's entry point takes the allow-list from its settings.
    spec = JobSpec.model_validate({"dataset": {"name": f"{USER}:blobs"}})
    with pytest.raises(PermissionDeniedError, match="TIDAL_MODEL_MODULES"):
        job_dataset(spec, 0, 1, model_modules=("tidal",))
    # So does the description local tools use.
    with pytest.raises(PermissionDeniedError, match="TIDAL_MODEL_MODULES"):
        job_dataset_info(spec, model_modules=("tidal",))
    assert job_dataset_info(spec, model_modules=("tests",)) == DatasetInfo((4,), 3)


@pytest.mark.parametrize(
    ("name", "args", "field"),
    [
        ("tabular", {"path": "/no/t.parquet", "target": "y"}, r"dataset.args.path: no such file '/no/t.parquet'"),
        ("arrays", {"x": "/no/such/x.npy"}, r"dataset.args.x: no such file '/no/such/x.npy'"),
        ("arrays", {"x": "{x}", "y": "/no/such/y.npy"}, r"dataset.args.y: no such file '/no/such/y.npy'"),
        ("arrays", {"x": "{x}", "val_x": "/no/v.safetensors"}, r"dataset.args.val_x: no such file '/no/v.safetensors'"),
    ],
)  # fmt: skip
def test_a_missing_file_is_named_with_its_path(tmp_path: Path, name: str, args: dict[str, Any], field: str) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match=field):
        load(name, {k: v.replace("{x}", str(x)) for k, v in args.items()})


def _frame(n: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "f1": rng.normal(100.0, 10.0, n), "f2": rng.integers(0, 5, n), "name": ["n"] * n,
        "label": rng.integers(0, 4, n), "split": np.where(np.arange(n) < 30, "holdout", "fit"),
    })  # fmt: skip


def test_tabular_split_column_and_shared_statistics(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    frame = _frame()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=25)
    args = {"path": str(path), "target": "label", "features": ["f1", "f2"], "split_column": "split"}
    data = load("tabular", {**args, "val_value": "holdout"})
    train_rows = frame[frame.split == "fit"][["f1", "f2"]].to_numpy()
    assert (len(data.train), len(data.val)) == (70, 30)
    # Standardised with the training rows' mean and population std.
    expected = (train_rows - train_rows.mean(axis=0)) / train_rows.std(axis=0)
    assert np.allclose(data.train.x.numpy(), expected, atol=1e-5)
    # Row groups per worker: each keeps its own rows, scaled exactly as the whole file's are.
    parts = [load("tabular", {**args, "val_value": "holdout", "partition": "row_groups"}, r, 2) for r in range(2)]
    assert [len(p.train) for p in parts] == [20, 50]  # groups 0-1 (rows 30-49 train), groups 2-3
    assert torch.equal(torch.cat([p.train.x for p in parts]), data.train.x)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"features": ["f1", "name"]}, r"dataset.args.features: column 'name' holds string, not numbers"),
        ({"features": ["f1", "nope"]}, r"dataset.args.features: .* has no column 'nope'"),
        ({"target": "f1", "features": ["f2"]}, r"dataset.args.target: column 'f1' holds double, not integer class ids"),
        ({"num_classes": 3}, r"dataset.args.num_classes 3 is not above the largest class id 3"),
        ({"partition": "row_groups"}, r"dataset.args.partition 'row_groups' needs a Parquet file"),
        ({"val_value": "x"}, r"dataset.args.val_value needs dataset.args.split_column"),
        ({"task": "ranking"}, r"dataset.args.task must be one of"),
        ({"val_fraction": 1.5}, r"dataset.args.val_fraction must be a number in \[0.0, 1.0\]"),
    ],
)
def test_tabular_bad_arguments_are_named(tmp_path: Path, over: dict[str, Any], message: str) -> None:
    path = tmp_path / "t.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(InvalidArgumentError, match=message):
        load("tabular", {"path": str(path), "target": "label", "features": ["f1", "f2"], **over})


def test_tabular_row_groups_need_as_many_groups_as_workers(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pandas(_frame(), preserve_index=False), path, row_group_size=50)
    with pytest.raises(InvalidArgumentError, match=r"has 2 row groups, fewer than the 3 workers"):
        load("tabular", {"path": str(path), "target": "label", "features": ["f1"], "partition": "row_groups"}, 0, 3)


def test_arrays_refuses_what_it_cannot_map(tmp_path: Path) -> None:
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, x=np.zeros((8, 2)), y=np.zeros(8, dtype=np.int64))
    with pytest.raises(InvalidArgumentError, match=r"dataset.args.x: array 'x' of .* is compressed"):
        load("arrays", {"x": str(packed)})
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, np.zeros((8, 2), dtype=np.float32))
    np.save(y, np.zeros(7, dtype=np.int64))
    with pytest.raises(InvalidArgumentError, match=r"dataset.args.y: 7 rows, but dataset.args.x has 8"):
        load("arrays", {"x": str(x), "y": str(y)})
    np.save(y, np.zeros(8, dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match=r"dataset.args.y: classification labels must be integers"):
        load("arrays", {"x": str(x), "y": str(y)})
    data = load("arrays", {"x": str(x), "y": str(y), "task": "regression"})
    assert data.num_classes == 1 and data.train_spec.y_shape == (1,)


def test_prefetcher_fetches_the_next_step_ahead_once() -> None:
    calls: list[int] = []
    fetched_one = threading.Event()

    def fetch(step: int) -> int:
        calls.append(step)
        if step == 1:
            fetched_one.set()
        return step * 10

    batches = Prefetcher(fetch)
    try:
        assert batches.get(0).result() == 0
        assert fetched_one.wait(timeout=30), "step 1 is fetched without being asked for"
        assert batches.get(1).result() == 10
        assert calls.count(1) == 1
        assert batches.get(5).result() == 50  # out of order (a restart): fetched afresh
    finally:
        batches.close()


def test_prefetcher_hands_a_fetch_error_to_the_step_that_needs_it() -> None:
    def fetch(step: int) -> int:
        if step == 1:
            raise InvalidArgumentError("dataset.name 'x': training batch of step 1: x holds NaN or infinity")
        return step

    batches = Prefetcher(fetch)
    try:
        assert batches.get(0).result() == 0
        with pytest.raises(InvalidArgumentError, match="step 1"):
            batches.get(1).result()
    finally:
        batches.close()


def test_a_stream_serves_the_same_batch_for_a_step_in_or_out_of_order() -> None:
    data = load(f"{USER}:ramp", {"num_samples": 30}, 1, 3)
    assert job_partition(JobSpec(seed=0), data, 1, 3) is None
    in_order = TrainBatches(data, None, 4, 0, 1)
    seq = [in_order(step) for step in range(5)]
    replay = TrainBatches(data, None, 4, 0, 1)
    for step in (3, 1, 4):
        x, y = replay(step)
        assert torch.equal(x, seq[step][0]) and torch.equal(y, seq[step][1])
    # The stream of rank 1 of 3 holds samples 1, 4, ..., 28 (10); step 2 wraps to a new pass.
    assert seq[2][0][:, 0].mul(100).round().tolist() == [25, 28, 1, 4]


def test_evaluation_reads_any_validation_split() -> None:
    data = load(f"{USER}:blobs", {})
    model = nn.Linear(4, 3)
    xs, ys = zip(*(data.val[i] for i in range(len(data.val))), strict=True)
    direct = evaluate(model, tensor_batches(torch.stack(xs), torch.tensor(ys)))
    via_source = evaluate(model, eval_batches(data, batch_size=5))
    assert via_source.loss == pytest.approx(direct.loss, rel=1e-6)
    assert via_source.accuracy == direct.accuracy
    stream = load(f"{USER}:ramp", {})
    result = evaluate(nn.Linear(2, 1), eval_batches(stream, batch_size=7), objective=stream.objective)
    assert result.loss > 0


_RSS_PROBE = """
import json, math, sys
import torch
from tidal.core.datasets import partition_indices
from tidal.core.sources.batches import TrainBatches
from tidal.core.sources.registry import load_job_data
from tidal.core.sources.tensors import TensorPairs

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out

torch.set_num_threads(1)
before = status()
data = load_job_data("arrays", {"x": sys.argv[1], "y": sys.argv[2], "val_fraction": 0.01}, 0, model_modules=None)
world = int(sys.argv[3])
part = partition_indices(len(data.train), 0, world, 0)
batches = TrainBatches(data, part, 64, 0, 0)
for step in range(math.ceil(len(part) / 64)):  # one epoch of this worker's part
    batches(step)
after = status()
print(json.dumps({k: after[k] - before[k] for k in before} | {"part_rows": len(part), "rows": len(data.train)}))
"""


def test_a_worker_maps_a_large_array_file_and_reads_only_its_part(tmp_path: Path) -> None:
    rows, width, world = 6400, 16384, 8  # 64 KiB rows: a 419 MB file
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, width))
    for lo in range(0, rows, 256):
        x[lo : lo + 256] = np.arange(lo, lo + 256, dtype=np.float32)[:, None]
    x.flush()
    del x
    np.save(y_path, np.arange(rows) % 10)
    size = x_path.stat().st_size
    probe = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(x_path), str(y_path), str(world)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    grew = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"file {size / 2**20:.0f} MiB, part {grew['part_rows']} of {grew['rows']} rows: RSS grew "
          f"{grew['VmRSS'] / 2**20:.1f} MiB, of it anonymous {grew['RssAnon'] / 2**20:.1f} MiB, "
          f"file-backed {grew['RssFile'] / 2**20:.1f} MiB")  # fmt: skip
    # What the worker holds itself (anonymous memory) stays near a few batches, far below its
    # part (1/8 of the file) and the file; loading the file would add all of it here. The
    # file-backed share (RssFile) is the shared, reclaimable page cache: the kernel maps a whole
    # cached folio (up to 2 MiB here) on a fault, so it can reach the file size when a worker's
    # rows are spread over every folio; it is not asserted on.
    assert grew["RssAnon"] < 0.1 * size


class _ListBatches:
    """Map-style with torch's own ``__getitems__`` convention: a list of (x, y) samples."""

    def __init__(self) -> None:
        self.x = torch.arange(20.0).reshape(10, 2)

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], index % 2

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        return [self[i] for i in indices]


def test_getitems_may_return_samples_or_a_batch() -> None:
    spec = SampleSpec((2,), (), 2)
    idx = torch.tensor([7, 2, 2])
    x, y = fetch(_ListBatches(), idx, spec, "here")
    assert torch.equal(x, torch.tensor([[14.0, 15.0], [4.0, 5.0], [4.0, 5.0]])) and y.tolist() == [1, 0, 0]
    bx, by = fetch(TensorPairs(_ListBatches().x, torch.arange(10) % 2), idx, spec, "here")
    assert torch.equal(bx, x) and torch.equal(by, y)
    nan_x = _ListBatches().x.index_fill(0, torch.tensor([2]), float("nan"))
    with pytest.raises(InvalidArgumentError, match=r"here: x holds NaN or infinity \(sample 2\)"):
        fetch(TensorPairs(nan_x, torch.arange(10) % 2), torch.arange(3), spec, "here")


def test_prefetcher_restart_drops_what_was_fetched_ahead() -> None:
    batches = Prefetcher(lambda step: ("old", step))
    try:
        assert batches.get(0).result() == ("old", 0)
        batches.restart(lambda step: ("new", step))
        assert batches.get(1).result() == ("new", 1)
        assert batches.get(2).result() == ("new", 2)
    finally:
        batches.close()
