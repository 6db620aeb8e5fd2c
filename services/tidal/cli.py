"""The `tidal` command: the typer app, its commands registered in the order `tidal --help` lists
them, and the help's presentation.

The services run from cli_coordinator.py (coordinator) and cli_members.py (shard, worker); the
runs on a local cluster from cli_local.py (demo, compare, advise); the client commands from
cli_client.py; `certs` from cli_certs.py; `climate` from climate/cli.py.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer

from tidal import cli_certs, cli_client, cli_coordinator, cli_local, cli_members
from tidal.climate.cli import climate_app

app = typer.Typer(
    help="tidal: distributed PyTorch training with a parameter server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(climate_app, name="climate")

cli_coordinator.register(app)
cli_members.register(app)
cli_local.register(app)
cli_client.register(app)
cli_certs.register(app)


def _plain_labels(command: Any) -> None:
    """Help without typer's type labels: no `<bool>` beside a flag, and an argument shown as
    SPEC_FILE, not `{spec_file}`. (Typer's parameter classes are its own: duck-typed here.)"""
    for param in command.params:
        if param.param_type_name == "option" and getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = label = (param.name or "").upper()
            if param.required:  # typer writes {NAME} for a required argument; click's own style is NAME
                param._usage_display_name = lambda label=label: label
    own_help = command.get_help_option

    def help_option(ctx: Any) -> Any:  # --help is made per context, not one of the params
        option = own_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _plain_labels(sub)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    command = typer.main.get_command(app)
    _plain_labels(command)
    try:
        command()
    except KeyboardInterrupt:
        sys.exit(130)
