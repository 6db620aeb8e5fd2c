"""The climate forecasters, registered as built-in models ("grid_forecaster", "station_mlp").

Both predict a correction to persistence: the output is the latest input plus what the
network adds, and the last layer starts at zero, so an untrained model forecasts
persistence exactly and training can only learn to improve on it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tidal.core.errors import InvalidArgumentError

__all__ = ["GridForecaster", "StationMLP", "grid_forecaster", "station_mlp"]


def _positive_int(key: str, value: object, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= hi:
        raise InvalidArgumentError(f"model.args.{key} must be an integer in [1, {hi}], got {value!r}")
    return value


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="replicate")
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="replicate")
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class GridForecaster(nn.Module):
    """Residual conv net: (B, history, variables, H, W) -> next frame (B, variables, H, W).

    Fully convolutional, so the parameters depend on history and variables only: a worker
    holding a tile and one evaluating the whole grid share the same model.
    """

    def __init__(self, history: int, variables: int, channels: int, blocks: int, kernel_size: int) -> None:
        super().__init__()
        self.variables = variables
        pad = kernel_size // 2
        # Replicate padding at the edges of what a worker holds (the poles, a tile without
        # halo): a zero would be a wild value for a normalised field.
        self.stem = nn.Conv2d(history * variables, channels, kernel_size, padding=pad, padding_mode="replicate")
        self.blocks = nn.Sequential(*(_ResidualBlock(channels, kernel_size) for _ in range(blocks)))
        self.head = nn.Conv2d(channels, variables, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x[:, -1]
        z = self.blocks(torch.nn.functional.gelu(self.stem(x.flatten(1, 2))))
        return last + self.head(z)


def grid_forecaster(
    *, input_shape: tuple[int, ...], num_classes: int, channels: int = 32, blocks: int = 2, kernel_size: int = 3
) -> nn.Module:
    """Built-in model for `climate_grid`: `channels` wide, `blocks` residual blocks."""
    if len(input_shape) != 4:
        raise InvalidArgumentError(
            f"model.name 'grid_forecaster' needs inputs (history, variables, lat, lon), got input_shape {input_shape}"
        )
    history, variables, _, _ = input_shape
    if num_classes != variables:
        raise InvalidArgumentError(f"model 'grid_forecaster' predicts all {variables} variables, not {num_classes}")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InvalidArgumentError(f"model.args.kernel_size must be a positive odd integer, got {kernel_size!r}")
    return GridForecaster(
        history, variables, _positive_int("channels", channels, 4096), _positive_int("blocks", blocks, 64), kernel_size
    )


class StationMLP(nn.Module):
    """MLP over lagged features whose first `outputs` features are the latest values of the
    predicted variables: forecast = those values + MLP(features)."""

    def __init__(self, features: int, outputs: int, hidden: list[int]) -> None:
        super().__init__()
        self.outputs = outputs
        layers: list[nn.Module] = []
        width = features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            width = h
        last = nn.Linear(width, outputs)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.outputs] + self.net(x)


def station_mlp(
    *, input_shape: tuple[int, ...], num_classes: int, hidden: list[int] | tuple[int, ...] = (64, 64)
) -> nn.Module:
    """Built-in model for `climate_stations`."""
    if len(input_shape) != 1:
        raise InvalidArgumentError(f"model.name 'station_mlp' needs flat feature inputs, got input_shape {input_shape}")
    if not isinstance(hidden, (list, tuple)) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise InvalidArgumentError(f"model.args.hidden must be a list of positive integers, got {hidden!r}")
    features = math.prod(input_shape)
    if num_classes > features:
        raise InvalidArgumentError(f"model 'station_mlp': {num_classes} outputs but only {features} features")
    return StationMLP(features, num_classes, list(hidden))
