"""Which torch device a worker computes on.

A spec's `device` (or a worker's --device, which overrides it) is auto, cpu, cuda or cuda:N;
auto is cuda when the worker has a CUDA device, else cpu. A CUDA device the worker does not
have is refused with an error that names the field that asked for it.
"""

from __future__ import annotations

import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.spec import DEVICE_PATTERN

__all__ = ["check_device_name", "resolve_device"]


def check_device_name(name: str, field: str = "device") -> str:
    """`name` if it is auto, cpu, cuda or cuda:N; InvalidArgumentError naming `field` otherwise."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise InvalidArgumentError(f"{field}: must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def resolve_device(name: str, field: str = "device") -> torch.device:
    """The device `name` stands for on this machine."""
    check_device_name(name, field)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InvalidArgumentError(f"{field}: {name!r} asked for, but this worker has no CUDA device")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise InvalidArgumentError(f"{field}: {name!r} asked for, but this worker has {count} CUDA device(s)")
    return device
