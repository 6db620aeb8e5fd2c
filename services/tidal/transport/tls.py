"""Transport security, built once per process from the environment (or CLI flags).

`SecurityConfig` says whether gRPC and HTTP use TLS, whether clients must present a
certificate of our CA (mutual TLS), which bearer tokens a server accepts and which token
a client sends. The CLI builds it at start (cli_common.build_security) and passes it down:
`create_server`, `create_channel`, `serve_asgi` and everything built on them take it as a
parameter, so nothing reads a process-wide setting behind the caller's back.

Secure by default: the CLI (`require_secure`) refuses to start a service without a
certificate and a way to authenticate callers (mutual TLS or a token table), and a client
command without a CA to verify the server, in one line naming what to set. Plaintext is for
local experiments only and must be asked for (TIDAL_ALLOW_PLAINTEXT=1 or --allow-plaintext);
it is then logged as a loud warning. Once any TLS variable is set, missing files are an
error, never a silent fall back to plaintext.

Variables (named in tidal.config.SECURITY_ENV):
  TIDAL_TLS_DIR + TIDAL_TLS_NAME  a folder made by `tidal certs`: ca.crt, NAME.crt, NAME.key
                                  (NAME defaults to the process's role)
  TIDAL_TLS_CA / _CERT / _KEY     explicit PEM files (bring your own PKI); they win over the folder
  TIDAL_TLS_SERVER_NAME           host name clients verify in the server's certificate
                                  (default: the host dialled)
  TIDAL_TOKENS_FILE               server: JSON/YAML token table (core/tokens.py)
  TIDAL_TOKEN / TIDAL_TOKEN_FILE  client: the bearer token to send (the file form suits Secrets)
  TIDAL_ALLOW_PLAINTEXT           1: run without TLS (local experiments only; logged loudly)
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from tidal.config import SECURITY_ENV
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.core.tokens import TokenTable

log = logging.getLogger(__name__)

ENV_TLS_DIR = SECURITY_ENV["tls_dir"]
ENV_TLS_NAME = SECURITY_ENV["tls_name"]
ENV_TLS_CA = SECURITY_ENV["tls_ca"]
ENV_TLS_CERT = SECURITY_ENV["tls_cert"]
ENV_TLS_KEY = SECURITY_ENV["tls_key"]
ENV_TLS_SERVER_NAME = SECURITY_ENV["tls_server_name"]
ENV_TOKENS_FILE = SECURITY_ENV["tokens_file"]
ENV_TOKEN = SECURITY_ENV["token"]
ENV_TOKEN_FILE = SECURITY_ENV["token_file"]
ENV_ALLOW_PLAINTEXT = SECURITY_ENV["allow_plaintext"]
# Setting any of these asks for TLS: then a missing certificate is an error, not plaintext.
TLS_FILE_VARS = (ENV_TLS_DIR, ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

PLAINTEXT_WARNING = (
    "SECURITY IS OFF for %s (%s): anyone who can reach this port can submit jobs, join as a worker and read "
    "or change parameters. For anything but a local experiment set TIDAL_TLS_DIR (see `tidal certs`) or "
    "TIDAL_TLS_CA/TIDAL_TLS_CERT/TIDAL_TLS_KEY; docs/security.md"
)
HOW_TO_SECURE = (
    "set TIDAL_TLS_DIR to a folder made by `tidal certs` (or TIDAL_TLS_CA, TIDAL_TLS_CERT and TIDAL_TLS_KEY); "
    "for a local experiment only, set TIDAL_ALLOW_PLAINTEXT=1 or pass --allow-plaintext (docs/security.md)"
)


class InsecureConfigError(FailedPreconditionError):
    """A process would run without transport security and nobody asked for that."""


def parse_flag(environ: Mapping[str, str], var: str) -> bool:
    value = environ.get(var, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgumentError(f"{var}: expected 1/true/yes/on or 0/false/no/off, got {value!r}")


@dataclass(frozen=True)
class SecurityConfig:
    """Frozen and validated at construction; `from_env` builds it from variables."""

    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    server_name: str = ""
    tokens: TokenTable | None = None
    token: str = ""
    # TIDAL_ALLOW_PLAINTEXT: the operator asked for no TLS (honoured only when no TLS
    # variable is set: see `requested`).
    allow_plaintext: bool = False
    # Some TLS variable (folder or file) was set: TLS was asked for.
    requested: bool = False

    def __post_init__(self) -> None:
        if (self.cert_path is None) != (self.key_path is None):
            raise InvalidArgumentError(f"{ENV_TLS_CERT}/{ENV_TLS_KEY}: give both the certificate and its key")
        for path in (self.ca_path, self.cert_path, self.key_path):
            if path is not None and not path.is_file():
                raise InvalidArgumentError(f"TLS: {path} is not a readable file")

    @property
    def tls(self) -> bool:
        """Servers speak TLS (they have a certificate and key)."""
        return self.cert_path is not None

    @property
    def mutual(self) -> bool:
        """Servers require a client certificate signed by `ca_path`."""
        return self.tls and self.ca_path is not None

    @property
    def auth_required(self) -> bool:
        """Servers authenticate every call (by token or client certificate)."""
        return self.tokens is not None or self.mutual

    @property
    def http_scheme(self) -> str:
        return "https" if self.tls else "http"

    def _read(self, path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert_path is None or self.key_path is None:
            raise InvalidArgumentError(f"{ENV_TLS_CERT}: a TLS server needs a certificate and key")
        pair = [(self.key_path.read_bytes(), self.cert_path.read_bytes())]
        ca = self._read(self.ca_path)
        return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=self.mutual)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS to a server of our CA; with our own certificate for mutual TLS."""
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca_path),
            private_key=self._read(self.key_path),
            certificate_chain=self._read(self.cert_path),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """How an HTTPS client (a /metrics scrape) trusts our servers: our CA, and our own
        certificate when we have one; None without TLS (plain HTTP)."""
        if not self.tls and self.ca_path is None:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_path) if self.ca_path else None)
        if self.cert_path is not None and self.key_path is not None:
            context.load_cert_chain(str(self.cert_path), str(self.key_path))
        return context

    @classmethod
    def from_env(cls, environ: Mapping[str, str], default_name: str = "admin") -> SecurityConfig:
        folder = environ.get(ENV_TLS_DIR, "")
        name = environ.get(ENV_TLS_NAME, "") or default_name

        def pick(var: str, filename: str) -> Path | None:
            if value := environ.get(var, ""):
                return Path(value)
            if folder and (candidate := Path(folder) / filename).is_file():
                return candidate
            return None

        if folder and not Path(folder).is_dir():
            raise InvalidArgumentError(f"{ENV_TLS_DIR}: {folder} is not a folder")
        cert, key = pick(ENV_TLS_CERT, f"{name}.crt"), pick(ENV_TLS_KEY, f"{name}.key")
        tokens = None
        if tokens_file := environ.get(ENV_TOKENS_FILE, ""):
            try:
                text = Path(tokens_file).read_text()
            except OSError as exc:
                raise InvalidArgumentError(f"{ENV_TOKENS_FILE}: cannot read {tokens_file}: {exc}") from None
            tokens = TokenTable.parse(text, tokens_file)
        token = environ.get(ENV_TOKEN, "")
        if not token and (token_file := environ.get(ENV_TOKEN_FILE, "")):
            try:
                token = Path(token_file).read_text().strip()
            except OSError as exc:
                raise InvalidArgumentError(f"{ENV_TOKEN_FILE}: cannot read {token_file}: {exc}") from None
        return cls(
            ca_path=pick(ENV_TLS_CA, "ca.crt"),
            cert_path=cert,
            key_path=key,
            server_name=environ.get(ENV_TLS_SERVER_NAME, ""),
            tokens=tokens,
            token=token,
            allow_plaintext=parse_flag(environ, ENV_ALLOW_PLAINTEXT),
            requested=any(environ.get(var, "") for var in TLS_FILE_VARS),
        )


def insecure_reason(config: SecurityConfig, server: bool) -> str:
    """Why a server (or client) with `config` would run without transport security; "" if it would not.
    A server needs a certificate and a way to authenticate callers (mutual TLS or tokens);
    a client needs a CA to verify the server with."""
    if server:
        if not config.tls:
            return "no TLS certificate and key"
        if not config.auth_required:
            return "TLS without client authentication (no CA for mutual TLS, no TIDAL_TOKENS_FILE)"
        return ""
    if config.ca_path is None:
        return "no TLS CA to verify the server with"
    return ""


def require_secure(config: SecurityConfig, what: str, server: bool) -> None:
    """Refuses (InsecureConfigError, one line naming what to set) a process that would run
    without transport security unless plaintext was asked for explicitly."""
    reason = insecure_reason(config, server)
    if not reason:
        return
    if config.requested:
        raise InsecureConfigError(
            f"{what}: {reason}, although TLS was asked for ({'/'.join(TLS_FILE_VARS)} is set): a TIDAL_TLS_DIR "
            f"folder needs ca.crt and <name>.crt/.key, the name being TIDAL_TLS_NAME or the process's role"
        )
    if not config.allow_plaintext:
        raise InsecureConfigError(f"{what}: {reason}; {HOW_TO_SECURE}")
    # Allowed. Servers say it loudly as they bind (create_server: warn_if_plaintext); a plaintext
    # client can only reach such a server, and keeps its stderr for its one-line errors.


def warn_if_plaintext(config: SecurityConfig, what: str) -> None:
    """The servers' loud line, logged whenever one starts without TLS or authentication."""
    if reason := insecure_reason(config, server=True):
        log.warning(PLAINTEXT_WARNING, what, reason)
