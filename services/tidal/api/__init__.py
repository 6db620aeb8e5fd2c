"""tidal's Python API: define a job and run it from a script or a notebook.

    import tidal

    spec = tidal.JobSpec(model={"name": "mlp", "args": {"hidden": [64]}}, dataset={"name": "synthetic"},
                         mode="async", steps=200, num_workers=2)
    with tidal.local_cluster(shards=1, workers=2) as cluster, cluster.client() as client:
        result = client.submit(spec).result()

`tidal.connect(address)` reaches a deployed coordinator instead. Async code uses
`tidal.client.TidalClient` (or `cluster.async_client()`), which this API wraps.
"""

from tidal.api.local import Cluster, local_cluster
from tidal.api.spec import JobSpec
from tidal.api.status import EvalPoint, JobResult, JobStatus
from tidal.api.sync_client import Client, Job, JobFailedError, connect, security_from_env

__all__ = [
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
