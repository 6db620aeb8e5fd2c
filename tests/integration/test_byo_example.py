"""The bring-your-own example as a new user runs it: the commands of the README's "Bring your own
job" section, in a copy of examples/byo, against real processes.

The user package `byo_user` is importable by the workers only (their PYTHONPATH, as the README
sets it); the coordinator and the shard run with TIDAL_MODEL_MODULES="" (built-in code only) and
without it on their path, and the jobs still succeed: they never import user code.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidal.launcher import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Bring your own job"
# Process start-up on 2 busy cores, then a few seconds of training per job.
COMMAND_TIMEOUT_S = 180.0
METRIC = "focal_loss"  # byo_user/losses.py's function: the metric every evaluation reports


def readme_block(language: str) -> str:
    """The section's first code block in `language`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    block = re.search(rf"^```{language}\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert block, f"no {language} block under {SECTION!r}"
    return block.group(1)


def readme_commands() -> list[list[str]]:
    """The shell commands of the section's bash block, split as the shell would (comments dropped)."""
    return [words for line in readme_block("bash").splitlines() if (words := shlex.split(line, comments=True))]


def _env_prefix(words: list[str], cwd: Path) -> tuple[dict[str, str], list[str]]:
    """(`NAME=value` assignments before the command, the command); a PYTHONPATH goes in front of
    this test's own (which holds the tidal under test), its folders made absolute."""
    env: dict[str, str] = {}
    while "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if "PYTHONPATH" in env:
        folders = [str(cwd / p) for p in env["PYTHONPATH"].split(os.pathsep)]
        env["PYTHONPATH"] = os.pathsep.join([*folders, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env, words


def _local(args: list[str], address: str) -> list[str]:
    """A README command's arguments for this test's cluster: its coordinator, ports the kernel picks."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--coordinator":
            out[i + 1] = address
        elif arg in ("--port", "--metrics-port"):
            out[i + 1] = "0"
    return out


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of examples/byo (no generated data), as the current folder."""
    skip = shutil.ignore_patterns("data", "__pycache__")
    shutil.copytree(ROOT / "examples" / "byo", tmp_path / "examples" / "byo", ignore=skip)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cluster(project: Path) -> Iterator[LocalCluster]:
    """A coordinator and a shard, as the README's "Using it" starts them, that allow no user code."""
    with LocalCluster(project / "cluster", num_shards=1, worker_slowdowns=(), env={"TIDAL_MODEL_MODULES": ""}) as c:
        yield c


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )


def test_the_readme_commands_train_with_the_users_model_loss_and_csv(project: Path, cluster: LocalCluster) -> None:
    commands = readme_commands()
    assert [w for w in commands if w[-1] == "--wait"], "the section submits no job"
    workers, submitted, scripts = 0, [], []
    for words in commands:
        env, command = _env_prefix(list(words), project)
        program, *args = command
        where = f"README: {shlex.join(words)}"
        if program == "tidal" and args[0] == "worker":
            assert env.get("TIDAL_MODEL_MODULES") == "byo_user", where
            cluster.spawn(f"worker-{workers}", _local(args, cluster.coordinator_address), env=env)
            workers += 1
            continue
        cluster.wait_ready(list(cluster.services))  # every worker up before anything is submitted
        if program == "tidal":
            args = [*_local(args, cluster.coordinator_address), "--coordinator", cluster.coordinator_address]
            done = run([sys.executable, "-m", "tidal", *args, "--allow-plaintext"], env, project)
            submitted.append(done)
        else:
            assert program == "python", where
            done = run([sys.executable, *args], env, project)
            scripts.append(done)
        assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}\n{cluster.tail('worker-0', 20)}"
    assert workers == 2 and len(submitted) == 2 and len(scripts) == 2
    assert (project / "examples" / "byo" / "data" / "weather.csv").is_file()  # make_data.py's default folder
    for mode, done in zip(("sync", "async"), submitted, strict=True):
        # The progress bar's last line: the mode, the end state and the metric named after the loss.
        assert re.search(rf"{mode}\s+succeeded\s+loss \d+\.\d+ val {METRIC} 0\.\d+", done.stderr), done.stderr
    run_py = scripts[-1].stdout
    assert re.search(rf"^byo-sync: succeeded in .*, 60 versions, val {METRIC} 0\.\d+$", run_py, re.M), run_py
    assert re.search(rf"^byo-async: succeeded in .* versions, val {METRIC} 0\.\d+$", run_py, re.M), run_py
    # The section's Python snippet, on the data written above (its own local cluster).
    done = run([sys.executable, "-c", readme_block("python")], {}, project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(rf"succeeded {METRIC} 0\.\d+\n", done.stdout), done.stdout


def test_the_yaml_in_the_readme_is_sync_yaml() -> None:
    assert readme_block("yaml") == "".join((ROOT / "examples" / "byo" / "sync.yaml").read_text().splitlines(True)[1:])


def test_run_py_says_what_to_do_without_the_data(project: Path) -> None:
    done = run([sys.executable, "examples/byo/run.py"], {}, project)
    assert done.returncode == 2
    assert "weather.csv is missing: run `python" in done.stderr and "make_data.py` first" in done.stderr
