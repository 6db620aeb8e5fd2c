"""The bytes of the row RPCs (PullRows, PushRows, ReadRows): ids as int64 and rows as float32,
both little-endian, checked for size before anything is decoded. Shared by the shard and the
worker's client."""

from __future__ import annotations

import numpy as np
import torch

from tidal.core.errors import InvalidArgumentError
from tidal.transport.limits import MAX_ROW_IDS, MAX_ROW_PAYLOAD_BYTES

_IDS = np.dtype("<i8")
_ROWS = np.dtype("<f4")


def encode_ids(ids: torch.Tensor) -> bytes:
    return ids.detach().cpu().to(torch.int64).numpy().astype(_IDS, copy=False).tobytes()


def encode_rows(rows: torch.Tensor) -> bytes:
    return rows.detach().cpu().to(torch.float32).contiguous().numpy().astype(_ROWS, copy=False).tobytes()


def decode_ids(data: bytes, field: str = "ids", allow_empty: bool = False) -> torch.Tensor:
    """1-D int64 ids from `data`: a whole number of 8-byte ids, at most MAX_ROW_IDS, and at least
    one unless `allow_empty` (a sync table's push with nothing for this shard)."""
    if len(data) % _IDS.itemsize:
        raise InvalidArgumentError(f"{field}: {len(data)} bytes is not a whole number of int64 ids (8 bytes each)")
    count = len(data) // _IDS.itemsize
    if count == 0 and not allow_empty:
        raise InvalidArgumentError(f"{field}: no ids")
    if count > MAX_ROW_IDS:
        raise InvalidArgumentError(f"{field}: {count} ids, more than the limit of {MAX_ROW_IDS} per request")
    return torch.from_numpy(np.frombuffer(data, dtype=_IDS).astype(np.int64))


def check_payload(count: int, dim: int, field: str = "ids") -> None:
    """`count` rows of `dim` floats fit one request or reply."""
    if count * dim * _ROWS.itemsize > MAX_ROW_PAYLOAD_BYTES:
        raise InvalidArgumentError(
            f"{field}: {count} rows of dim {dim} are {count * dim * _ROWS.itemsize} bytes, more than the limit of "
            f"{MAX_ROW_PAYLOAD_BYTES} per request (split the ids)"
        )


def decode_rows(data: bytes, count: int, dim: int, field: str) -> torch.Tensor:
    """float32 (count, dim) from `data`, which must hold exactly that many bytes."""
    expected = count * dim * _ROWS.itemsize
    if len(data) != expected:
        raise InvalidArgumentError(
            f"{field}: {len(data)} bytes, expected {count} ids x dim {dim} x 4 = {expected} (float32 little-endian)"
        )
    return torch.from_numpy(np.frombuffer(data, dtype=_ROWS).astype(np.float32).reshape(count, dim))


def rows_per_request(dim: int) -> int:
    """Most ids one request may carry for rows of `dim` floats."""
    return max(1, min(MAX_ROW_IDS, MAX_ROW_PAYLOAD_BYTES // (dim * _ROWS.itemsize)))
