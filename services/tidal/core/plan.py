"""Builds a job's model and shard map from its spec, identically in every process."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from tidal.core.datasets import Dataset, DatasetInfo, dataset_partition, describe_dataset, load_dataset
from tidal.core.layout import DIGEST_HEX_DIGITS, Layout
from tidal.core.model_size import meta_model
from tidal.core.model_source import ModelModules
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


def job_model(spec: JobSpec, dataset: Dataset | DatasetInfo, *, model_modules: ModelModules = None) -> nn.Module:
    """The model with its initial parameters: the same bits in every process for a seed.
    `model_modules`: where a user factory may come from (core/model_source.py; None: anywhere);
    a worker passes its ServiceSettings'. Only workers and local tools build models."""
    shape, classes = dataset.input_shape, dataset.num_classes
    return build_model(spec.model.name, spec.model.args, shape, classes, spec.seed, model_modules=model_modules)


def model_layout(model: nn.Module) -> Layout:
    """What a worker announces of the model it built: its parameters' names, shapes and dtypes
    and a digest of their initial values (the coordinator checks every worker's agree)."""
    named = list(model.named_parameters())
    digest = hashlib.blake2b(digest_size=DIGEST_HEX_DIGITS // 2)
    for _, p in named:
        # Little-endian raw bytes, as every supported platform holds them.
        digest.update(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return Layout(tensor_infos(named), digest.hexdigest())


def job_shard_map(spec: JobSpec, model: nn.Module) -> ShardMap:
    return build_shard_map(tensor_infos(list(model.named_parameters())), spec.num_shards)


def job_tensors(spec: JobSpec, *, model_modules: ModelModules = None) -> tuple[TensorInfo, ...]:
    """The names, shapes and dtypes of the job's parameters, from its model's shapes alone: the
    model is held to the size limits of core/model_size.py and built on the meta device, so
    nothing of its size is allocated (a worker checks this before it builds the model)."""
    info = job_dataset_info(spec)
    model = meta_model(
        spec.model.name, spec.model.args, info.input_shape, info.num_classes, spec.seed, model_modules=model_modules
    )
    return tensor_infos(list(model.named_parameters()))


def job_layout(spec: JobSpec, *, model_modules: ModelModules = None) -> ShardMap:
    """The job's shard map, planned as the coordinator plans it (`job_tensors`)."""
    return build_shard_map(job_tensors(spec, model_modules=model_modules), spec.num_shards)
