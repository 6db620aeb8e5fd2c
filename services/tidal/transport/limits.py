"""Sizes and timings of the transport, in one place."""

from __future__ import annotations

# Payload bytes per TensorChunk and per data-plane message.
CHUNK_BYTES = 1 << 20
# Largest message any tidal server or channel accepts; a chunk plus headers fits easily.
MAX_MESSAGE_BYTES = 16 << 20
# HTTP/2 keepalive: ping an idle connection so dead peers are noticed.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
# A channel whose peer went away retries the connection at most this far apart (gRPC's own
# default grows to 120 s): a restarted coordinator or shard is found again within a second.
MAX_RECONNECT_BACKOFF_MS = 1_000
# How long a server lets in-flight calls finish on shutdown, in seconds.
SHUTDOWN_GRACE_S = 5.0
