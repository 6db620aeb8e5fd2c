"""A model factory: ``model.name: "byo_user.models:residual_mlp"``.

tidal calls it on every worker as ``residual_mlp(input_shape=..., num_classes=..., **model.args)``
under a seeded RNG, so every worker builds the same initial values. ``num_classes`` is the number
of outputs: the classes of a classification source, ``output_shape[0]`` of a regression one.
Bad arguments raise ValueError: the job then fails with ``model.name ...: factory failed: ...``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """x + MLP(LayerNorm(x)): a pre-norm residual block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def residual_mlp(*, input_shape: tuple[int, ...], num_classes: int, width: int = 64, blocks: int = 2) -> nn.Module:
    """Flatten, project to `width`, `blocks` residual blocks, a linear head with `num_classes` outputs."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"model.args.width must be a positive integer, got {width!r}")
    if not isinstance(blocks, int) or blocks < 0:
        raise ValueError(f"model.args.blocks must be an integer >= 0, got {blocks!r}")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        *(ResidualBlock(width) for _ in range(blocks)),
        nn.LayerNorm(width),
        nn.Linear(width, num_classes),
    )
