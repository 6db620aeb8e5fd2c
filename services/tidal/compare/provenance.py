"""Where a report comes from: the command that made it and the code version that ran it."""

from __future__ import annotations

import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import tidal


def code_version() -> str:
    """`git describe --always --dirty` of the checkout tidal is imported from (a commit, with
    "-dirty" when files differ from it); else "tidal <package version>" (an installed wheel)."""
    package = Path(tidal.__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        described = None
    if described is not None and described.returncode == 0 and described.stdout.strip():
        return f"git {described.stdout.strip()}"
    try:
        return f"tidal {metadata.version('tidal')}"
    except metadata.PackageNotFoundError:
        return "tidal (version unknown)"


def command_line(spec_file: Path, out: Path, workdir: Path | None, restart: bool) -> str:
    """The `tidal compare` command that writes this report folder, as a shell would take it."""
    args = ["tidal", "compare", str(spec_file), "--out", str(out)]
    if workdir is not None:
        args += ["--workdir", str(workdir)]
    if restart:
        args.append("--restart")
    return shlex.join(args)
