#!/usr/bin/env python3
"""Checks that the ports the compose stack will bind are free on 127.0.0.1, before anything is
built: every bad one is one line naming the variable of .env to change, and the exit code is 1.

    scripts/compose-ports.py [--env-file .env] [VARIABLE ...]   (default: every *_PORT of .env.example)
    scripts/compose-ports.py --resolve-only VARIABLE             (prints its value, checks nothing)

A variable's value is resolved as docker compose does: the shell's environment, then the .env
file, then the default (.env.example holds the same defaults as the compose files'
${NAME:-default}; tests/deploy checks that they agree). Standard library only: it runs before
any virtual environment exists.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / ".env.example"
HOST = "127.0.0.1"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them (comments, blank lines and surrounding quotes dropped)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def resolve(names: list[str], env_file: Path, environ: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Each variable's value and where it came from."""
    defaults = read_env_file(EXAMPLE)
    local = read_env_file(env_file)
    out = {}
    for name in names:
        if name in environ:
            out[name] = (environ[name], "the environment")
        elif name in local:
            out[name] = (local[name], str(env_file))
        elif name in defaults:
            out[name] = (defaults[name], "the default")
        else:
            raise SystemExit(f"compose-ports: {name} is not a variable of {EXAMPLE.name}")
    return out


def is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the services bind: a port left in TIME_WAIT by a stopped one is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def problems(values: dict[str, tuple[str, str]], env_file: Path) -> list[str]:
    lines = []
    seen: dict[int, str] = {}
    for name, (text, source) in values.items():
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            lines.append(f"{name}={text!r} (from {source}) is not a port number (1-65535)")
            continue
        port = int(text)
        if port in seen:
            lines.append(f"{name} and {seen[port]} are both {port}: set {name} to another port in {env_file.name}")
        elif not is_free(port):
            lines.append(
                f"port {port} on {HOST} is in use by another program: set {name} to a free port in {env_file.name}"
            )
        seen.setdefault(port, name)
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env", help="default: .env beside the compose files")
    parser.add_argument("--resolve-only", action="store_true", help="print the values, check nothing")
    parser.add_argument("names", nargs="*", metavar="VARIABLE")
    args = parser.parse_args(argv)
    names = args.names or [n for n in read_env_file(EXAMPLE) if n.endswith("_PORT")]
    values = resolve(names, args.env_file, dict(os.environ))
    if args.resolve_only:
        print(" ".join(text for text, _ in values.values()))
        return 0
    bad = problems(values, args.env_file)
    for line in bad:
        print(f"compose-ports: {line}", file=sys.stderr)
    if bad:
        return 1
    print(" ".join(f"{name}={text}" for name, (text, _) in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
