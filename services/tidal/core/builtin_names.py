"""The names a job spec may give for its model, data set and objective: the built-in ones,
known here without torch, and the "package.module:factory" form that names user code.
"""

from __future__ import annotations

import re

# The objectives a worker knows (core/objectives.py); any other must be "package.module:fn".
BUILT_IN_OBJECTIVES = ("cross_entropy", "mse", "mae", "bce_with_logits", "weighted_mse")
USER_CODE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


# The built-in names, known without torch (the coordinator checks a spec's names at submit;
# tests/unit/test_spec.py holds them equal to the registries in core/models.py, core/datasets.py
# and core/sources/registry.py). Anything else must name user code: "package.module:factory".
BUILT_IN_MODELS = ("mlp", "cnn", "grid_forecaster", "station_mlp", "ctr_mlp")
BUILT_IN_DATASETS = (
    "seattle_weather",
    "synthetic",
    "climate_grid",
    "climate_stations",
    "tabular",
    "arrays",
    "ctr_synthetic",
    "ctr_flights",
)


def builtin_or_user_code(name: str, built_in: tuple[str, ...]) -> str:
    """`name` itself when it is one of `built_in` or names user code, else a ValueError."""
    if name in built_in or USER_CODE.match(name):
        return name
    raise ValueError(f"must be one of {list(built_in)} or 'package.module:factory', got {name!r}")
