"""Model factories: ``factory(input_shape, num_classes, **model.args) -> nn.Module``."""

from __future__ import annotations

import math
import os

from torch import nn


def two_layer(input_shape: tuple[int, ...], num_classes: int, width: int = 16, width_env: str = "") -> nn.Module:
    """A small MLP; ``width_env``: read the width from that environment variable instead (a
    worker-local setting, the kind that makes workers build different models)."""
    if width_env:
        width = int(os.environ[width_env])
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(), nn.Linear(width, num_classes)
    )
