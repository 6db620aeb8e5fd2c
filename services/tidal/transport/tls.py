"""Transport security, configured once per process from the environment (or CLI flags).

`SecurityConfig` says whether gRPC and HTTP use TLS, whether clients must present a
certificate of our CA (mutual TLS), which bearer tokens a server accepts and which token
a client sends. `create_server`, `create_channel` and `serve_asgi` read `current()`, so
every server and channel of a process is secured the same way without threading the
config through every call. Plaintext stays possible (it is today's default, see
`SECURE_BY_DEFAULT` in tidal.security.defaults); a server without TLS logs one loud
warning.

Variables (also in tidal.config.ENV):
  TIDAL_TLS_DIR + TIDAL_TLS_NAME  a folder made by `tidal certs`: ca.crt, NAME.crt, NAME.key
                                  (NAME defaults to the process's role)
  TIDAL_TLS_CA / _CERT / _KEY     explicit PEM files (bring your own PKI); they win over the folder
  TIDAL_TLS_SERVER_NAME           host name clients verify in the server's certificate
                                  (default: the host dialled)
  TIDAL_TOKENS_FILE               server: JSON/YAML token table (core/tokens.py)
  TIDAL_TOKEN / TIDAL_TOKEN_FILE  client: the bearer token to send (the file form suits Secrets)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from tidal.core.errors import InvalidArgumentError
from tidal.core.tokens import TokenTable

log = logging.getLogger(__name__)

ENV_TLS_DIR = "TIDAL_TLS_DIR"
ENV_TLS_NAME = "TIDAL_TLS_NAME"
ENV_TLS_CA = "TIDAL_TLS_CA"
ENV_TLS_CERT = "TIDAL_TLS_CERT"
ENV_TLS_KEY = "TIDAL_TLS_KEY"
ENV_TLS_SERVER_NAME = "TIDAL_TLS_SERVER_NAME"
ENV_TOKENS_FILE = "TIDAL_TOKENS_FILE"
ENV_TOKEN = "TIDAL_TOKEN"
ENV_TOKEN_FILE = "TIDAL_TOKEN_FILE"
ENV_ALLOW_PLAINTEXT = "TIDAL_ALLOW_PLAINTEXT"

PLAINTEXT_WARNING = (
    "TLS is OFF: %s traffic is unauthenticated plaintext; anyone who can reach this port can submit jobs, "
    "join as a worker and read or change parameters. Set TIDAL_TLS_DIR (see `tidal certs`) or "
    "TIDAL_TLS_CA/TIDAL_TLS_CERT/TIDAL_TLS_KEY and TIDAL_TOKENS_FILE; docs/security.md"
)


@dataclass(frozen=True)
class SecurityConfig:
    """Frozen and validated at construction; `from_env` builds it from variables."""

    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    server_name: str = ""
    tokens: TokenTable | None = None
    token: str = ""

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
        )


_current: SecurityConfig | None = None


def install(config: SecurityConfig) -> None:
    """Sets this process's security (the CLI calls it once at start, before any server)."""
    global _current  # noqa: PLW0603  # configured once per process, read by every factory
    _current = config


def current() -> SecurityConfig:
    """This process's security; built from the environment on first use if nobody installed one."""
    global _current  # noqa: PLW0603
    if _current is None:
        _current = SecurityConfig.from_env(os.environ)
    return _current


def warn_if_plaintext(config: SecurityConfig, what: str) -> None:
    if not config.tls:
        log.warning(PLAINTEXT_WARNING, what)
