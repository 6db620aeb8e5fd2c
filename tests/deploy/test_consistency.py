"""Every image, command, flag, environment variable, port and probe of the compose file and
the Kubernetes manifests agrees with the Dockerfile and with what the `tidal` CLI accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    COMPOSE_FILE,
    COMPOSE_OVERRIDE,
    DOCKERFILE,
    HOST_NETWORK,
    OVERLAYS,
    by_kind,
    check_invocation,
    cli_commands,
    compose_model,
    container_env,
    documented_sans,
    env_of,
    healthcheck_port_var,
    kustomize,
    pod_spec,
    render_tls_secrets,
    secret_mounts,
    tidal_services,
    workloads,
)
from tidal import config
from tidal.core import model_source
from tidal.core.spec import parse_job_spec
from tidal.k8s_scale import parse_targets
from tidal.transport import tls

COMPOSE_VARIANTS = {
    "default": compose_model(COMPOSE_FILE, COMPOSE_OVERRIDE),
    "host-network": compose_model(COMPOSE_FILE, HOST_NETWORK),
}
# The port variable behind each named container port.
PORT_VARS = {
    "grpc": "TIDAL_PORT", "http": "TIDAL_HTTP_PORT", "metrics": "TIDAL_METRICS_PORT", "bulk": "TIDAL_BULK_PORT",
}  # fmt: skip


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def image_user() -> int:
    (user,) = re.findall(r"^USER (\d+):\d+$", dockerfile(), re.MULTILINE)
    return int(user)


def test_env_table_is_what_the_cli_reads() -> None:
    read = {e for c in cli_commands().values() for e in c.env}
    # TIDAL_CHECKPOINT_FAULT and the like are read outside the CLI; every CLI variable is in the tables.
    tables = set(config.ENV.values()) | set(config.SECURITY_ENV.values())
    assert read <= tables, read - tables
    # The security variables are the ones transport/tls.py and core/model_source.py read.
    names = {v for module in (tls, model_source) for k, v in vars(module).items() if k.startswith("ENV_")}
    assert names == set(config.SECURITY_ENV.values()), names ^ set(config.SECURITY_ENV.values())


def test_dockerfile_one_image_for_every_role() -> None:
    text = dockerfile()
    assert 'ENTRYPOINT ["tidal"]' in text
    assert re.search(r"^ARG BASE_IMAGE=", text, re.MULTILINE)
    assert re.search(r"^ARG TORCH_WHEEL=", text, re.MULTILINE)
    assert image_user() != 0
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE) for p in line.split()}
    defaults = {
        config.DEFAULT_GRPC_PORT,
        config.DEFAULT_SHARD_PORT,
        config.DEFAULT_WORKER_PORT,
        config.DEFAULT_HTTP_PORT,
        config.DEFAULT_COORDINATOR_METRICS_PORT,
        config.DEFAULT_SHARD_METRICS_PORT,
        config.DEFAULT_WORKER_METRICS_PORT,
    }
    assert exposed == defaults


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_commands_and_environment_are_accepted_by_the_cli(variant: str) -> None:
    model = COMPOSE_VARIANTS[variant]
    services = tidal_services(model)
    assert {"coordinator", "shard-0", "shard-1", "worker", "submit"} <= set(services)
    for name, service in services.items():
        env = env_of(service)
        check_invocation(service["command"], env, f"{variant}/{name}")
        if port_var := healthcheck_port_var(service):
            assert port_var in env, f"{variant}/{name}: healthcheck reads {port_var}, which is not set"
        address = env.get("TIDAL_COORDINATOR")
        if address:
            host, port = address.rsplit(":", 1)
            target = "coordinator" if host in ("coordinator", "127.0.0.1") else host
            assert port == env_of(services[target])["TIDAL_PORT"], f"{variant}/{name}: {address}"
    published = [p for p in model["services"]["coordinator"].get("ports", [])]
    coordinator_env = env_of(services["coordinator"])
    for mapping in published:
        container_port = mapping.rsplit(":", 1)[1]
        assert container_port in (coordinator_env["TIDAL_PORT"], coordinator_env["TIDAL_HTTP_PORT"]), mapping


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param.name, kustomize(request.param)


def test_overlays_exist() -> None:
    assert {p.name for p in OVERLAYS} >= {"sync", "async"}


def test_k8s_containers_agree_with_cli_image_and_ports(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    compose_image = COMPOSE_VARIANTS["default"]["services"]["coordinator"]["image"]
    roles = set()
    for workload in workloads(docs):
        where = f"{name}/{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == image_user(), where
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"):
            assert key in labels, f"{where}: pod label {key}"
        for key in ("app.kubernetes.io/part-of", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
            assert key in workload["metadata"]["labels"], f"{where}: label {key}"
        for container in spec["containers"]:
            assert container["image"] == compose_image, where
            env = container_env(container)
            command, _ = check_invocation(container["args"], env, where)
            roles.add(command.name)
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for port_name, number in ports.items():
                assert env[PORT_VARS[port_name]] == str(number), f"{where}: port {port_name}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                # kubelet's native gRPC probe cannot present a client certificate: kubelet asks the
                # /metrics server (HTTPS, the port checked above) for /healthz instead, no process.
                assert "metrics" in ports, f"{where}: {probe} probes the port named metrics"
                expected = {"httpGet": {"scheme": "HTTPS", "port": "metrics", "path": "/healthz"}}
                assert {k: v for k, v in container[probe].items() if k in ("httpGet", "exec", "grpc")} == expected, (
                    f"{where}: {probe}"
                )
                assert container[probe]["timeoutSeconds"] >= 5, f"{where}: {probe} must allow a busy node"
            assert "limits" in container["resources"] and "requests" in container["resources"], where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
    assert roles == {"coordinator", "shard", "worker"}


def test_k8s_services_select_pods_with_their_target_ports(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    pods = []
    for w in workloads(docs):
        ports = {p["name"] for c in pod_spec(w)["containers"] for p in c["ports"]}
        pods.append((w["spec"]["template"]["metadata"]["labels"], ports))
    for svc_name, service in by_kind(docs, "Service").items():
        selector = service["spec"]["selector"]
        matched = [ports for labels, ports in pods if selector.items() <= labels.items()]
        assert matched, f"{name}: Service {svc_name} selects no pod"
        for port in service["spec"]["ports"]:
            assert all(port["targetPort"] in ports for ports in matched), f"{name}: {svc_name} {port}"


def test_k8s_addresses_resolve_to_services(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    services = by_kind(docs, "Service")
    (shards,) = by_kind(docs, "StatefulSet").values()
    headless = services[shards["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert shards["spec"]["podManagementPolicy"] == "Parallel"
    for workload in workloads(docs):
        for container in pod_spec(workload)["containers"]:
            env = container_env(container)
            if "TIDAL_COORDINATOR" in env:
                host, port = env["TIDAL_COORDINATOR"].rsplit(":", 1)
                assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], f"{name}: {host}:{port}"
            if "TIDAL_ADVERTISE_HOST" in env:
                # $(POD_NAME).<headless service>.$(POD_NAMESPACE).svc
                parts = env["TIDAL_ADVERTISE_HOST"].split(".")
                assert parts[0] == "$(POD_NAME)" and parts[1] == headless["metadata"]["name"], name
                fields = {e["name"] for e in container["env"] if "valueFrom" in e}
                assert {"POD_NAME", "POD_NAMESPACE"} <= fields


def _job_spec(docs: list[dict], coordinator: dict) -> dict:
    container = pod_spec(coordinator)["containers"][0]
    job_file = Path(container_env(container)["TIDAL_JOB_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == job_file.parent]
    (volume,) = [v for v in pod_spec(coordinator)["volumes"] if v["name"] == mount["name"]]
    configmap = by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]
    return configmap["data"][job_file.name]


def test_k8s_job_spec_matches_replicas(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    coordinator = by_kind(docs, "Deployment")["tidal-coordinator"]
    spec = parse_job_spec(yaml.safe_load(_job_spec(docs, coordinator)))
    assert spec.mode.value == name
    (shards,) = by_kind(docs, "StatefulSet").values()
    assert shards["spec"]["replicas"] == spec.num_shards
    workers = [
        w
        for w in workloads(docs)
        if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    ]
    (worker,) = workers
    if worker["kind"] == "Job":
        assert worker["spec"]["completionMode"] == "Indexed"
        assert worker["spec"]["completions"] == worker["spec"]["parallelism"] == spec.num_workers
    else:
        assert worker["kind"] == "Deployment" and worker["spec"]["replicas"] == spec.num_workers
    assert (worker["kind"] == "Job") == (name == "sync")


def test_k8s_scale_down_targets_exist_and_rbac_allows_exactly_them(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    coordinator = by_kind(docs, "Deployment")["tidal-coordinator"]
    env = container_env(pod_spec(coordinator)["containers"][0])
    assert env["TIDAL_EXIT_WHEN_DONE"] == "true"
    targets = parse_targets(env["TIDAL_K8S_SCALE_DOWN"])
    kinds = {"statefulsets": "StatefulSet", "deployments": "Deployment"}
    for target in targets:
        assert target.name in by_kind(docs, kinds[target.resource]), f"{name}: no {target}"
    # Every Deployment/StatefulSet of tidal is scaled down, its own Deployment last.
    long_lived = {(k.lower() + "s", n) for k in ("Deployment", "StatefulSet") for n in by_kind(docs, k)}
    assert {(t.resource, t.name) for t in targets} == long_lived
    assert targets[-1].name == "tidal-coordinator"
    # Members that run to the end of the job exit by themselves.
    for workload in workloads(docs):
        if workload["metadata"]["name"] != "tidal-coordinator":
            assert container_env(pod_spec(workload)["containers"][0])["TIDAL_EXIT_AFTER_JOB"] == "true"

    account = pod_spec(coordinator)["serviceAccountName"]
    (binding,) = [b for b in by_kind(docs, "RoleBinding").values() if any(s["name"] == account for s in b["subjects"])]
    role = by_kind(docs, "Role")[binding["roleRef"]["name"]]
    granted = {
        (resource.removesuffix("/scale"), name)
        for rule in role["rules"]
        for resource in rule["resources"]
        for name in rule["resourceNames"]
    }
    assert all(r.endswith("/scale") and rule["verbs"] == ["patch"] for rule in role["rules"] for r in rule["resources"])
    assert {(t.resource, t.name) for t in targets} <= granted
    # Other pods get no token at all.
    for workload in workloads(docs):
        if workload is not coordinator:
            assert pod_spec(workload)["automountServiceAccountToken"] is False


@pytest.fixture(scope="module")
def tls_secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The Secrets tls-secrets.sh prints for a `tidal certs --split` folder, by name."""
    return render_tls_secrets(tmp_path_factory.mktemp("pki") / "pki", documented_sans())


def test_k8s_mutual_tls_from_one_secret_per_role(
    overlay: tuple[str, list[dict]], tls_secrets: dict[str, dict[str, Any]]
) -> None:
    name, docs = overlay
    sans = documented_sans()
    for workload in workloads(docs):
        spec = pod_spec(workload)
        for container in spec["containers"]:
            where = f"{name}/{workload['metadata']['name']}"
            env = container_env(container)
            role = container["args"][0]
            assert "TIDAL_ALLOW_PLAINTEXT" not in env, where
            assert env["TIDAL_MODEL_MODULES"] == "", f"{where}: job specs could load any module"
            assert env["TIDAL_TLS_NAME"] == role, where
            secret, read_only = secret_mounts(spec, container)[env["TIDAL_TLS_DIR"]]
            assert read_only and secret == f"tidal-tls-{role}", where
            (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == secret]
            assert volume["secret"]["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == 10001, where
            keys = set(tls_secrets[secret]["data"])
            assert {"ca.crt", f"{role}.crt", f"{role}.key"} <= keys and "ca.key" not in keys, (where, keys)
            if "TIDAL_TOKENS_FILE" in env:
                assert role == "coordinator" and Path(env["TIDAL_TOKENS_FILE"]).name in keys, where
            if "TIDAL_COORDINATOR" in env:
                assert env["TIDAL_COORDINATOR"].rsplit(":", 1)[0] in sans, where
            if "TIDAL_ADVERTISE_HOST" in env:
                advertised = env["TIDAL_ADVERTISE_HOST"].replace("$(POD_NAMESPACE)", "tidal")
                assert "*." + advertised.split(".", 1)[1] in sans, where
    assert all(s["metadata"]["namespace"] == "tidal" for s in tls_secrets.values())
