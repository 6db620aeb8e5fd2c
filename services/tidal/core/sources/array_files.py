"""Row readers over array files that never load a whole file: ``.npy`` and uncompressed
``.npz`` members are memory-mapped with numpy, ``.safetensors`` tensors are read by row ranges
through ``safetensors.safe_open``. A read touches only the rows asked for (plus the operating
system's read-ahead into its page cache)."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from tidal.core.errors import InvalidArgumentError

__all__ = ["RowReader", "open_rows"]

_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's own layout of a local file header


class RowReader(Protocol):
    shape: tuple[int, ...]
    integer: bool  # integer (or bool) elements

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` (sorted, distinct) in that order."""
        ...


class _Memmap:
    def __init__(self, array: np.ndarray, field: str) -> None:
        if array.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"{field}: holds {array.dtype} elements, not numbers")
        self.array = array
        self.shape = tuple(array.shape)
        self.integer = array.dtype.kind in "biu"

    def take(self, rows: np.ndarray) -> torch.Tensor:
        # Fancy indexing a memmap copies just these rows out of the mapping.
        return torch.from_numpy(np.ascontiguousarray(self.array[rows]))


class _Safetensors:
    def __init__(self, path: Path, key: str, field: str) -> None:
        try:
            handle = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise InvalidArgumentError(f"{field}: cannot read {str(path)!r} as safetensors: {exc}") from exc
        names = list(handle.keys())  # a method of the file, not a dict
        if key not in names:
            raise InvalidArgumentError(f"{field}: {str(path)!r} has no tensor {key!r} (it has {sorted(names)})")
        self._slice = handle.get_slice(key)
        self._handle = handle  # the slice reads through the open file
        self.shape = tuple(self._slice.get_shape())
        dtype = self._slice.get_dtype()
        self.integer = dtype.startswith(("I", "U")) or dtype == "BOOL"

    def take(self, rows: np.ndarray) -> torch.Tensor:
        if len(rows) == 0:
            return self._slice[0:0]
        # One read per run of consecutive rows.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = np.split(rows, breaks)
        return torch.cat([self._slice[int(run[0]) : int(run[-1]) + 1] for run in runs])


def _npz_member(path: Path, key: str, field: str) -> np.ndarray:
    """A memory map of member ``key`` of an uncompressed .npz (``np.savez``)."""
    with zipfile.ZipFile(path) as archive:
        names = [n.removesuffix(".npy") for n in archive.namelist()]
        if key not in names:
            raise InvalidArgumentError(f"{field}: {str(path)!r} has no array {key!r} (it has {sorted(names)})")
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise InvalidArgumentError(
            f"{field}: array {key!r} of {str(path)!r} is compressed and cannot be memory-mapped: "
            "save it with np.savez, not np.savez_compressed, or as .npy"
        )
    with path.open("rb") as f:
        f.seek(info.header_offset)
        header = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
        name_len, extra_len = header[-2], header[-1]
        f.seek(info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADERS:
            raise InvalidArgumentError(f"{field}: array {key!r} of {str(path)!r} has .npy format {version}")
        shape, fortran, dtype = _NPY_HEADERS[version](f)
        offset = f.tell()
    if dtype.hasobject or fortran:
        raise InvalidArgumentError(f"{field}: array {key!r} of {str(path)!r} must be a C-ordered numeric array")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")


def open_rows(path_value: object, key: str, field: str) -> RowReader:
    """A reader of the array at ``path_value`` (``key`` names it inside .npz and .safetensors);
    errors name ``field`` (e.g. ``dataset.args.x``)."""
    if not isinstance(path_value, (str, os.PathLike)) or not str(path_value):
        raise InvalidArgumentError(f"{field} must be a file path, got {path_value!r}")
    path = Path(path_value)
    if not path.is_file():
        raise InvalidArgumentError(f"{field}: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _Memmap(np.load(path, mmap_mode="r", allow_pickle=False), field)
        if suffix == ".npz":
            return _Memmap(_npz_member(path, key, field), field)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidArgumentError(f"{field}: cannot read {str(path)!r}: {exc}") from exc
    if suffix == ".safetensors":
        return _Safetensors(path, key, field)
    raise InvalidArgumentError(f"{field}: {str(path)!r} is not a .npy, .npz or .safetensors file")
