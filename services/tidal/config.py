"""Every environment variable tidal reads, in one table (units in the names).

A command-line flag always wins over its variable. The README's configuration section
lists the same table. Only the command-line code reads them (typer's options, and
cli_common.build_security / build_service_settings); what it builds, a frozen SecurityConfig
(transport/tls.py) or ServiceSettings (transport/settings.py), is passed down from there.
"""

from __future__ import annotations

ENV = {
    "coordinator": "TIDAL_COORDINATOR",  # host:port of the coordinator's gRPC API
    "host": "TIDAL_HOST",  # interface a service binds
    "port": "TIDAL_PORT",  # gRPC port a service binds (0 = any free port)
    "http_port": "TIDAL_HTTP_PORT",  # coordinator REST port
    "metrics_port": "TIDAL_METRICS_PORT",  # Prometheus /metrics port of any service
    "advertise_host": "TIDAL_ADVERTISE_HOST",  # host workers dial to reach a shard
    # shard, worker: the member's name in status, logs and errors (default: the host name)
    "name": "TIDAL_NAME",
    # shard: the shard index it always takes, so its checkpoint folder holds that index's
    # checkpoints (default: any index; two live shards cannot ask for the same one)
    "shard_index": "TIDAL_SHARD_INDEX",
    "slowdown": "TIDAL_SLOWDOWN",  # worker compute-time multiplier (straggler simulation)
    "device": "TIDAL_DEVICE",  # worker: auto, cpu, cuda or cuda:N, overriding the job spec's device
    "heartbeat_interval": "TIDAL_HEARTBEAT_INTERVAL_S",
    "heartbeat_timeout": "TIDAL_HEARTBEAT_TIMEOUT_S",
    "register_timeout": "TIDAL_REGISTER_TIMEOUT_S",  # how long a member retries reaching the coordinator
    # coordinator: folder of its SQLite state file, adopted after a restart (unset: memory only)
    "state_dir": "TIDAL_STATE_DIR",
    "torch_threads": "TIDAL_TORCH_THREADS",  # intra-op threads per service process
    "log_level": "TIDAL_LOG_LEVEL",
    "checkpoint_dir": "TIDAL_CHECKPOINT_DIR",  # shard: folder for its checkpoints (unset: none written)
    # shard: delete a job's checkpoints this long after its last write, i.e. after the job
    # ended (default 7 days; 0 keeps them forever)
    "checkpoint_retention": "TIDAL_CHECKPOINT_RETENTION_S",
    # shard, tests only: "kill_before_rename:N" or "kill_before_manifest:N" SIGKILLs the shard
    # inside its N-th checkpoint write (core/checkpoint.py)
    "checkpoint_fault": "TIDAL_CHECKPOINT_FAULT",
    # shard: the most bytes of embedding rows it holds for a job, over all the job's tables; a job
    # whose share may need more is refused (0, the default: no bound; docs/embeddings.md)
    "max_embedding_bytes": "TIDAL_SHARD_MAX_EMBEDDING_BYTES",
    # coordinator, tests only: "crash_control_loop" makes its control loop raise after a tick
    # (core/faults.py), to show the crash ends the process non-zero
    "control_fault": "TIDAL_CONTROL_FAULT",
    # coordinator, shard, worker: folder to write a Prometheus file_sd target file for /metrics
    # into (transport/scrape_targets.py)
    "scrape_target_dir": "TIDAL_SCRAPE_TARGET_DIR",
    "malloc_tuning": "TIDAL_MALLOC_TUNING",  # 0 leaves glibc malloc at its defaults (transport/process.py)
    # worker, shard: "auto" moves tensors through /dev/shm when both run on one host, "off" never
    # (transport/shm.py; the flag is --shared-memory)
    "shared_memory": "TIDAL_SHARED_MEMORY",
    # worker: "on" asks each shard for a bulk channel (a socket beside the Exchange stream for the
    # tensor payloads, transport/bulk.py); shard: "on" offers one, "off" never (--bulk-channel)
    "bulk_channel": "TIDAL_BULK_CHANNEL",
    "bulk_port": "TIDAL_BULK_PORT",  # shard: the bulk channel's port (0: any free one; --bulk-port)
    # One-job deployments (Kubernetes, smoke runs): see coordinator/one_job.py.
    "job_file": "TIDAL_JOB_FILE",  # coordinator: job spec to submit at start
    "exit_when_done": "TIDAL_EXIT_WHEN_DONE",  # coordinator: exit once that job ended and its members left
    "scale_down": "TIDAL_K8S_SCALE_DOWN",  # coordinator: KIND/NAME,... to scale to 0 before exiting
    "exit_after_job": "TIDAL_EXIT_AFTER_JOB",  # shard, worker: exit 0 when the first job ends
    # coordinator: where the pod's service account is mounted (default: Kubernetes' own path)
    "k8s_service_account_dir": "TIDAL_K8S_SERVICE_ACCOUNT_DIR",
    # services and client commands: 1 runs without TLS, loudly logged (local experiments only;
    # the flag is --allow-plaintext); the other security variables are in SECURITY_ENV below
    "allow_plaintext": "TIDAL_ALLOW_PLAINTEXT",
}

# Transport security (transport/tls.py, docs/security.md), read by every command that serves
# or calls gRPC (those with --allow-plaintext). Paths name PEM files or folders.
SECURITY_ENV = {
    "tls_dir": "TIDAL_TLS_DIR",  # folder made by `tidal certs`: ca.crt, NAME.crt, NAME.key
    "tls_name": "TIDAL_TLS_NAME",  # which NAME.crt/.key of that folder (default: the command's role; admin)
    "tls_ca": "TIDAL_TLS_CA",  # CA that signs servers and clients (bring your own PKI; wins over the folder)
    "tls_cert": "TIDAL_TLS_CERT",  # this process's certificate
    "tls_key": "TIDAL_TLS_KEY",  # its private key
    "tls_server_name": "TIDAL_TLS_SERVER_NAME",  # host name clients verify (default: the host dialled)
    "tokens_file": "TIDAL_TOKENS_FILE",  # servers: the token table (YAML/JSON, core/tokens.py)
    "token": "TIDAL_TOKEN",  # clients: bearer token to send
    "token_file": "TIDAL_TOKEN_FILE",  # clients: file holding it (suits Secrets)
    "allow_plaintext": ENV["allow_plaintext"],
    # packages job specs may load model code from, comma-separated; "" = built-in models only,
    # unset = any importable module (core/model_source.py)
    "model_modules": "TIDAL_MODEL_MODULES",
}
DEFAULT_COORDINATOR = "127.0.0.1:50051"
# A week: time to look at or copy a finished job's final checkpoint, and far longer than any
# job waits for a lost shard (checkpoint.restart_timeout_s is at most a day).
DEFAULT_CHECKPOINT_RETENTION_S = 7 * 86_400.0
DEFAULT_GRPC_PORT = 50051
DEFAULT_HTTP_PORT = 8080
DEFAULT_SHARD_PORT = 50052
DEFAULT_WORKER_PORT = 50053
# /metrics ports; distinct per role so a whole cluster can share one host.
DEFAULT_COORDINATOR_METRICS_PORT = 9464
DEFAULT_SHARD_METRICS_PORT = 9465
DEFAULT_WORKER_METRICS_PORT = 9466
