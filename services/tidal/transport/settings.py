"""What a shard or worker process was configured with: built once at start from its flags and
environment (cli.py) and passed down to everything that serves or dials, never read again from
the environment or a module global."""

from __future__ import annotations

from dataclasses import dataclass

from tidal.core.errors import InvalidArgumentError
from tidal.transport.tls import SecurityConfig


@dataclass(frozen=True)
class ServiceSettings:
    # TLS, client certificates and tokens of every server and channel of the process.
    security: SecurityConfig
    # Offer (worker) or accept (shard) shared memory with a peer on the same host (transport/shm.py).
    shared_memory: bool

    def __post_init__(self) -> None:
        if not isinstance(self.security, SecurityConfig):
            raise InvalidArgumentError(f"security: expected a SecurityConfig, got {type(self.security).__name__}")
        if not isinstance(self.shared_memory, bool):
            raise InvalidArgumentError(f"shared_memory: expected a bool, got {self.shared_memory!r}")
