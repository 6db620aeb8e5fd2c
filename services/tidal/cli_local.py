"""The commands that run on a local cluster of processes: demo, compare and advise. `register`
adds them to the `tidal` app (cli.py). Each imports what it runs (torch, matplotlib) only once
it runs, so `tidal --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tidal.cli_common import err, run_async
from tidal.progress import stdout_console


def register(app: typer.Typer) -> None:
    """Adds the local-cluster commands to `app`, in the order `tidal --help` lists them."""
    for command in (demo, compare, advise):
        app.command()(command)


def demo(
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per job.")] = 150,
    workdir: Annotated[Path | None, typer.Option(help="Where logs go (default: a temporary folder).")] = None,
    prometheus: Annotated[
        bool, typer.Option(help="Also start a local Prometheus (needs the binary) and keep everything up until Ctrl-C.")
    ] = False,
) -> None:
    """Train on a local cluster (1 coordinator, 2 shards, 3 workers, one 3x slower) in sync then async mode."""
    from tidal.demo import run_demo  # noqa: PLC0415

    raise typer.Exit(run_demo(steps, workdir, prometheus))


def compare(
    spec_file: Annotated[Path, typer.Argument(help="Compare spec, YAML or JSON (see examples/compare/).")],
    out: Annotated[Path | None, typer.Option(help="Report folder (default: compare-<name>).")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where logs go (default: a temporary folder).")] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the runs already in --out and run every one again.")
    ] = False,
) -> None:
    """Run the same job once per mode and seed on a local cluster; write report.md, PNG charts, results.json
    and runs.csv. Run again with the same --out, it resumes: runs already done there are kept."""
    from tidal.compare.main import run_compare  # noqa: PLC0415  # matplotlib and torch only when comparing

    raise typer.Exit(run_async(run_compare(spec_file, out, workdir, stdout_console(), restart)))


def advise(
    spec_file: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON: the job to advise on.")],
    probe_steps: Annotated[int, typer.Option(min=5, max=10_000, help="Steps per worker of the async probe.")] = 30,
    slowdowns: Annotated[
        str | None,
        typer.Option(help="How many times slower each worker's machine is, by rank, e.g. 1,1,4 (default: all 1)."),
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where logs go (default: a temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the advice as JSON on stdout.")] = False,
) -> None:
    """Probe a job on a local cluster and recommend a mode and its parameters, with the reason."""
    from tidal.advise import run_advise  # noqa: PLC0415  # torch and matplotlib only when advising

    factors = None
    if slowdowns is not None:
        try:
            factors = [float(x) for x in slowdowns.split(",")]
        except ValueError:
            err.print(f"[red]error:[/red] --slowdowns: expected numbers separated by commas, got {slowdowns!r}")
            raise typer.Exit(2) from None
        if any(not 1.0 <= f <= 1000.0 for f in factors):
            err.print(f"[red]error:[/red] --slowdowns: every factor must lie in [1, 1000], got {slowdowns!r}")
            raise typer.Exit(2)
    raise typer.Exit(run_async(run_advise(spec_file, probe_steps, factors, workdir, as_json, stdout_console(), err)))
