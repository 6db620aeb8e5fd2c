"""`tidal-probe`: a container healthcheck that costs a few hundredths of a CPU second.

`tidal health` is a full gRPC client started by the whole CLI (typer, rich, grpc, protobuf):
about half a CPU second per check. This probe asks the service's /metrics server for
GET /healthz (transport/health_http.py), which answers from the same gRPC health status
(200 SERVING, 503 NOT_SERVING while starting or draining after SIGTERM), using the standard
library only: it must never import the CLI, grpc, torch or anything outside `tidal.config`
(nor pathlib: each import is paid on every check).

  tidal-probe                          port from TIDAL_METRICS_PORT
  tidal-probe --port 9464
  tidal-probe --ready-file /tmp/ready.json   port from the service's ready file (a port 0 service)

TLS follows the service's own variables: with TIDAL_TLS_DIR (its ca.crt) or TIDAL_TLS_CA set,
HTTPS verifying the server against that CA, for host name TIDAL_TLS_SERVER_NAME or the host
dialled (no client certificate: /healthz, like /metrics, does not ask for one); plain HTTP
only with TIDAL_ALLOW_PLAINTEXT=1 or --allow-plaintext, as for the services themselves.
Exit status: 0 SERVING, 1 anything else (printed), 2 a bad flag or variable (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence

from tidal.config import ENV, SECURITY_ENV

HEALTH_PATH = "/healthz"  # transport/health_http.py (not imported: it imports starlette)
# The most of an answer read: the status line, a few headers and one word.
MAX_ANSWER_BYTES = 64 * 1024
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class UsageError(Exception):
    """A bad flag or variable: one line naming it, exit status 2."""


class NotServingError(Exception):
    """The service is not (yet, or no longer) SERVING, or did not answer: exit status 1."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tidal-probe",
        description="Healthcheck of a tidal service: GET /healthz on its /metrics port; exit 0 when SERVING.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, help=f"the service's /metrics port (default: {ENV['metrics_port']})")
    where.add_argument("--ready-file", help="read metrics_port from the service's --ready-file")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to connect, and for each read (default: 5)")
    parser.add_argument("--allow-plaintext", action="store_true", help="plain HTTP when no TLS variable is set")
    return parser.parse_args(argv)


def metrics_port(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.port is not None:
        port, what = args.port, "--port"
    elif args.ready_file is not None:
        try:
            with open(args.ready_file, encoding="utf-8") as ready:
                port, what = json.load(ready)["metrics_port"], f"--ready-file {args.ready_file}"
        except FileNotFoundError:
            raise NotServingError(f"not ready: {args.ready_file} does not exist (yet)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--ready-file: no metrics_port in {args.ready_file}: {exc}") from None
    else:
        what = ENV["metrics_port"]
        value = environ.get(what, "")
        if not value.strip().isdigit():
            raise UsageError(f"{what}: expected the service's /metrics port, got {value!r} (or pass --port)")
        port = int(value)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise UsageError(f"{what}: expected a port from 1 to 65535, got {port!r}")
    return port


def tls_context(environ: Mapping[str, str], allow_plaintext: bool) -> tuple[ssl.SSLContext | None, str]:
    """The context that verifies the service (None: plain HTTP), and the host name to verify."""
    ca, source = environ.get(SECURITY_ENV["tls_ca"], ""), SECURITY_ENV["tls_ca"]
    if not ca and (folder := environ.get(SECURITY_ENV["tls_dir"], "")):
        ca, source = os.path.join(folder, "ca.crt"), SECURITY_ENV["tls_dir"]
    tls_vars = [SECURITY_ENV[k] for k in ("tls_dir", "tls_ca", "tls_cert", "tls_key")]
    if not ca:
        if any(environ.get(var, "") for var in tls_vars):
            raise UsageError(f"{SECURITY_ENV['tls_ca']}: TLS is set up but there is no CA to verify the service with")
        plaintext = environ.get(SECURITY_ENV["allow_plaintext"], "").strip().lower()
        if plaintext not in _TRUE + _FALSE:
            raise UsageError(f"{SECURITY_ENV['allow_plaintext']}: expected 1/true/yes/on or 0/false/no/off")
        if allow_plaintext or plaintext in _TRUE:
            return None, ""
        raise UsageError(
            f"{SECURITY_ENV['tls_dir']}: no CA to verify the service with; set it (or {SECURITY_ENV['tls_ca']}), "
            f"or {SECURITY_ENV['allow_plaintext']}=1 / --allow-plaintext for a plaintext service"
        )
    try:
        context = ssl.create_default_context(cafile=ca)
    except OSError as exc:
        raise UsageError(f"{source}: cannot read the CA {ca}: {exc.strerror or exc}") from None
    return context, environ.get(SECURITY_ENV["tls_server_name"], "")


def check(host: str, port: int, context: ssl.SSLContext | None, server_name: str, timeout_s: float) -> str:
    """GET /healthz; returns the word SERVING or raises NotServingError saying what came back."""
    request = f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    answer = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            sock = raw if context is None else context.wrap_socket(raw, server_hostname=server_name or host)
            with sock:
                sock.sendall(request)
                while len(answer) < MAX_ANSWER_BYTES and (chunk := sock.recv(MAX_ANSWER_BYTES)):
                    answer += chunk
    except OSError as exc:  # refused, timed out (socket.timeout), TLS (ssl.SSLError)
        raise NotServingError(f"{host}:{port}: {exc}") from None
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    word = body.strip().decode("latin-1")
    if not answer:
        raise NotServingError(f"{host}:{port}: no answer to GET {HEALTH_PATH} (plain HTTP to an HTTPS port?)")
    if status_line.split(" ")[1:2] != ["200"] or word != "SERVING":
        raise NotServingError(f"{word or 'no SERVING'} ({host}:{port}{HEALTH_PATH}: {status_line})")
    return word


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.timeout <= 0:
            raise UsageError(f"--timeout: expected seconds above 0, got {args.timeout}")
        port = metrics_port(args, os.environ)
        context, server_name = tls_context(os.environ, args.allow_plaintext)
        print(check(args.host, port, context, server_name, args.timeout))
    except UsageError as exc:
        print(f"tidal-probe: {exc}", file=sys.stderr)
        return 2
    except NotServingError as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
