"""Shard checkpoints: safetensors tensors plus a JSON manifest, written atomically.

One checkpoint is two files in `<root>/<job_id>/shard-<index>/`:

- `v<version>.safetensors`: the parameter slice (`params`) and the optimizer's tensor state
  (`optimizer.<key>`, e.g. `optimizer.exp_avg`), flat, under stable names;
- only for a job with embedding tables, `v<version>.rows.safetensors` (every row the shard
  holds, per table its ids, values, per-row steps, last use and optimizer state,
  `<table>/<key>`; core/embeddings/shard.py) or `v<version>.rows-delta.safetensors` (only the
  rows changed since the previous checkpoint); the manifest names the chain of rows files it
  needs (core/rows_checkpoint.py);
- `v<version>.json`: the manifest (format version, job, shard index and range, version,
  membership epoch, optimizer hyperparameters and scalar state, counters, the last pushes
  seen, the size and sha256 of the tensor file, creation time).

The manifest is the commit record: it is written last, so a checkpoint without one never
existed. Each file goes to a temporary name in the same folder, is fsynced and renamed into
place, then the folder is fsynced. Loading checks everything before a tensor touches the
shard; a truncated or tampered file, a manifest that does not match, or a payload that is
not safetensors (a pickle, say) raises `DataLossError`, and `load_latest` falls back to the
previous valid checkpoint. Nothing is ever unpickled: safetensors and json only.

Only the newest `keep_last` checkpoints of a job's shard are kept (with every rows file their
chains name, however old), and `sweep` deletes the
checkpoints of jobs that ended (no write for a retention period) so volumes do not fill up.

The snapshot a checkpoint holds, and its restore into a shard, are in core/shard_snapshot.py;
what a restore lost is counted in core/recovery.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tidal.core.errors import DataLossError, InvalidArgumentError
from tidal.core.faults import KILL_BEFORE_MANIFEST, KILL_BEFORE_RENAME, NO_CHECKPOINT_FAULT, CheckpointFault, kill_now
from tidal.core.rows_checkpoint import chain_of, load_rows, prune_rows, write_rows
from tidal.core.shard_snapshot import PARAMS, ShardSnapshot

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Checkpoint files are named by version, zero-padded so names sort like versions.
_NAME = re.compile(r"^v(\d{12})\.json$")
# Job ids become folder names: refuse anything that could leave the checkpoint root.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class CheckpointRef:
    """What a shard found on disk at start-up, reported when it registers."""

    job_id: str
    shard_index: int
    version: int


@dataclass(frozen=True)
class CheckpointSchedule:
    """When a checkpoint is due: every `every_versions` versions or `every_s` seconds since the
    last one (0 turns either off), and only if the version moved."""

    every_versions: int
    every_s: float

    def due(self, version: int, last_version: int, now: float, last_at: float) -> bool:
        if version <= last_version:
            return False
        by_count = self.every_versions > 0 and version - last_version >= self.every_versions
        by_time = self.every_s > 0 and now - last_at >= self.every_s
        return by_count or by_time


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes, die_before_rename: str = "") -> None:
    """Temporary file in the same folder, write, fsync, rename (then the caller fsyncs the folder).
    `die_before_rename` (fault injection) says why the process dies just before the rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if die_before_rename:
        kill_now(f"checkpoint write {die_before_rename} ({path.name})")
    tmp.replace(path)


class CheckpointStore:
    """The checkpoints under one root folder (one shard process owns it).

    `fault` injects a crash for tests (core/faults.py): `("kill_before_rename", n)` SIGKILLs
    the process at the n-th write after the tensor file is written and fsynced under its
    temporary name, `("kill_before_manifest", n)` after the tensor file is in place but before
    its manifest.
    """

    def __init__(self, root: Path, keep_last: int = 3, fault: CheckpointFault = NO_CHECKPOINT_FAULT) -> None:
        if keep_last < 1:
            raise InvalidArgumentError(f"keep_last: must be >= 1, got {keep_last}")
        self.root = root
        self.keep_last = keep_last
        self._fault = CheckpointFault(*fault)
        self._writes = 0
        # Per shard folder: the rows chain of the last checkpoint written, which a delta extends.
        self._rows_chains: dict[Path, list[dict[str, object]]] = {}

    def folder(self, job_id: str, shard_index: int) -> Path:
        if not _SAFE_ID.match(job_id):
            raise InvalidArgumentError(f"job_id: {job_id!r} cannot name a checkpoint folder")
        return self.root / job_id / f"shard-{shard_index}"

    # --- writing -------------------------------------------------------------------------
    def write(self, snapshot: ShardSnapshot, keep_last: int | None = None) -> Path:
        """Writes one checkpoint atomically, then keeps the newest `keep_last` (the store's
        default if None); returns the manifest's path. Safe to run in a thread: it only reads
        the snapshot."""
        folder = self.folder(snapshot.job_id, snapshot.shard_index)
        folder.mkdir(parents=True, exist_ok=True)
        self._writes += 1
        stem = f"v{snapshot.version:012d}"
        payload = save_tensors(snapshot.tensors, metadata={"format": "pt", "job_id": snapshot.job_id})
        tensors_path = folder / f"{stem}.safetensors"
        kill = self._fault.fires(KILL_BEFORE_RENAME, self._writes)
        _write_atomically(tensors_path, payload, "before renaming its tensors" if kill else "")
        manifest = {
            "format_version": FORMAT_VERSION,
            "job_id": snapshot.job_id,
            "shard_index": snapshot.shard_index,
            "shard_range": list(snapshot.shard_range),
            "version": snapshot.version,
            "membership_epoch": snapshot.membership_epoch,
            "members": snapshot.members,
            "mode": snapshot.mode,
            "optimizer": snapshot.optimizer,
            "counters": snapshot.counters,
            "recent_pushes": snapshot.recent_pushes,
            "tensors": {n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                        for n, t in snapshot.tensors.items()},
            "tensors_file": tensors_path.name,
            "tensors_bytes": len(payload),
            "tensors_sha256": hashlib.sha256(payload).hexdigest(),
            "created_at": snapshot.created_at,
            "initial_digest": snapshot.initial_digest,
        }  # fmt: skip
        if snapshot.rows is not None:
            previous = self._rows_chains.pop(folder, None)  # gone unless this write completes
            manifest["rows"] = write_rows(
                folder, stem, snapshot.version, snapshot.job_id, snapshot.rows, previous, _write_atomically
            )
        manifest_path = folder / f"{stem}.json"
        kill = self._fault.fires(KILL_BEFORE_MANIFEST, self._writes)
        manifest_bytes = json.dumps(manifest, indent=1).encode()
        _write_atomically(manifest_path, manifest_bytes, "before writing its manifest" if kill else "")
        _fsync_dir(folder)
        if snapshot.rows is not None:
            self._rows_chains[folder] = chain_of(manifest["rows"], str(manifest_path))
        self._prune(folder, self.keep_last if keep_last is None else max(1, keep_last))
        return manifest_path

    def _prune(self, folder: Path, keep_last: int) -> None:
        manifests = self._manifests(folder)
        for manifest in manifests[keep_last:]:
            manifest.unlink(missing_ok=True)
            manifest.with_suffix(".safetensors").unlink(missing_ok=True)
        # Rows files are shared along a chain: only those no kept checkpoint names go.
        prune_rows(folder, manifests[:keep_last])

    # --- reading -------------------------------------------------------------------------
    @staticmethod
    def _manifests(folder: Path) -> list[Path]:
        """Manifests in the folder, newest version first."""
        if not folder.is_dir():
            return []
        return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name, reverse=True)

    def versions(self, job_id: str, shard_index: int) -> list[int]:
        return [int(_NAME.match(p.name).group(1)) for p in self._manifests(self.folder(job_id, shard_index))]  # type: ignore[union-attr]

    def load(self, manifest_path: Path, job_id: str, shard_index: int) -> ShardSnapshot:
        """Reads and checks one checkpoint; raises DataLossError naming what is wrong."""
        where = f"checkpoint {manifest_path}"
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise DataLossError(f"{where}: unreadable manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            raise DataLossError(f"{where}: not a format {FORMAT_VERSION} manifest")
        expected = {"job_id": job_id, "shard_index": shard_index, "version": int(manifest_path.stem[1:])}
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise DataLossError(f"{where}: manifest {key} is {manifest.get(key)!r}, expected {value!r}")
        tensors_path = manifest_path.with_name(str(manifest.get("tensors_file", "")))
        if tensors_path.parent != manifest_path.parent or tensors_path.suffix != ".safetensors":
            raise DataLossError(f"{where}: tensors_file {manifest.get('tensors_file')!r} is not beside the manifest")
        try:
            payload = tensors_path.read_bytes()
        except OSError as exc:
            raise DataLossError(f"{where}: tensor file unreadable ({exc})") from None
        if len(payload) != manifest.get("tensors_bytes"):
            raise DataLossError(
                f"{where}: tensor file truncated or extended: {len(payload)} bytes, manifest says "
                f"{manifest.get('tensors_bytes')}"
            )
        digest = hashlib.sha256(payload).hexdigest()
        if digest != manifest.get("tensors_sha256"):
            raise DataLossError(
                f"{where}: checksum mismatch (sha256 {digest}, manifest {manifest.get('tensors_sha256')})"
            )
        try:
            tensors = load_tensors(payload)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            # A pickle (torch.save) or any other payload is refused here, never unpickled.
            raise DataLossError(f"{where}: tensor file is not safetensors ({exc})") from None
        declared = manifest.get("tensors", {})
        found = {n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for n, t in tensors.items()}
        if declared != found or PARAMS not in found:
            raise DataLossError(f"{where}: tensors {found} do not match the manifest's {declared}")
        rows = load_rows(manifest_path, manifest["rows"], where) if "rows" in manifest else None
        try:
            return ShardSnapshot(
                job_id=job_id,
                shard_index=shard_index,
                shard_range=(int(manifest["shard_range"][0]), int(manifest["shard_range"][1])),
                version=int(manifest["version"]),
                membership_epoch=int(manifest["membership_epoch"]),
                members=[str(m) for m in manifest["members"]],
                mode=str(manifest["mode"]),
                tensors=tensors,
                optimizer=dict(manifest["optimizer"]),
                counters=dict(manifest["counters"]),
                recent_pushes=list(manifest["recent_pushes"]),
                created_at=float(manifest["created_at"]),
                # Absent in checkpoints written before shards kept it: then unchecked.
                initial_digest=str(manifest.get("initial_digest", "")),
                rows=rows,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DataLossError(f"{where}: manifest field missing or malformed ({exc!r})") from None

    def load_latest(self, job_id: str, shard_index: int) -> tuple[ShardSnapshot, list[str]]:
        """The newest valid checkpoint of a shard and why each newer one was refused. Raises
        DataLossError (listing every refusal) when none is valid."""
        folder = self.folder(job_id, shard_index)
        self._remove_temporaries(folder)
        refused: list[str] = []
        for manifest in self._manifests(folder):
            try:
                return self.load(manifest, job_id, shard_index), refused
            except DataLossError as exc:
                log.exception("%s; falling back to the previous checkpoint", exc)
                refused.append(str(exc))
        why = "; ".join(refused) if refused else f"no checkpoint in {folder}"
        raise DataLossError(f"job {job_id} shard {shard_index}: no valid checkpoint ({why})")

    @staticmethod
    def _remove_temporaries(folder: Path) -> None:
        """Leftovers of a write that died before its rename: never valid, never needed."""
        if folder.is_dir():
            for tmp in folder.glob(".v*.tmp-*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def sweep(self, now: float, retention_s: float, keep: Collection[str] = ()) -> list[str]:
        """Deletes the checkpoints of every job not in `keep` whose newest file is at least
        `retention_s` old at `now` (Unix seconds, as file times are); returns their job ids.
        A finished job's final checkpoint is its newest, so its age counts from the job's end.
        0 keeps everything."""
        if retention_s <= 0 or not self.root.is_dir():
            return []
        removed = []
        for job_dir in sorted(self.root.iterdir()):
            if not job_dir.is_dir() or not _SAFE_ID.match(job_dir.name) or job_dir.name in keep:
                continue
            newest = max((p.stat().st_mtime for p in job_dir.rglob("*") if p.is_file()), default=0.0)
            if now - newest >= retention_s:
                shutil.rmtree(job_dir, ignore_errors=True)
                removed.append(job_dir.name)
        return removed

    def scan(self) -> list[CheckpointRef]:
        """The newest checkpoint per (job, shard) under the root, from the manifests' names
        (cheap; `load_latest` checks them in full when one is restored), newest first."""
        found: list[tuple[float, CheckpointRef]] = []
        if not self.root.is_dir():
            return []
        for job_dir in self.root.iterdir():
            if not job_dir.is_dir() or not _SAFE_ID.match(job_dir.name):
                continue
            for shard_dir in job_dir.glob("shard-*"):
                index = shard_dir.name.removeprefix("shard-")
                manifests = self._manifests(shard_dir)
                if index.isdigit() and manifests:
                    version = int(manifests[0].stem[1:])
                    found.append((manifests[0].stat().st_mtime, CheckpointRef(job_dir.name, int(index), version)))
        return [ref for _, ref in sorted(found, key=lambda x: x[0], reverse=True)]
