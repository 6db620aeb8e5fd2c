"""What a shard or worker process was configured with: built once at start from its flags and
environment (cli.py) and passed down to everything that serves or dials, never read again from
the environment or a module global."""

from __future__ import annotations

from dataclasses import dataclass

from tidal.core.errors import InvalidArgumentError
from tidal.core.model_source import ModelModules
from tidal.core.spec import DEVICE_PATTERN
from tidal.transport.tls import SecurityConfig


@dataclass(frozen=True)
class ServiceSettings:
    # TLS, client certificates and tokens of every server and channel of the process.
    security: SecurityConfig
    # Offer (worker) or accept (shard) shared memory with a peer on the same host (transport/shm.py).
    shared_memory: bool
    # The packages a job's model factory may come from (TIDAL_MODEL_MODULES, core/model_source.py);
    # None: any. Shards and workers import the factory when they build the job's model.
    model_modules: ModelModules = None
    # Worker: the device to compute on (auto, cpu, cuda, cuda:N; the --device flag), overriding
    # the job spec's `device`; None: the spec decides.
    device: str | None = None
    # Ask for (worker) or offer (shard) a bulk channel for the tensor payloads (transport/bulk.py).
    bulk_channel: bool = False
    # Shard: the port its bulk channel listens on, beside the gRPC port (0: any free one).
    bulk_port: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.security, SecurityConfig):
            raise InvalidArgumentError(f"security: expected a SecurityConfig, got {type(self.security).__name__}")
        if not isinstance(self.shared_memory, bool):
            raise InvalidArgumentError(f"shared_memory: expected a bool, got {self.shared_memory!r}")
        modules = self.model_modules
        if modules is not None and not (isinstance(modules, tuple) and all(isinstance(m, str) for m in modules)):
            raise InvalidArgumentError(f"model_modules: expected None or a tuple of str, got {modules!r}")
        if not isinstance(self.bulk_channel, bool):
            raise InvalidArgumentError(f"bulk_channel: expected a bool, got {self.bulk_channel!r}")
        if not isinstance(self.bulk_port, int) or not 0 <= self.bulk_port < 65536:
            raise InvalidArgumentError(f"bulk_port: expected a port number (0: any free one), got {self.bulk_port!r}")
        if self.device is not None and not (isinstance(self.device, str) and DEVICE_PATTERN.match(self.device)):
            raise InvalidArgumentError(f"device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")
