"""Scales Kubernetes workloads from inside the cluster, with the standard library only.

A one-job deployment on Kubernetes ends with this: StatefulSets and Deployments restart
pods that exit, so once the job is over the coordinator sets the replicas of the shard
StatefulSet, the worker Deployment (async) and its own Deployment to 0. Only the `/scale`
subresource is patched, so the pod's Role needs nothing but `patch` on
`statefulsets/scale` and `deployments/scale` for those names (deploy/k8s/base/rbac.yaml).

Credentials are the ones Kubernetes mounts into every pod that has a service account: the
token and CA under /var/run/secrets/kubernetes.io/serviceaccount, the API server address in
KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tidal.config import ENV
from tidal.core.errors import InvalidArgumentError, UnavailableError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# The variables `ApiServer.in_cluster` reads: Kubernetes' own (the API server's address) and
# where the service account is mounted. The CLI captures them at start (cli_common.py).
CLUSTER_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", ENV["k8s_service_account_dir"])
# What a target may name, and the API resource (group apps/v1) that each kind lives under.
RESOURCES = {"statefulset": "statefulsets", "deployment": "deployments"}
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ScaleTarget:
    # "statefulsets" or "deployments".
    resource: str
    name: str

    def path(self, namespace: str) -> str:
        return f"/apis/apps/v1/namespaces/{namespace}/{self.resource}/{self.name}/scale"

    def __str__(self) -> str:
        return f"{self.resource}/{self.name}"


def parse_targets(text: str, field: str = "TIDAL_K8S_SCALE_DOWN") -> list[ScaleTarget]:
    """Reads "statefulset/tidal-shard,deployment/tidal-coordinator" (plural kinds accepted too)."""
    targets = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, name = item.partition("/")
        resource = RESOURCES.get(kind.lower().removesuffix("s"))
        if resource is None or not name or "/" in name:
            raise InvalidArgumentError(
                f"{field}: {item!r} is not KIND/NAME with KIND one of {', '.join(sorted(RESOURCES))}"
            )
        targets.append(ScaleTarget(resource, name))
    return targets


@dataclass(frozen=True)
class ApiServer:
    """Where the Kubernetes API is and how to authenticate to it."""

    base_url: str
    namespace: str
    token_file: Path
    # None: the system's trust store (only for tests against a plain-HTTP server).
    ca_file: Path | None

    @classmethod
    def in_cluster(cls, env: Mapping[str, str]) -> ApiServer:
        """From `env`, the pod's variables (CLUSTER_ENV) as the process's start read them."""
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
        sa_dir = Path(env.get(ENV["k8s_service_account_dir"]) or SERVICE_ACCOUNT_DIR)
        if not host:
            raise UnavailableError("KUBERNETES_SERVICE_HOST: not set; scaling down works only inside a pod")
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        try:
            namespace = (sa_dir / "namespace").read_text().strip()
        except OSError as exc:
            raise UnavailableError(f"{sa_dir}: no service account mounted ({exc})") from None
        return cls(f"https://{host}:{port}", namespace, sa_dir / "token", sa_dir / "ca.crt")

    def _context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https://"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def patch_replicas(self, target: ScaleTarget, replicas: int, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """Sets the replicas of one workload through its /scale subresource (a merge patch)."""
        # Read on every call: projected service-account tokens are rotated by the kubelet.
        token = self.token_file.read_text().strip()
        request = urllib.request.Request(
            self.base_url + target.path(self.namespace),
            data=json.dumps({"spec": {"replicas": replicas}}).encode(),
            method="PATCH",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=self._context()) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise UnavailableError(f"scale {target} to {replicas}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise UnavailableError(f"scale {target} to {replicas}: {exc}") from None


def scale_down(api: ApiServer, targets: list[ScaleTarget]) -> list[str]:
    """Scales every target to 0, in order, trying them all; returns the errors (empty: all done)."""
    errors = []
    for target in targets:
        try:
            api.patch_replicas(target, 0)
            log.info("scaled %s in namespace %s to 0", target, api.namespace)
        except UnavailableError as exc:
            log.exception("%s", exc)
            errors.append(str(exc))
    return errors
