"""tidal: distributed training of PyTorch models with a parameter server."""

import os

__version__ = "0.1.0"

# tidal forks only to exec a service (tidal.launcher), never to use gRPC in the child, so gRPC's
# fork handlers buy nothing; with them on, every launch while a channel is busy prints
# "Other threads are currently calling into gRPC, skipping fork() handlers". Set before gRPC
# loads; an explicit setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
