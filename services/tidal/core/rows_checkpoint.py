"""The embedding rows of a shard's checkpoints: a chain of one full file and the deltas after it.

A checkpoint of a job with tables writes one rows file, `v<version>.rows.safetensors` (every
row held) or `v<version>.rows-delta.safetensors` (the rows changed since the previous
checkpoint, core/embeddings/delta.py). Its manifest's `rows` entry names the whole chain it
needs, oldest first: the full file and every delta since, each with its version, kind, size,
sha256 and tensor shapes; and the rows' metadata (tables, applied steps, push ids) whole.
Loading checks every file of the chain as the tensor file is checked, then merges them; a
file missing, truncated or tampered is refused naming it.

Files are shared between checkpoints, so pruning deletes a rows file only once no kept
manifest's chain names it (`referenced_files`).

Manifests written before chains existed have `rows: {file, bytes, sha256, tensors, meta}`:
read as a chain of one full file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tidal.core.embeddings.delta import DELTA, FULL, merge
from tidal.core.embeddings.shard import RowsSnapshot
from tidal.core.errors import DataLossError

SUFFIXES = {FULL: ".rows.safetensors", DELTA: ".rows-delta.safetensors"}
ROWS_FILE = re.compile(r"^v\d{12}\.rows(-delta)?\.safetensors$")


def describe(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, object]]:
    return {n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for n, t in tensors.items()}


def write_rows(
    folder: Path,
    stem: str,
    version: int,
    job_id: str,
    rows: RowsSnapshot,
    previous: list[dict[str, Any]] | None,
    write: Callable[[Path, bytes], None],
) -> dict[str, Any]:
    """Writes this checkpoint's rows file with `write` (atomically, before the manifest that
    commits it); returns the manifest's `rows` entry. `previous`: the chain of the previous
    checkpoint this process wrote in `folder`, which a delta extends."""
    if rows.kind == DELTA and not previous:
        # The shard takes a full snapshot after any write that did not complete: a bug if hit.
        raise RuntimeError(f"{folder}: a delta of rows without a previous checkpoint written by this process")
    path = folder / f"{stem}{SUFFIXES[rows.kind]}"
    payload = save_tensors(rows.tensors, metadata={"format": "pt", "job_id": job_id})
    write(path, payload)
    link = {
        "file": path.name,
        "kind": rows.kind,
        "version": version,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "tensors": describe(rows.tensors),
    }
    chain = [*(previous or []), link] if rows.kind == DELTA else [link]
    return {"chain": chain, "meta": rows.meta}


def chain_of(entry: object, where: str) -> list[dict[str, Any]]:
    """The files a manifest's `rows` entry names, oldest first (checked for shape, not content)."""
    if not isinstance(entry, dict):
        raise DataLossError(f"{where}: rows entry is not an object")
    chain = entry.get("chain", [{**entry, "kind": FULL}] if "file" in entry else None)
    if not isinstance(chain, list) or not chain or not all(isinstance(link, dict) for link in chain):
        raise DataLossError(f"{where}: rows entry names no chain of files")
    kinds = [link.get("kind") for link in chain]
    if kinds != [FULL] + [DELTA] * (len(chain) - 1):
        raise DataLossError(f"{where}: rows chain {kinds}, expected one full file and then deltas")
    return chain


def load_rows(manifest_path: Path, entry: object, where: str) -> RowsSnapshot:
    """The rows of one checkpoint: every file of its chain checked, then merged into one full
    snapshot; DataLossError naming the file that is missing or does not match."""
    chain = chain_of(entry, where)
    assert isinstance(entry, dict)
    meta = entry.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("tables"), dict):
        raise DataLossError(f"{where}: rows entry has no metadata of its tables")
    tables = list(meta["tables"])
    tensors: dict[str, torch.Tensor] = {}
    for position, link in enumerate(chain, start=1):
        name = str(link.get("file", ""))
        at = f"{where}: rows file {name} ({link['kind']}, {position} of {len(chain)} in the chain)"
        path = manifest_path.with_name(name)
        if path.parent != manifest_path.parent or not ROWS_FILE.match(path.name):
            raise DataLossError(f"{at}: not a rows file beside the manifest")
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise DataLossError(f"{at}: unreadable ({exc})") from None
        if len(payload) != link.get("bytes") or hashlib.sha256(payload).hexdigest() != link.get("sha256"):
            raise DataLossError(f"{at}: does not match the manifest's size and sha256")
        try:
            loaded = load_tensors(payload)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise DataLossError(f"{at}: not safetensors ({exc})") from None
        if describe(loaded) != link.get("tensors"):
            raise DataLossError(f"{at}: tensors {describe(loaded)} do not match the manifest's")
        tensors = loaded if position == 1 else merge(tensors, loaded, tables, at)
    for table, info in meta["tables"].items():
        held = tensors.get(f"{table}/ids")
        expected = info.get("rows") if isinstance(info, dict) else None
        if held is None or len(held) != expected:
            count = None if held is None else len(held)
            raise DataLossError(
                f"{where}: table {table!r} has {count} rows after its chain, the manifest says {expected}"
            )
    return RowsSnapshot(tensors, dict(meta))


def referenced_files(manifests: Iterable[Path]) -> set[str] | None:
    """The rows files the chains of `manifests` name; None if one cannot be read (then no rows
    file may be deleted: it might be needed)."""
    names: set[str] = set()
    for manifest in manifests:
        try:
            entry = json.loads(manifest.read_bytes()).get("rows")
            if entry is not None:
                names.update(str(link.get("file")) for link in chain_of(entry, str(manifest)))
        except (OSError, ValueError, AttributeError, DataLossError):
            return None
    return names


def prune_rows(folder: Path, kept: Iterable[Path]) -> None:
    """Deletes the rows files in `folder` that no manifest in `kept` needs."""
    files = [path for path in folder.iterdir() if ROWS_FILE.match(path.name)]
    needed = referenced_files(kept) if files else None  # a job without tables reads no manifest
    if needed is None:
        return
    for path in files:
        if path.name not in needed:
            path.unlink(missing_ok=True)
