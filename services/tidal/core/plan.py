"""Builds a job's model and shard map from its spec, identically in every process."""

from __future__ import annotations

import torch
from torch import nn

from tidal.core.datasets import Dataset, DatasetInfo, partition_indices
from tidal.core.digests import values_digest
from tidal.core.errors import InvalidArgumentError
from tidal.core.layout import Layout
from tidal.core.model_size import meta_model
from tidal.core.model_source import ModelModules
from tidal.core.models import build_model
from tidal.core.shard_map import ShardMap, TensorInfo, build_shard_map
from tidal.core.sources.batches import is_stream
from tidal.core.sources.job_data import JobData
from tidal.core.sources.registry import describe_job_data, load_job_data
from tidal.core.spec import JobSpec
from tidal.core.torch_dtypes import tensor_infos


def job_dataset(spec: JobSpec, rank: int = 0, world_size: int = 1, *, model_modules: ModelModules) -> JobData:
    """The data worker ``rank`` of ``world_size`` reads (core/sources): a built-in data set, a
    file source or a user factory, whole or only this worker's part. `model_modules`: where a
    user factory may come from (ServiceSettings.model_modules; None: anywhere)."""
    return load_job_data(spec.dataset.name, spec.dataset.args, spec.seed, rank, world_size, model_modules=model_modules)


def job_partition(spec: JobSpec, data: JobData, rank: int, world_size: int) -> torch.Tensor | None:
    """Indices of the training samples of worker ``rank`` of ``world_size`` in `data`: a seeded
    share of a whole training set, all of a part loaded for this very slot; None for a stream
    (it holds the worker's part and is read in order)."""
    if is_stream(data.train):
        return None
    if data.part is None:
        return partition_indices(len(data.train), rank, world_size, spec.seed)
    if data.part != (rank, world_size):
        raise InvalidArgumentError(
            f"dataset {data.name!r} holds the part of worker {data.part[0]} of {data.part[1]}, "
            f"not of {rank} of {world_size}: load it for the new slot"
        )
    return torch.arange(len(data.train))


def job_dataset_info(spec: JobSpec, *, model_modules: ModelModules = None) -> DatasetInfo:
    """What the model is built from, from metadata where the data set can tell (a file source
    or a user factory is loaded to answer). For local tools: a worker builds the model from
    the data it loaded."""
    return describe_job_data(spec.dataset.name, spec.dataset.args, spec.seed, model_modules=model_modules)


def job_model(
    spec: JobSpec, dataset: JobData | Dataset | DatasetInfo, *, model_modules: ModelModules = None
) -> nn.Module:
    """The model with its initial parameters: the same bits in every process for a seed.
    `model_modules`: where a user factory may come from (core/model_source.py; None: anywhere);
    a worker passes its ServiceSettings'. Only workers and local tools build models."""
    shape, classes = dataset.input_shape, dataset.num_classes
    return build_model(spec.model.name, spec.model.args, shape, classes, spec.seed, model_modules=model_modules)


def model_layout(model: nn.Module) -> Layout:
    """What a worker announces of the model it built: its parameters' names, shapes and dtypes
    and a digest of their initial values (the coordinator checks every worker's agree)."""
    named = list(model.named_parameters())
    return Layout(tensor_infos(named), values_digest(p for _, p in named))


def job_shard_map(spec: JobSpec, model: nn.Module) -> ShardMap:
    return build_shard_map(tensor_infos(list(model.named_parameters())), spec.num_shards)


def job_tensors(spec: JobSpec, *, model_modules: ModelModules = None) -> tuple[TensorInfo, ...]:
    """The names, shapes and dtypes of the job's parameters, from its model's shapes alone: the
    model is held to the size limits of core/model_size.py and built on the meta device, so
    nothing of its size is allocated (a worker checks this before it builds the model)."""
    info = job_dataset_info(spec, model_modules=model_modules)
    model = meta_model(
        spec.model.name, spec.model.args, info.input_shape, info.num_classes, spec.seed, model_modules=model_modules
    )
    return tensor_infos(list(model.named_parameters()))


def job_layout(spec: JobSpec, *, model_modules: ModelModules = None) -> ShardMap:
    """The job's shard map, planned as the coordinator plans it (`job_tensors`)."""
    return build_shard_map(job_tensors(spec, model_modules=model_modules), spec.num_shards)
