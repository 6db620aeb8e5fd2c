"""The Python API against real processes: one local cluster (tidal.local_cluster) for the module,
with a user's model package allow-listed and on the services' PYTHONPATH."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tidal
from tidal.core.errors import DeadlineExceededError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from tidal.transport.tls import InsecureConfigError

USER_MODEL = """
import math

from torch import nn


def tiny(input_shape, num_classes, width=8):
    hidden = nn.Linear(math.prod(input_shape), width)
    return nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), nn.Linear(width, num_classes))
"""
SHORT = tidal.JobSpec(
    model={"name": "mlp", "args": {"hidden": [16]}},
    dataset={"name": "synthetic", "args": {"num_samples": 512}},
    mode="sync",
    steps=12,
    num_workers=2,
    eval_every=4,
)
# Long enough to still run when the test looks again; cancelled by the test.
ENDLESS = SHORT.replace(steps=10_000_000, eval_every=0)
JOB_TIMEOUT_S = 120.0
ROOT = Path(__file__).resolve().parents[2]
# Starts its own cluster: seconds of process start-up on a small machine.
SCRIPT_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tidal.Cluster]:
    user_dir = tmp_path_factory.mktemp("user-code")
    (user_dir / "tidal_user_models.py").write_text(USER_MODEL)
    workdir = tmp_path_factory.mktemp("api-cluster")
    with tidal.local_cluster(
        shards=1, workers=2, user_modules=["tidal_user_models"], module_dirs=[user_dir], workdir=workdir
    ) as c:
        yield c


@pytest.fixture
def client(cluster: tidal.Cluster) -> Iterator[tidal.Client]:
    with cluster.client() as c:
        yield c


def _wait_until_running(job: tidal.Job) -> None:
    for status in job.watch(timeout_s=JOB_TIMEOUT_S):
        if status.state == "running" or status.done:
            return


def test_submit_wait_result(client: tidal.Client) -> None:
    seen: list[tidal.JobStatus] = []
    job = client.submit(SHORT)
    result = job.wait(progress=seen.append, timeout_s=JOB_TIMEOUT_S)
    assert isinstance(result, tidal.JobResult)
    assert (result.job_id, result.state, result.mode, result.version) == (job.job_id, "succeeded", "sync", 12)
    assert result.val_loss is not None and result.val_accuracy is not None and result.duration_s > 0
    assert [e.version for e in result.evals][-1] == 12 and result.spec["steps"] == 12
    assert seen and all(isinstance(s, tidal.JobStatus) and isinstance(s.state, str) for s in seen)
    assert seen[-1].done and seen[-1].state == "succeeded"
    assert job.status().state == "succeeded"
    assert job.result().version == 12  # an ended job answers at once
    assert job.job_id in {s.job_id for s in client.jobs()}


def test_iterating_a_job_follows_it_to_its_end(client: tidal.Client) -> None:
    states = [status.state for status in client.submit(SHORT.replace(mode="async"))]
    assert states[-1] == "succeeded" and set(states) <= {"pending", "running", "succeeded"}


def test_a_mapping_spec_runs_too(client: tidal.Client) -> None:
    result = client.submit({"mode": "async", "steps": 5, "dataset": {"name": "synthetic"}}).result()
    assert result.state == "succeeded" and result.version >= 10  # async: in-flight pushes may land past it


def test_the_facade_works_inside_a_running_event_loop(cluster: tidal.Cluster) -> None:
    async def notebook_cell() -> tidal.JobResult:
        assert asyncio.get_running_loop().is_running()  # as in Jupyter: a loop runs on this thread
        with cluster.client() as client:
            return client.submit(SHORT).result(timeout_s=JOB_TIMEOUT_S)

    assert asyncio.run(notebook_cell()).state == "succeeded"


def test_the_async_client_stays_for_async_code(cluster: tidal.Cluster) -> None:
    async def run() -> tidal.JobResult:
        async with cluster.async_client() as client:
            job = await client.submit(SHORT)  # a JobSpec, or a dict
            return tidal.JobResult.from_proto(await client.wait(job.job_id))

    assert asyncio.run(run()).state == "succeeded"


def test_ctrl_c_in_wait_says_the_job_keeps_running(client: tidal.Client) -> None:
    job = client.submit(ENDLESS)
    _wait_until_running(job)

    def interrupt(status: tidal.JobStatus) -> None:
        raise KeyboardInterrupt  # what Ctrl-C raises in the waiting thread

    with pytest.raises(KeyboardInterrupt, match=f"job {job.job_id} keeps running on the cluster"):
        job.wait(progress=interrupt)
    assert job.status().state == "running"
    assert job.cancel().state == "cancelled"
    with pytest.raises(tidal.JobFailedError, match=f"job {job.job_id} .* cancelled") as caught:
        job.result(timeout_s=JOB_TIMEOUT_S)
    assert caught.value.result.state == "cancelled"


# A script that waits on a job until Ctrl-C; argv: coordinator address, steps.
WAITING_SCRIPT = """
import sys
import tidal
from tidal.transport.tls import SecurityConfig

with tidal.Client(sys.argv[1], SecurityConfig()) as client:
    job = client.submit({"steps": int(sys.argv[2]), "dataset": {"name": "synthetic"}})
    print(job.job_id, flush=True)
    job.wait(progress=lambda status: print(status.state, flush=True))
"""


def test_a_real_sigint_in_wait_says_the_job_keeps_running(cluster: tidal.Cluster, client: tidal.Client) -> None:
    script = subprocess.Popen(
        [sys.executable, "-c", WAITING_SCRIPT, cluster.address, str(ENDLESS.steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert script.stdout is not None
    job = client.job(script.stdout.readline().strip())
    while script.stdout.readline().strip() != "running":  # then it waits inside job.wait()
        assert script.poll() is None
    script.send_signal(signal.SIGINT)
    _, stderr = script.communicate(timeout=JOB_TIMEOUT_S)
    assert script.returncode != 0
    assert f"KeyboardInterrupt: interrupted: stopped waiting, job {job.job_id} keeps running" in stderr
    assert job.status().state == "running"
    job.cancel()


def test_ctrl_c_in_wait_cancels_when_asked(client: tidal.Client) -> None:
    job = client.submit(ENDLESS)
    _wait_until_running(job)

    def interrupt(status: tidal.JobStatus) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match=f"job {job.job_id} cancelled"):
        job.wait(progress=interrupt, cancel_on_interrupt=True)
    assert job.status().state == "cancelled"


def test_a_wait_past_its_timeout_leaves_the_job_running(client: tidal.Client) -> None:
    job = client.submit(ENDLESS)
    _wait_until_running(job)
    with pytest.raises(DeadlineExceededError, match=r"did not end within 0\.2s; it keeps running"):
        job.wait(timeout_s=0.2)
    assert job.status().state == "running"
    job.cancel()


def test_bad_input_is_refused_with_the_field(client: tidal.Client) -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.optimizer\.lr"):
        client.submit({"optimizer": {"lr": 0}})
    with pytest.raises(NotFoundError):
        client.job("job-does-not-exist").status()
    with pytest.raises(InvalidArgumentError, match="job_id: must not be empty"):
        client.job("")


def test_a_users_own_model_module_runs_when_allowed(client: tidal.Client) -> None:
    spec = SHORT.replace(model={"name": "tidal_user_models:tiny", "args": {"width": 4}})
    assert client.submit(spec).result(timeout_s=JOB_TIMEOUT_S).state == "succeeded"


def test_a_module_outside_the_allow_list_is_refused(client: tidal.Client) -> None:
    spec = SHORT.replace(model={"name": "json:loads"})
    with pytest.raises((PermissionDeniedError, tidal.JobFailedError), match="TIDAL_MODEL_MODULES"):
        client.submit(spec).result(timeout_s=JOB_TIMEOUT_S)


def test_local_cluster_arguments_are_checked(tmp_path: Path) -> None:
    cases = {
        "local_cluster.shards": {"shards": 0},
        "local_cluster.workers": {"workers": -1},
        "local_cluster.user_modules: 'a b'": {"user_modules": ["a b"]},
        "local_cluster.user_modules: a list": {"user_modules": "pkg"},
        "local_cluster.module_dirs": {"module_dirs": [tmp_path / "missing"]},
    }
    for message, kwargs in cases.items():
        with pytest.raises(InvalidArgumentError, match=message), tidal.local_cluster(**kwargs):  # type: ignore[arg-type]
            pass


def test_connect_without_security_settings_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TIDAL_TLS_DIR", "TIDAL_TLS_CA", "TIDAL_TLS_CERT", "TIDAL_TLS_KEY", "TIDAL_ALLOW_PLAINTEXT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InsecureConfigError, match=r"tidal\.connect: no TLS CA to verify the server with"):
        tidal.connect("127.0.0.1:1")


def _readme_python_blocks() -> list[str]:
    """The Python blocks of the README's "### Python" section (other sections have their own tests)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)


def test_the_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py")],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^rain-sync: succeeded in .* 40 versions, 2560 samples, val loss 0\.\d+", done.stdout, re.M)
    assert re.search(r"^rain-async: succeeded in .* versions, .* val accuracy 0\.\d+", done.stdout, re.M)
    assert "  rain-async: running" in done.stdout  # the progress lines of the async client


def test_the_readme_runs_its_local_cluster_snippet() -> None:
    local, _ = _readme_python_blocks()
    done = subprocess.run(
        [sys.executable, "-c", local], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[0] in {"pending", "running"}
    assert re.fullmatch(r"succeeded 4\d\d \d+\.\d+", lines[-1]), lines[-1]


def test_the_readme_async_snippet_runs(cluster: tidal.Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    _, async_snippet = _readme_python_blocks()
    namespace: dict[str, object] = {"__name__": "readme"}  # not "__main__": the test calls main itself
    exec(compile(async_snippet, "README.md", "exec"), namespace)  # our own README's code
    asyncio.run(namespace["main"](cluster.address, cluster.security))  # type: ignore[operator]
    assert re.fullmatch(r"succeeded 0\.\d+\n", capsys.readouterr().out)


def test_a_tls_cluster_and_connect_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tidal.local_cluster(shards=1, workers=1, tls=True, workdir=tmp_path) as tls_cluster:
        assert tls_cluster.security.mutual and tls_cluster.security.token
        with tls_cluster.client() as client:
            assert client.submit(SHORT.replace(num_workers=1)).result(timeout_s=JOB_TIMEOUT_S).state == "succeeded"
        # What a script on another machine would set: the bundle's folder, holder and token file.
        pki = tmp_path / "pki"
        monkeypatch.setenv("TIDAL_TLS_DIR", str(pki))
        monkeypatch.setenv("TIDAL_TLS_NAME", "admin")
        monkeypatch.setenv("TIDAL_TOKEN_FILE", str(pki / "admin.token"))
        with tidal.connect(tls_cluster.address) as client:
            assert [s.state for s in client.jobs()] == ["succeeded"]
