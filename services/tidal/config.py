"""Every environment variable tidal reads, in one table (units in the names).

A command-line flag always wins over its variable. The README's configuration section
lists the same table.
"""

from __future__ import annotations

ENV = {
    "coordinator": "TIDAL_COORDINATOR",  # host:port of the coordinator's gRPC API
    "host": "TIDAL_HOST",  # interface a service binds
    "port": "TIDAL_PORT",  # gRPC port a service binds (0 = any free port)
    "http_port": "TIDAL_HTTP_PORT",  # coordinator REST port
    "metrics_port": "TIDAL_METRICS_PORT",  # Prometheus /metrics port of any service
    "advertise_host": "TIDAL_ADVERTISE_HOST",  # host workers dial to reach a shard
    "slowdown": "TIDAL_SLOWDOWN",  # worker compute-time multiplier (straggler simulation)
    "heartbeat_interval": "TIDAL_HEARTBEAT_INTERVAL_S",
    "heartbeat_timeout": "TIDAL_HEARTBEAT_TIMEOUT_S",
    "register_timeout": "TIDAL_REGISTER_TIMEOUT_S",  # how long a member retries reaching the coordinator
    # coordinator: folder of its SQLite state file, adopted after a restart (unset: memory only)
    "state_dir": "TIDAL_STATE_DIR",
    "torch_threads": "TIDAL_TORCH_THREADS",  # intra-op threads per service process
    "log_level": "TIDAL_LOG_LEVEL",
    "checkpoint_dir": "TIDAL_CHECKPOINT_DIR",  # shard: folder for its checkpoints (unset: none written)
    # shard, tests only: "kill_before_rename:N" or "kill_before_manifest:N" SIGKILLs the shard
    # inside its N-th checkpoint write (core/checkpoint.py)
    "checkpoint_fault": "TIDAL_CHECKPOINT_FAULT",
    "malloc_tuning": "TIDAL_MALLOC_TUNING",  # 0 leaves glibc malloc at its defaults (transport/process.py)
    # One-job deployments (Kubernetes, smoke runs): see coordinator/one_job.py.
    "job_file": "TIDAL_JOB_FILE",  # coordinator: job spec to submit at start
    "exit_when_done": "TIDAL_EXIT_WHEN_DONE",  # coordinator: exit once that job ended and its members left
    "scale_down": "TIDAL_K8S_SCALE_DOWN",  # coordinator: KIND/NAME,... to scale to 0 before exiting
    "exit_after_job": "TIDAL_EXIT_AFTER_JOB",  # shard, worker: exit 0 when the first job ends
    # coordinator: where the pod's service account is mounted (default: Kubernetes' own path)
    "k8s_service_account_dir": "TIDAL_K8S_SERVICE_ACCOUNT_DIR",
}

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_GRPC_PORT = 50051
DEFAULT_HTTP_PORT = 8080
DEFAULT_SHARD_PORT = 50052
DEFAULT_WORKER_PORT = 50053
# /metrics ports; distinct per role so a whole cluster can share one host.
DEFAULT_COORDINATOR_METRICS_PORT = 9464
DEFAULT_SHARD_METRICS_PORT = 9465
DEFAULT_WORKER_METRICS_PORT = 9466
