"""User code reaches the workers only (docs/bring-your-own.md, "Deploying user code"): the compose
override mounts examples/byo into the worker containers, the Kubernetes component gives the worker
pods the derived image of deploy/docker/byo-worker.Dockerfile; both allow the package with
TIDAL_MODEL_MODULES on the workers, and the coordinator and the shards keep the empty allow-list.
Rendered by the real tools (`docker-compose config`, `kubectl kustomize`), then checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    BYO_COMPONENT,
    BYO_COMPOSE,
    BYO_DOCKERFILE,
    COMPOSE_FILE,
    COMPOSE_OVERRIDE,
    OVERLAYS,
    ROOT,
    by_kind,
    check_invocation,
    container_env,
    kustomize,
    pod_spec,
    require_tool,
    workloads,
)
from tests.deploy.test_kubernetes import strict_validate
from tidal.client import load_spec_file
from tidal.core.model_source import check_model_module
from tidal.core.plan import job_dataset, job_model, job_shard_map
from tidal.core.spec import JobSpec, parse_job_spec

BYO = ROOT / "examples" / "byo"
PACKAGE = "byo_user"
ALLOW = "TIDAL_MODEL_MODULES"


def _dockerfile_path() -> str:
    """Where the derived image puts the user's folder (its PYTHONPATH)."""
    (path,) = re.findall(r"^ENV PYTHONPATH=(\S+)$", BYO_DOCKERFILE.read_text(), re.MULTILINE)
    return path


def _check_user_job(spec: JobSpec, user_root: str) -> None:
    """The spec's user code lies in the allowed package and its data where the workers see the folder."""
    for field, name in (("model.name", spec.model.name), ("objective", spec.objective or "")):
        check_model_module(name.partition(":")[0], (PACKAGE,), field)
    path = PurePosixPath(spec.dataset.args["path"])
    assert path.is_relative_to(user_root), f"dataset.args.path {path} is not under {user_root}"


def _plans(spec_dict: dict[str, Any], user_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job builds its data, model and shard map from the example's package and CSV."""
    monkeypatch.syspath_prepend(str(BYO))
    from make_data import write_csv  # examples/byo/make_data.py, on the path only now

    csv = write_csv(tmp_path / "data")
    args = spec_dict["dataset"]["args"]
    assert PurePosixPath(args["path"]) == PurePosixPath(user_root) / "data" / csv.name
    spec = parse_job_spec({**spec_dict, "dataset": {**spec_dict["dataset"], "args": {**args, "path": str(csv)}}})
    assert job_shard_map(spec, job_model(spec, job_dataset(spec, model_modules=(PACKAGE,)))).num_shards == 2


# --- docker compose --------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    tool = require_tool("docker-compose")
    files = [a for f in (COMPOSE_FILE, COMPOSE_OVERRIDE, BYO_COMPOSE) for a in ("-f", str(f))]
    done = subprocess.run([tool, *files, "config"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) as `docker-compose config` writes them."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def test_compose_mounts_the_users_folder_on_the_workers_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    env = {k: str(v) for k, v in worker["environment"].items()}
    root = env["PYTHONPATH"]
    assert env[ALLOW] == PACKAGE
    mounts = _mounts(worker)
    assert mounts[root] == (str(BYO), "ro")
    assert "/etc/tidal/tls" in mounts  # merged by container path: the TLS share stays
    assert (BYO / PACKAGE / "__init__.py").is_file()
    check_invocation(worker["command"], env, "byo/worker")
    for name, service in services.items():
        if name == "worker":
            continue
        assert root not in _mounts(service), name
        environment = service.get("environment") or {}
        assert "PYTHONPATH" not in environment, name
        assert environment.get(ALLOW, "") == "", f"{name}: user code allowed outside the workers"


def test_compose_submits_the_byo_job_that_matches_the_stack(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit = compose["services"]["submit"]
    check_invocation(submit["command"], {}, "byo/submit")
    job_file = PurePosixPath(submit["command"][1])
    source, _ = _mounts(submit)[str(job_file.parent)]
    spec_dict = load_spec_file(Path(source) / job_file.name)
    spec = parse_job_spec(spec_dict)
    assert spec.num_workers == compose["services"]["worker"]["deploy"]["replicas"]
    assert spec.num_shards == len([n for n in compose["services"] if n.startswith("shard-")])
    root = compose["services"]["worker"]["environment"]["PYTHONPATH"]
    _check_user_job(spec, root)
    _plans(spec_dict, root, tmp_path, monkeypatch)


# --- the derived image -------------------------------------------------------------------
def test_the_derived_image_adds_the_package_to_tidals_image() -> None:
    text = BYO_DOCKERFILE.read_text()
    (default,) = re.findall(r"^ARG TIDAL_IMAGE=(\S+)$", text, re.MULTILINE)
    assert default == yaml.safe_load(COMPOSE_FILE.read_text())["x-tidal"]["image"]
    assert re.search(r"^FROM \$\{TIDAL_IMAGE\}$", text, re.MULTILINE)
    assert "USER" not in re.sub(r"#.*", "", text)  # keeps tidal's non-root user
    copies = re.findall(r"^COPY (\S+) (\S+)$", text, re.MULTILINE)
    assert (f"{PACKAGE}/", f"{_dockerfile_path()}/{PACKAGE}/") in copies
    # The build context is examples/byo: the package is there (data/ is what make_data.py writes).
    assert all((BYO / src).is_dir() or src == "data/" for src, _ in copies)


# --- Kubernetes --------------------------------------------------------------------------
@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return kustomize(request.param, (BYO_COMPONENT,), tmp_path_factory.mktemp("byo-kustomize"))


def test_k8s_component_passes_strict_validation(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    done = strict_validate(rendered, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_k8s_component_gives_the_derived_image_and_allow_list_to_the_workers_only(
    rendered: list[dict[str, Any]],
) -> None:
    seen = set()
    for workload in workloads(rendered):
        component = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        seen.add(component)
        for container in pod_spec(workload)["containers"]:
            env = container_env(container)
            where = f"{workload['kind']}/{workload['metadata']['name']}"
            if component == "worker":
                assert container["image"] == "tidal-byo-worker:0.1.0", where
                assert env[ALLOW] == PACKAGE, where
                check_invocation(container["args"], env, where)
            else:
                assert container["image"].startswith("tidal:"), where
                assert env.get(ALLOW, "") == "", where
    assert {"worker", "coordinator", "shard"} <= seen


def test_k8s_component_job_runs_the_users_code_on_the_overlays_members(
    rendered: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_map,) = [c for name, c in by_kind(rendered, "ConfigMap").items() if name.startswith("tidal-job-")]
    (text,) = config_map["data"].values()
    assert text == (BYO_COMPONENT / "job.yaml").read_text()
    spec_dict = yaml.safe_load(text)
    spec = parse_job_spec(spec_dict)
    (shards,) = by_kind(rendered, "StatefulSet").values()
    (workers,) = [w for w in workloads(rendered) if w["metadata"]["name"] == "tidal-worker"]
    count = workers["spec"].get("completions", workers["spec"].get("replicas"))
    assert (spec.num_workers, spec.num_shards) == (count, shards["spec"]["replicas"])
    _check_user_job(spec, _dockerfile_path())
    _plans(spec_dict, _dockerfile_path(), tmp_path, monkeypatch)


def test_the_package_is_not_importable_without_its_folder() -> None:
    # What keeps it off the coordinator and the shards: nothing installs it, only the workers' path has it.
    done = subprocess.run([sys.executable, "-c", f"import {PACKAGE}"], check=False, capture_output=True, cwd=ROOT)
    assert done.returncode != 0
