"""The `tidal climate` commands. Heavy imports (xarray, torch) happen inside each command, so
the rest of the CLI starts as fast as before."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidal.core.errors import TidalError

climate_app = typer.Typer(
    help="Climate workloads: synthetic fields, shared normalisation statistics, the worked example.",
    no_args_is_help=True,
)
err = Console(stderr=True)


def _fail(exc: TidalError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # one line, however long the path
    return typer.Exit(2)


@climate_app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output: a NetCDF4 file, or a Zarr store if it ends in .zarr.")],
    size: Annotated[str | None, typer.Option(help="Approximate size, e.g. 200kB, 50MB, 2GiB (sets the steps).")] = None,
    steps: Annotated[int | None, typer.Option(min=2, help="Time steps (instead of --size).")] = None,
    lat: Annotated[int, typer.Option(min=2, help="Latitude rows.")] = 32,
    lon: Annotated[int, typer.Option(min=4, help="Longitude columns.")] = 64,
    step_hours: Annotated[float, typer.Option(help="Hours between time steps.")] = 6.0,
    seed: Annotated[int, typer.Option(min=0, help="Random seed: the same seed writes the same field.")] = 0,
    val_steps: Annotated[
        int, typer.Option(min=1, help="Trailing steps the sidecar statistics leave out (held out for validation).")
    ] = 16,
) -> None:
    """Write a synthetic 2 m temperature field and its normalisation-statistics sidecar."""
    from tidal.climate.example import write_sidecar  # noqa: PLC0415
    from tidal.core.climate.synth import SynthConfig, parse_size, write_field  # noqa: PLC0415

    try:
        if (size is None) == (steps is None):
            raise TidalError("give exactly one of --size or --steps")
        if size is not None:
            cfg = SynthConfig.for_size(parse_size(size), lat, lon, step_hours=step_hours, seed=seed)
        else:
            cfg = SynthConfig(n_lat=lat, n_lon=lon, steps=int(steps or 0), step_hours=step_hours, seed=seed)
        if val_steps >= cfg.steps - 1:
            raise TidalError(f"--val-steps {val_steps} leaves no training steps out of {cfg.steps}")
        # Like --out elsewhere: a folder that is not there yet is made.
        out.parent.mkdir(parents=True, exist_ok=True)
        write_field(str(out), cfg)
        sidecar = write_sidecar(str(out), None, val_steps, 64)
    except TidalError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise _fail(TidalError(f"OUT {out}: cannot write there ({exc.strerror or exc}{where})")) from None
    mb = cfg.steps * cfg.n_lat * cfg.n_lon * 4 / 1e6
    print(f"wrote {out}: t2m, {cfg.steps} steps x {cfg.n_lat} x {cfg.n_lon} ({mb:.1f} MB of data); stats {sidecar}")


@climate_app.command()
def stats(
    store: Annotated[Path, typer.Argument(help="NetCDF4 file or Zarr store.")],
    variables: Annotated[
        str | None, typer.Option(help="Comma-separated variables (default: all on time x lat x lon).")
    ] = None,
    val_steps: Annotated[int, typer.Option(min=1, help="Trailing time steps to leave out (the jobs' val_steps).")] = 16,
    stats_steps: Annotated[int, typer.Option(min=1, help="At most this many evenly spaced steps are read.")] = 64,
) -> None:
    """Compute per-variable normalisation statistics once, into STORE.stats.json (members read it)."""
    from tidal.climate.example import write_sidecar  # noqa: PLC0415

    names = [v.strip() for v in variables.split(",") if v.strip()] if variables else None
    try:
        sidecar = write_sidecar(str(store), names, val_steps, stats_steps)
    except TidalError as exc:
        raise _fail(exc) from None
    print(f"wrote {sidecar}")


@climate_app.command()
def example(
    out: Annotated[Path, typer.Option(help="Where the figures and results go.")] = Path("docs/climate"),
    workdir: Annotated[Path | None, typer.Option(help="Where logs go (default: a temporary folder).")] = None,
) -> None:
    """Run the worked example (examples/climate/) on a local cluster and plot forecasts against truth."""
    from tidal.climate.example import run_example  # noqa: PLC0415
    from tidal.progress import stdout_console  # noqa: PLC0415

    try:
        code = run_example(out, workdir, stdout_console())
    except TidalError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)
