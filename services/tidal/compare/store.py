"""The runs of a comparison on disk, one file per finished run, so an interrupted study resumes.

`<out>/runs/spec.json` holds the digest of the compare spec the runs belong to; each finished run
(a mode, a seed, with or without a kill) is `<out>/runs/<NN>-<label>[-kill]-seed<S>.json`, written
atomically (a temporary file, then rename) the moment the run ends. Running the same command
again skips every run whose file is there and valid for the same spec, and runs the rest; a
run that was interrupted has no file and runs again from its start.

The digest covers the whole validated spec except the seeds (`seeds` and `job.seed`), so adding
seeds to a finished study runs only the new ones; any other change is refused, since the runs
done would not be comparable with the new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tidal.compare.results import RunResult, dumps, result_from_dict
from tidal.compare.spec import CompareSpec, PlannedRun, slug
from tidal.core.errors import InvalidArgumentError

RUNS = "runs"
MANIFEST = "spec.json"
FORMAT = 1


def spec_digest(spec: CompareSpec) -> str:
    data = spec.model_dump(mode="json", exclude={"seeds"})
    data["job"] = {k: v for k, v in data["job"].items() if k != "seed"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_key(run: PlannedRun) -> str:
    """The run's file name without .json: position and label of its mode, kill, seed."""
    return f"{run.index:02d}-{slug(run.label)}{'-kill' if run.kill else ''}-seed{run.seed}"


@dataclass
class StoredRun:
    key: str
    label: str
    kill: bool
    seed: int
    result: RunResult
    exits: list[dict[str, Any]]  # worker processes that exited and were replaced during the run
    job_spec: dict[str, Any]
    code: str  # the code version that ran it (provenance.code_version)
    finished_at: str
    duration_s: float  # the run's wall time including its warm-up, if any


def write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one, even if the process dies."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RunStore:
    def __init__(self, out: Path, spec: CompareSpec) -> None:
        self.folder = out / RUNS
        self.digest = spec_digest(spec)

    def open(self, restart: bool) -> None:
        """Creates the folder, or checks it holds runs of this spec; `restart` discards what is there.

        Raises InvalidArgumentError (one line, naming --out and --restart) for runs of another spec.
        """
        manifest = self.folder / MANIFEST
        if restart and self.folder.exists():
            shutil.rmtree(self.folder)
        elif manifest.exists():
            try:
                found = json.loads(manifest.read_text()).get("digest")
            except (OSError, ValueError, AttributeError):
                found = None
            if found != self.digest:
                out = self.folder.parent
                raise InvalidArgumentError(
                    f"--out {out}: holds runs of a different compare spec (digest {str(found)[:12]}, this spec "
                    f"{self.digest[:12]}); use a new --out folder, or --restart to discard the runs in {self.folder}"
                )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob(".*.tmp"):  # left by a process killed mid-write
                stale.unlink()
            if not manifest.exists():
                write_atomic(manifest, json.dumps({"format": FORMAT, "digest": self.digest}, indent=2) + "\n")
        except OSError as exc:
            raise InvalidArgumentError(f"--out {self.folder.parent}: cannot write the runs folder: {exc}") from None

    def save(self, stored: StoredRun) -> Path:
        path = self.folder / f"{stored.key}.json"
        record = {"format": FORMAT, "digest": self.digest, **asdict(stored)}
        write_atomic(path, dumps(record) + "\n")
        return path

    def load(self, planned: list[PlannedRun]) -> tuple[dict[str, StoredRun], list[str]]:
        """The planned runs that have a valid file, by key; and one note per file that is not valid."""
        found: dict[str, StoredRun] = {}
        notes = []
        for run in planned:
            key = run_key(run)
            path = self.folder / f"{key}.json"
            if not path.exists():
                continue
            try:
                stored = self._read(path, run)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                notes.append(f"{path}: not a valid result ({exc}); running it again")
                continue
            found[key] = stored
        return found, notes

    def _read(self, path: Path, run: PlannedRun) -> StoredRun:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("digest") != self.digest:
            raise ValueError("written for another spec or by another version of tidal compare")
        if (data["label"], data["kill"], data["seed"]) != (run.label, run.kill, run.seed):
            raise ValueError(f"holds {data['label']!r} seed {data['seed']}, not {run.label!r} seed {run.seed}")
        return StoredRun(
            key=data["key"],
            label=data["label"],
            kill=bool(data["kill"]),
            seed=int(data["seed"]),
            result=result_from_dict(data["result"]),
            exits=list(data["exits"]),
            job_spec=dict(data["job_spec"]),
            code=str(data["code"]),
            finished_at=str(data["finished_at"]),
            duration_s=float(data["duration_s"]),
        )
