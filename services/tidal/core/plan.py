"""Builds a job's model and shard map from its spec, identically in every process."""

from __future__ import annotations

from torch import nn

from tidal.core.datasets import Dataset, load_dataset
from tidal.core.models import build_model
from tidal.core.shard_map import ShardMap, build_shard_map, tensor_infos
from tidal.core.spec import JobSpec


def job_dataset(spec: JobSpec) -> Dataset:
    return load_dataset(spec.dataset.name, spec.dataset.args, spec.seed)


def job_model(spec: JobSpec, dataset: Dataset) -> nn.Module:
    """The model with its initial parameters: the same bits in every process for a seed."""
    return build_model(spec.model.name, spec.model.args, dataset.input_shape, dataset.num_classes, spec.seed)


def job_shard_map(spec: JobSpec, model: nn.Module) -> ShardMap:
    return build_shard_map(tensor_infos(list(model.named_parameters())), spec.num_shards)
