"""The shard's cheap NaN/Inf check agrees with torch.isfinite on every kind of tensor."""

from __future__ import annotations

import pytest
import torch

from tidal.core.shard_state import all_finite

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    "values",
    [
        [1.0, -2.0, 3.0],
        [NAN],
        [1.0, INF],
        [-INF, 2.0],
        [INF, -INF],  # sums to NaN
        [3e38, 3e38, -1.0],  # finite values whose float32 sum overflows
        [],
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_matches_isfinite(values: list[float], dtype: torch.dtype) -> None:
    t = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert all_finite(t) == bool(torch.isfinite(t).all())
