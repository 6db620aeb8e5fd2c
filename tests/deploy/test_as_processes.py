"""The deployment files' own commands and environments, run as local processes on loopback.

Each compose service (and each Kubernetes container of the sync overlay) is started with its
command and environment as written, only rewritten for one machine: service names become
127.0.0.1, ports become 0 (free ones, read back from ready files) and addresses point at the
ports actually bound. Named volumes are folders (a volume mounted inside another one is a
symbolic link there), Kubernetes Secrets are folders written from what deploy/k8s/tls-secrets.sh
prints. Both run with mutual TLS, as the files say: a flag or variable that drifted from the
CLI, a wrong address, a certificate in the wrong place or a healthcheck that cannot pass makes
these tests fail.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.deploy.fake_k8s_api import fake_k8s_api
from tests.deploy.manifests import (
    COMPOSE_FILE,
    COMPOSE_OVERRIDE,
    OVERLAYS,
    by_kind,
    cli_commands,
    compose_model,
    container_env,
    documented_sans,
    env_of,
    kustomize,
    named_mounts,
    pod_spec,
    render_tls_secrets,
    secret_mounts,
    tidal_services,
)
from tests.integration.helpers import processes_mentioning, wait_until
from tidal.launcher import LocalCluster
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

pytestmark = pytest.mark.integration
LOOPBACK = "127.0.0.1"
PORT_VARS = ("TIDAL_PORT", "TIDAL_HTTP_PORT", "TIDAL_METRICS_PORT", "TIDAL_BULK_PORT")
# Where the image keeps state (volumes in compose and Kubernetes).
DATA_ROOT = "/var/lib/tidal/"
# Steps for the test's copy of the deployment's job: enough to see it train, quick on 2 cores.
STEPS = 60
HEALTH_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 240.0
# What the sync overlay's coordinator scales to 0, in order (TIDAL_K8S_SCALE_DOWN).
SCALED_DOWN = ["statefulsets/tidal-shard", "deployments/tidal-coordinator"]


Mounts = dict[str, Path]  # container path -> the local folder standing in for it


def on_host(value: str, mounts: Mounts) -> str | None:
    """`value` as a local path when it lies under one of `mounts` (the deepest one wins)."""
    for target in sorted(mounts, key=len, reverse=True):
        if value == target or value.startswith(target + "/"):
            return str(mounts[target] / Path(value).relative_to(target))
    return None


def volume_mounts(service: dict[str, Any], volumes: dict[str, Any], root: Path) -> Mounts:
    """A compose service's named volumes as folders `root/NAME`, shared by every service that
    mounts them; a volume mounted inside another one is linked into it, as in the container."""
    mounts = {target: root / volume for target, (volume, _) in named_mounts(service, volumes).items()}
    for folder in mounts.values():
        folder.mkdir(parents=True, exist_ok=True)
    for target, folder in mounts.items():
        for outer, outer_folder in mounts.items():
            if target.startswith(outer + "/"):
                link = outer_folder / Path(target).relative_to(outer)
                if not link.exists():
                    link.symlink_to(folder, target_is_directory=True)
    return mounts


def loopback_env(
    role: str,
    env: dict[str, str],
    names: set[str],
    bound: dict[str, dict[str, Any]],
    scratch: Path,
    mounts: Mounts | None = None,
) -> dict[str, str]:
    """`env` for one process on one machine: every port free, every name of `names` 127.0.0.1,
    addresses of other services at the ports they really bound (`bound`: name -> ready-file
    info), paths in `mounts` (volumes, Secrets) at their local folders, other folders in the
    container's data volumes under this process's own `scratch`."""
    out = dict(env)
    for var, value in env.items():
        if (local := on_host(value, mounts or {})) is not None:
            out[var] = local
        elif value.startswith(DATA_ROOT):
            out[var] = str(scratch / Path(value).relative_to(DATA_ROOT))
    accepted = cli_commands()[role].env
    out.update({var: "0" for var in PORT_VARS if var in accepted})
    if "TIDAL_HOST" in accepted:
        out["TIDAL_HOST"] = LOOPBACK
    if "TIDAL_ADVERTISE_HOST" in out:
        out["TIDAL_ADVERTISE_HOST"] = LOOPBACK
    if "TIDAL_COORDINATOR" in out:
        host, _ = out["TIDAL_COORDINATOR"].rsplit(":", 1)
        assert host in names, f"{host} is not a service of the deployment"
        out["TIDAL_COORDINATOR"] = f"{LOOPBACK}:{bound[host]['grpc_port']}"
    return out


def wait_healthy(test: list[str], env: dict[str, str], info: dict[str, Any], where: str) -> None:
    """Runs a compose healthcheck (CMD or CMD-SHELL) as compose would, with the ports the service
    bound (`info`, its ready file), until it passes (bounded)."""
    assert test[0] in ("CMD", "CMD-SHELL"), where
    command = ["sh", "-c", test[1].replace("$$", "$")] if test[0] == "CMD-SHELL" else test[1:]  # $$: a literal $
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    bin_dir = str(Path(sys.executable).parent)
    ports = {"TIDAL_PORT": str(info["grpc_port"]), "TIDAL_METRICS_PORT": str(info["metrics_port"])}
    shell_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env, **ports}
    while True:
        done = subprocess.run(command, check=False, env=shell_env, capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{where}: healthcheck `{command}` never passed: {done.stdout}"
        time.sleep(0.5)


def short_job(spec_text: str, path: Path) -> Path:
    spec = yaml.safe_load(spec_text)
    spec["steps"] = STEPS
    spec["eval_every"] = 0
    path.write_text(yaml.safe_dump(spec))
    return path


def compose_order(services: dict[str, dict[str, Any]]) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        ready = [n for n, s in services.items() if n not in order and set(s.get("depends_on", {})) <= set(order)]
        assert ready, "depends_on has a cycle"
        order += sorted(ready)
    return order


def run_once(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidal", *args], check=False, env=env, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, f"{what}: {done.stdout}{done.stderr}"


def coordinator_jobs(address: str, env: dict[str, str]) -> list[coord_pb.JobStatus]:
    """ListJobs with the security settings of `env` (a service's environment)."""
    security = SecurityConfig.from_env(env)
    with grpc.secure_channel(address, security.channel_credentials()) as channel:
        return list(coord_grpc.CoordinatorStub(channel).ListJobs(coord_pb.ListJobsRequest(), timeout=10).jobs)


def assert_never_plaintext(cluster: LocalCluster) -> None:
    for name, service in cluster.services.items():
        log = service.log_path.read_text(errors="replace")
        assert "SECURITY IS OFF" not in log, f"{name} ran without TLS: {log[-500:]}"


def test_compose_services_train_the_demo_job_as_local_processes(tmp_path: Path) -> None:
    model = compose_model(COMPOSE_FILE, COMPOSE_OVERRIDE)
    services = tidal_services(model)
    names = set(model["services"])
    bound: dict[str, dict[str, Any]] = {}
    cluster = LocalCluster(tmp_path)
    (tmp_path / "logs").mkdir()
    submit_env: dict[str, str] = {}
    try:
        for name in compose_order(services):
            service = services[name]
            mounts = volume_mounts(service, model["volumes"], tmp_path / "volumes")
            args = [on_host(a, mounts) or a for a in service["command"]]
            env = loopback_env(args[0], env_of(service), names, bound, tmp_path / name, mounts)
            if name == "certs":  # one-shot, before everything else
                run_once(args, {**cluster.env, **env}, name)
                run_once(args, {**cluster.env, **env}, f"{name}, again (the next `up`)")
                continue
            if name == "submit":
                # The spec is bind-mounted from the repository; the test runs a shorter copy.
                source, target = next(v.split(":")[:2] for v in service["volumes"] if v.startswith("./"))
                container_file = Path(args[1])
                host_file = Path(source) / container_file.relative_to(target)
                job_text = (COMPOSE_FILE.parent / host_file).read_text()
                args[1] = str(short_job(job_text, tmp_path / "job.yaml"))
                submit_env = env
                run_once(args, {**cluster.env, **env}, name)
                continue
            replicas = service.get("deploy", {}).get("replicas", 1)
            instances = [f"{name}-{i}" for i in range(replicas)] if replicas > 1 else [name]
            envs = {i: loopback_env(args[0], env_of(service), names, bound, tmp_path / i, mounts) for i in instances}
            for instance in instances:
                cluster.spawn(instance, args, envs[instance])
            cluster.wait_ready(instances)
            bound[name] = cluster.services[instances[0]].info
            for instance in instances:
                info = cluster.services[instance].info
                wait_healthy(service["healthcheck"]["test"], envs[instance], info, instance)

        (job,) = coordinator_jobs(f"{LOOPBACK}:{bound['coordinator']['grpc_port']}", submit_env)
        assert job.state == common_pb.JOB_STATE_SUCCEEDED, job.message
        assert job.version == STEPS
        assert len(job.workers) == services["worker"]["deploy"]["replicas"]
        assert_never_plaintext(cluster)
    finally:
        cluster.stop()
    assert processes_mentioning(str(tmp_path)) == []


def write_secrets(secrets: dict[str, dict[str, Any]], root: Path) -> dict[str, Path]:
    """Each Secret as the folder a Secret volume would be: one file per key."""
    folders = {}
    for name, secret in secrets.items():
        folder = root / name
        folder.mkdir(parents=True)
        for key, value in secret["data"].items():
            (folder / key).write_bytes(base64.b64decode(value))
            (folder / key).chmod(0o440)
        folders[name] = folder
    return folders


def test_sync_overlay_runs_one_job_then_scales_down_and_everything_exits_zero(tmp_path: Path) -> None:
    """The Kubernetes lifecycle without Kubernetes: the coordinator submits the ConfigMap's job;
    after it every member exits 0 (--exit-after-job); the coordinator then scales the shard
    StatefulSet and its own Deployment to 0 through a local stand-in for the API server, waits
    for the SIGTERM that the pod's deletion would bring and exits 0."""
    (overlay,) = [p for p in OVERLAYS if p.name == "sync"]
    docs = kustomize(overlay)
    deployments, statefulsets, jobs = (by_kind(docs, k) for k in ("Deployment", "StatefulSet", "Job"))
    coordinator = deployments["tidal-coordinator"]
    names = {f"{n}" for n in by_kind(docs, "Service")}
    bound: dict[str, dict[str, Any]] = {}
    secrets = write_secrets(render_tls_secrets(tmp_path / "pki", documented_sans()), tmp_path / "secrets")
    cluster = LocalCluster(tmp_path)
    (tmp_path / "logs").mkdir()
    stack = ExitStack()

    def env_for(workload: dict[str, Any], container: dict[str, Any], scratch: Path) -> dict[str, str]:
        mounts = {path: secrets[name] for path, (name, _) in secret_mounts(pod_spec(workload), container).items()}
        return loopback_env(container["args"][0], container_env(container), names, bound, scratch, mounts)

    try:
        container = pod_spec(coordinator)["containers"][0]
        env = env_for(coordinator, container, tmp_path / "coordinator")
        job_file = Path(env["TIDAL_JOB_FILE"])
        (volume,) = [v for v in pod_spec(coordinator)["volumes"] if "configMap" in v]
        configmap = by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]
        env["TIDAL_JOB_FILE"] = str(short_job(configmap["data"][job_file.name], tmp_path / job_file.name))
        api = stack.enter_context(fake_k8s_api(tmp_path))
        cluster.spawn("coordinator", container["args"], {**env, **api.env})
        cluster.wait_ready(["coordinator"])
        bound["tidal-coordinator"] = cluster.services["coordinator"].info

        members = []
        (shards,) = statefulsets.values()
        (workers,) = jobs.values()
        for workload, count in ((shards, shards["spec"]["replicas"]), (workers, workers["spec"]["completions"])):
            container = pod_spec(workload)["containers"][0]
            for i in range(count):
                name = f"{workload['metadata']['name']}-{i}"
                env = env_for(workload, container, tmp_path / name)
                cluster.spawn(name, container["args"], env)
                members.append(name)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for name in members:
            code = cluster.services[name].process.wait(max(1.0, deadline - time.monotonic()))
            assert code == 0, f"{name} exited with {code}: {cluster.tail(name, 10)}"
        scale_paths = [f"/apis/apps/v1/namespaces/tidal/{t}/scale" for t in SCALED_DOWN]
        wait_until(lambda: len(api.requests) >= len(scale_paths), RUN_TIMEOUT_S, "scale-down requests")
        assert api.paths() == scale_paths
        assert all(r["body"] == {"spec": {"replicas": 0}} for r in api.requests)
        coordinator_process = cluster.services["coordinator"].process
        # Exiting by itself now would get the container restarted (and the job resubmitted).
        time.sleep(1.0)
        assert coordinator_process.poll() is None, cluster.tail("coordinator", 10)
        coordinator_process.send_signal(signal.SIGTERM)  # what deleting the pod does
        assert coordinator_process.wait(30) == 0, cluster.tail("coordinator", 10)
        log = (tmp_path / "logs" / "coordinator.log").read_text()
        assert "succeeded" in log and "--exit-when-done" in log
        assert_never_plaintext(cluster)
    finally:
        cluster.stop()
        stack.close()
    assert processes_mentioning(str(tmp_path)) == []
