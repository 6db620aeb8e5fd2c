"""tidal: distributed training of PyTorch models with a parameter server."""

__version__ = "0.1.0"
