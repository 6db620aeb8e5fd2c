"""Sizes and timings of the transport, in one place."""

from __future__ import annotations

# Payload bytes per TensorChunk and per data-plane message.
CHUNK_BYTES = 1 << 20
# Payload bytes per message on a piecewise bulk channel (transport/bulk.py), where each message's
# payload follows it as a block of its own, read and written in one thread hop each. Measured
# on emulated links (bench/NOTES.md item 16): 1 MiB pieces cost a CPU-bound 10 Gbit/s step
# about 40% more in hops; 4 MiB ones lengthened a 1 Gbit/s step's tail (1.18x gloo, not 1.14x).
PIECE_BYTES = 2 << 20
# Largest message any tidal server or channel accepts; a chunk plus headers fits easily.
MAX_MESSAGE_BYTES = 16 << 20
# Most TensorChunks one data-plane message may hold. Decoding runs inside gRPC's deserializer,
# where the event loop cannot be given back, so this bounds how long one message can hold it
# (about 5 ms for 256 one-element chunks on this project's 2-CPU machine, under load); senders
# spread a slice with more tensors over several messages.
MAX_CHUNKS_PER_MESSAGE = 256
# HTTP/2 keepalive: ping an idle connection so dead peers are noticed.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
# A channel whose peer went away retries the connection at most this far apart (gRPC's own
# default grows to 120 s): a restarted coordinator or shard is found again within a second.
MAX_RECONNECT_BACKOFF_MS = 1_000
# How long one connection attempt may take (TCP, TLS handshake, HTTP/2 SETTINGS) before gRPC
# gives up on it. C-core takes it from `grpc.min_reconnect_backoff_ms`; at 100 ms, TLS
# handshakes on a loaded host timed out ("connection attempt timed out before receiving
# SETTINGS frame", grpc/grpc#33423) and failed a job in the compose smoke run. A refused
# connection (peer restarting) still fails at once and is retried within the backoff above.
MIN_CONNECT_TIMEOUT_MS = 10_000
# How long a server lets in-flight calls finish on shutdown, in seconds.
SHUTDOWN_GRACE_S = 5.0
# Sparse parameters (PullRows, PushRows, ReadRows): most ids in one request, and most bytes of
# rows (ids x dim x 4) in one request or reply, well inside MAX_MESSAGE_BYTES. A worker's batch
# beyond either is split into several requests (worker/rows_client.py).
MAX_ROW_IDS = 65_536
MAX_ROW_PAYLOAD_BYTES = 12 << 20
