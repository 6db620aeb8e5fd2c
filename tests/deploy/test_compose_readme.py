"""The README's docker compose commands hold for both variants: Compose (1.29, and v2 where found) accepts each
one's files and profile (the default files, and the host-network ones through the COMPOSE_FILE
line of .env.example), and the `tidal` command each `run` gives the `submit` service parses with
that service's environment and dials the coordinator's port."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.deploy.manifests import (
    COMPOSE_FILE,
    COMPOSE_OVERRIDE,
    ENV_EXAMPLE,
    HOST_NETWORK,
    ROOT,
    check_invocation,
    compose_model,
    env_of,
)
from tests.deploy.test_compose import COMPOSE_TOOLS, docker_compose

VARIANTS = {"default": (COMPOSE_FILE, COMPOSE_OVERRIDE), "host network": (COMPOSE_FILE, HOST_NETWORK)}
# `docker compose` options that come before the subcommand and take a value.
GLOBAL_WITH_VALUE = {"--profile", "-f", "--file", "-p", "--project-name", "--env-file"}
RUN_WITH_VALUE = {"--entrypoint", "-e", "--name", "-u", "--user", "-w", "--workdir"}


def readme_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### docker compose\n") : readme.index("### Kubernetes\n")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            code = line.split(" #", 1)[0].split(" > ", 1)[0].strip()
            if code.startswith(("docker compose ", "docker-compose ")):
                words = shlex.split(code)
                commands.append(words[2:] if words[0] == "docker" else words[1:])
    return commands


COMMANDS = readme_commands()


def split_global(words: list[str]) -> tuple[list[str], str, list[str]]:
    i = 0
    while words[i].startswith("-"):
        i += 2 if words[i] in GLOBAL_WITH_VALUE else 1
    return words[:i], words[i], words[i + 1 :]


def test_the_readme_shows_up_with_and_without_monitoring_and_runs_through_submit() -> None:
    ups = [split_global(c) for c in COMMANDS if split_global(c)[1] == "up"]
    assert {tuple(g) for g, _, _ in ups} == {("--profile", "monitoring"), ()}
    assert sum(split_global(c)[1] == "run" for c in COMMANDS) >= 2


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tool", COMPOSE_TOOLS)
def test_docker_compose_accepts_each_readme_command_in_both_variants(
    words: list[str], variant: str, tool: str, tmp_path: Path
) -> None:
    env_file = ENV_EXAMPLE
    if variant == "host network":  # as the README says: the COMPOSE_FILE line of .env.example, uncommented
        env_file = tmp_path / ".env"
        env_file.write_text(re.sub(r"^#(COMPOSE_FILE=)", r"\1", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    global_options, _, _ = split_global(words)
    rendered = docker_compose(*global_options, "config", env_file=env_file, tool=tool)
    assert ("network_mode: host" in rendered) is (variant == "host network")


RUNS = [split_global(c)[2] for c in COMMANDS if split_global(c)[1] == "run"]


@pytest.mark.parametrize("run", RUNS, ids=[" ".join(r) for r in RUNS])
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_readme_run_of_submit_works_in_both_variants(run: list[str], variant: str) -> None:
    model = compose_model(*VARIANTS[variant])
    i, entrypoint = 0, None
    while run[i].startswith("-"):
        if run[i] == "--entrypoint":
            entrypoint = run[i + 1]
        i += 2 if run[i] in RUN_WITH_VALUE else 1
    service, args = run[i], run[i + 1 :]
    assert service == "submit", run
    submit = model["services"]["submit"]
    env = env_of(submit)
    if entrypoint is not None:  # reads a file out of the service's certificate share
        assert entrypoint == "cat" and len(args) == 1 and Path(args[0]).parent == Path(env["TIDAL_TLS_DIR"]), run
        return
    _, params = check_invocation(args, env, f"README: docker compose run {' '.join(run)} ({variant})")
    host, port = params["coordinator"].rsplit(":", 1)
    coordinator = model["services"]["coordinator"]
    assert port == env_of(coordinator)["TIDAL_PORT"], params["coordinator"]
    assert host == ("127.0.0.1" if coordinator.get("network_mode") == "host" else "coordinator")
    for arg in args[1:]:
        if arg.startswith("/etc/tidal/jobs/"):
            (mount,) = [v for v in submit["volumes"] if v.split(":")[1] == "/etc/tidal/jobs"]
            assert (ROOT / mount.split(":")[0] / Path(arg).name).is_file(), arg
