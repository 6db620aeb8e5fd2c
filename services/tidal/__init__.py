"""tidal: distributed training of PyTorch models with a parameter server.

`import tidal` stays cheap and does nothing else: the Python API (tidal/api/: `tidal.JobSpec`,
`tidal.connect`, `tidal.local_cluster`, ...) loads on the first use of one of its names.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = (
    "Client",
    "Cluster",
    "EvalPoint",
    "Job",
    "JobFailedError",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "connect",
    "local_cluster",
    "security_from_env",
)
__all__ = [  # noqa: RUF022  # the version first, then the API names, as in _API
    "__version__",
    "Client",
    "Cluster",
    "EvalPoint",
    "Job",
    "JobFailedError",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "connect",
    "local_cluster",
    "security_from_env",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("tidal.api"), name)
    raise AttributeError(f"module 'tidal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
