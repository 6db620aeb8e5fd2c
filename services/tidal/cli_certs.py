"""`tidal certs`: a development CA, certificates and tokens for every role. `register` adds it
to the `tidal` app (cli.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tidal.cli_common import err
from tidal.core.errors import TidalError


def register(app: typer.Typer) -> None:
    """Adds `certs` to `app`."""
    app.command()(certs)


def certs(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the CA, certificates, keys and tokens.")],
    san: Annotated[
        list[str] | None,
        typer.Option(help="Extra DNS name or IP in every certificate (repeatable; localhost and 127.0.0.1 always)."),
    ] = None,
    extra: Annotated[
        list[str] | None,
        typer.Option(help="Another holder ROLE:NAME, e.g. worker:worker-1 (repeatable)."),
    ] = None,
    valid_days: Annotated[float, typer.Option(min=0.01, help="Validity of the certificates, in days.")] = 365.0,
    force: Annotated[bool, typer.Option(help="Overwrite existing certificates, keys and tokens.")] = False,
    keep_existing: Annotated[
        bool,
        typer.Option(help="Exit 0 without a change when the folder already holds a complete bundle (one-shot jobs)."),
    ] = False,
    split: Annotated[
        bool,
        typer.Option(
            help="Also copy each holder's share into OUT_DIR/NAME/ (CA certificate, its certificate, key, token; "
            "tokens.yaml for the coordinator) and the CA certificate into OUT_DIR/public/, one folder per service."
        ),
    ] = False,
) -> None:
    """Create a development CA, a certificate and a token per role (coordinator, shard, worker, admin)."""
    from tidal.security.bundle import bundle_exists, create_bundle, split_bundle  # noqa: PLC0415

    holders = []
    for item in extra or []:
        role, sep, name = item.partition(":")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected ROLE:NAME", param_hint="--extra")
        holders.append((role, name))
    if keep_existing and force:
        raise typer.BadParameter("cannot be combined with --force", param_hint="--keep-existing")
    try:
        kept = keep_existing and bundle_exists(out_dir, holders)
        written = [] if kept else create_bundle(out_dir, holders, san or [], valid_days, force)
        if split:
            written += split_bundle(out_dir, holders)
    except (FileExistsError, ValueError, OSError, TidalError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out_dir = out_dir.resolve()
    if kept and not written:
        print(f"{out_dir} already holds a complete bundle: kept it; every process then needs:")
    elif kept:
        print(
            f"{out_dir} already holds a complete bundle: kept it; wrote {len(written)} split files; every process needs:"
        )
    else:
        print(f"wrote {len(written)} files to {out_dir}; every process then needs:")
    if split:
        print(f"  TIDAL_TLS_DIR={out_dir}/NAME TIDAL_TLS_NAME=NAME, NAME being coordinator, shard, worker or admin")
        print(
            "  (the coordinator also TIDAL_TOKENS_FILE=.../coordinator/tokens.yaml, for REST); public/ has ca.crt only"
        )
        return
    print(f"  TIDAL_TLS_DIR={out_dir} TIDAL_TOKENS_FILE={out_dir / 'tokens.yaml'}")
    print("  TIDAL_TLS_NAME=<its certificate: coordinator|shard|worker|admin> (default: the command's role; admin")
    print(f"  for client commands) and TIDAL_TOKEN_FILE={out_dir}/<the same name>.token")
