"""A new job's first step on a worker: its data and its model, built with the worker's own code.

The coordinator and the shards never build a model: each worker builds it from the spec, and
announces its layout (core/layout.py) so the coordinator can plan the shard map; the first
worker to reach each shard gives it its initial slice (worker/links.py). The model is sized
on the meta device first, so a spec past the limits is refused before it is allocated.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from tidal.core.devices import resolve_device
from tidal.core.embeddings.names import check_names
from tidal.core.errors import InvalidArgumentError
from tidal.core.layout import Layout
from tidal.core.model_size import meta_model
from tidal.core.model_source import ModelModules
from tidal.core.objectives import job_objective
from tidal.core.plan import job_dataset, job_model, model_layout
from tidal.core.shard_map import ShardMap
from tidal.core.sources.job_data import JobData
from tidal.core.spec import JobSpec
from tidal.nn import embedding_tables

T = TypeVar("T")


async def in_daemon_thread(name: str, work: Callable[[], T]) -> T:
    """Runs user code (a data source, a model factory) in a daemon thread: asyncio's own
    threads are joined at exit, so a factory that hangs would keep a stopped worker alive."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return  # cancelled meanwhile: nobody waits for it
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = work(), None
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting task, which reports it
            result, error = None, exc
        # RuntimeError: the loop closed, the worker is stopping.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


@dataclass(frozen=True)
class PreparedJob:
    job_id: str
    # The data of the slot (partition index, count) it was loaded for.
    dataset: JobData
    model: nn.Module
    layout: Layout


def prepare_job(
    job_id: str, spec: JobSpec, slot: tuple[int, int], model_modules: ModelModules, device: str | None = None
) -> PreparedJob:
    """Loads the slot's data and builds the job's model (raises InvalidArgumentError, naming
    the field, for a spec this worker cannot run). Everything the worker will need is checked
    here, before the coordinator plans the job: its objective and its device (`device`: the
    worker's --device, which wins over the spec's) too."""
    dataset = job_dataset(spec, *slot, model_modules=model_modules)
    job_objective(spec.objective, dataset.objective, model_modules)
    resolve_device(device or spec.device, "--device" if device is not None else "device")
    info = dataset.info
    # Bounded before it is allocated: a factory is stopped part-way past the limits.
    meta_model(
        spec.model.name, spec.model.args, info.input_shape, info.num_classes, spec.seed, model_modules=model_modules
    )
    model = job_model(spec, dataset, model_modules=model_modules)
    check_tables(spec, model)
    return PreparedJob(job_id, dataset, model, model_layout(model))


def check_tables(spec: JobSpec, model: nn.Module) -> None:
    """The embedding tables the model reads (its `ShardedEmbedding` layers) must be tables of the
    job spec with the same row width; a spec table the model does not read is allowed (unused).
    The coordinator names the worker in the job's failure."""
    check_names(spec, (name for name, _ in model.named_parameters()))
    try:
        read = embedding_tables(model)
    except ValueError as exc:
        raise InvalidArgumentError(f"model: {exc}") from None
    declared = {t.name: (i, t.dim) for i, t in enumerate(spec.embeddings)}
    for name, dim in read.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise InvalidArgumentError(
                f"embeddings: the model reads embedding table {name!r} (dim {dim}), which the job spec does not "
                f"declare (spec.embeddings: {known})"
            )
        index, spec_dim = declared[name]
        if dim != spec_dim:
            raise InvalidArgumentError(
                f"spec.embeddings[{index}].dim: the model reads embedding table {name!r} with dim {dim}, "
                f"the job spec declares dim {spec_dim}"
            )
    if read and spec.precision == "fp16":
        # fp16's loss scaling (core/precision.py) reaches the dense gradient only, not the rows'.
        raise InvalidArgumentError("precision: fp16 is not supported with embedding tables; use bf16 or fp32")


def check_layout(layout: Layout, shard_map: ShardMap) -> None:
    """The model this worker built must be the one the job's shards hold."""
    if layout.tensors != shard_map.tensors:
        planned = Layout(shard_map.tensors, layout.init_digest)
        raise InvalidArgumentError(
            f"layout: this worker's model does not match the job's shard map: {planned.difference(layout)}"
        )
