"""Builds a job's model and shard map from its spec, identically in every process."""

from __future__ import annotations

import torch
from torch import nn

from tidal.core.datasets import Dataset, DatasetInfo, dataset_partition, describe_dataset, load_dataset
from tidal.core.model_size import meta_model
from tidal.core.models import build_model
from tidal.core.shard_map import ShardMap, TensorInfo, build_shard_map
from tidal.core.spec import JobSpec
from tidal.core.torch_dtypes import tensor_infos


def job_dataset(spec: JobSpec, rank: int = 0, world_size: int = 1) -> Dataset:
    """The data worker ``rank`` of ``world_size`` holds: the whole data set, or only its part
    of a partitioned one (climate)."""
    return load_dataset(spec.dataset.name, spec.dataset.args, spec.seed, rank, world_size)


def job_partition(spec: JobSpec, dataset: Dataset, rank: int, world_size: int) -> torch.Tensor:
    """Indices of the training samples of worker ``rank`` of ``world_size`` in `dataset`."""
    return dataset_partition(dataset, rank, world_size, spec.seed)


def job_dataset_info(spec: JobSpec) -> DatasetInfo:
    """What the model is built from, without loading the data where the data set can tell
    from metadata (shards and the coordinator need nothing else)."""
    return describe_dataset(spec.dataset.name, spec.dataset.args, spec.seed)


def job_model(spec: JobSpec, dataset: Dataset | DatasetInfo) -> nn.Module:
    """The model with its initial parameters: the same bits in every process for a seed."""
    return build_model(spec.model.name, spec.model.args, dataset.input_shape, dataset.num_classes, spec.seed)


def job_shard_map(spec: JobSpec, model: nn.Module) -> ShardMap:
    return build_shard_map(tensor_infos(list(model.named_parameters())), spec.num_shards)


def job_tensors(spec: JobSpec) -> tuple[TensorInfo, ...]:
    """The names, shapes and dtypes of the job's parameters, from its model's shapes alone: the
    model is held to the size limits of core/model_size.py and built on the meta device, so
    nothing of its size is allocated (the coordinator's planner child, tidal/planner.py, runs
    this for every submitted job)."""
    info = job_dataset_info(spec)
    model = meta_model(spec.model.name, spec.model.args, info.input_shape, info.num_classes, spec.seed)
    return tensor_infos(list(model.named_parameters()))


def job_layout(spec: JobSpec) -> ShardMap:
    """The job's shard map, planned as the coordinator plans it (`job_tensors`)."""
    return build_shard_map(job_tensors(spec), spec.num_shards)
