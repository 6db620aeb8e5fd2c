"""The coordinator's state on disk: one SQLite file, so a restarted coordinator adopts the
jobs and members of the one that died.

Rows hold the JSON of `tidal.core.snapshot`. Writes are incremental: a `Changes` names the
members changed or forgotten and the jobs that may have changed, and the store skips jobs and
meta values equal to what it last wrote. Every write is one transaction, so a crash leaves
either the old or the new state, never a mix; WAL journaling keeps a write to a few
milliseconds. The coordinator writes from one dedicated thread (coordinator/writer.py), never
from its event loop: the connection is used by one thread at a time, not always the one that
opened it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidal.core import snapshot
from tidal.core.errors import DataLossError
from tidal.core.job_records import Job, JobState
from tidal.core.membership import Member

FILE_NAME = "coordinator.sqlite3"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (member_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, data TEXT NOT NULL);
"""
_EPOCH, _NEXT_MEMBER_ID = "membership_epoch", "next_member_id"


@dataclass
class SavedState:
    members: list[Member]
    membership_epoch: int
    jobs: list[Job]
    # The number in the next member id (0 in files saved before it was kept).
    next_member_id: int = 0


@dataclass
class Changes:
    """What to write, as plain data taken on the event loop (the writer thread never reads
    objects the loop mutates). A member mapped to None was forgotten: its row is deleted."""

    members: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    membership_epoch: int = 0
    next_member_id: int = 0

    @classmethod
    def of(
        cls,
        members: Iterable[Member],
        jobs: Iterable[Job],
        membership_epoch: int,
        next_member_id: int = 0,
        forgotten: Iterable[str] = (),
    ) -> Changes:
        rows: dict[str, dict[str, Any] | None] = {m.member_id: snapshot.member_to_dict(m) for m in members}
        rows.update(dict.fromkeys(forgotten))
        return cls(rows, {j.job_id: snapshot.job_to_dict(j) for j in jobs}, membership_epoch, next_member_id)

    def then(self, newer: Changes) -> Changes:
        """These changes followed by `newer` (a failed write is retried with the next one)."""
        return Changes({**self.members, **newer.members}, {**self.jobs, **newer.jobs}, newer.membership_epoch,
                       newer.next_member_id)  # fmt: skip


class StateStore:
    def __init__(self, state_dir: Path, trace: Callable[[str], None] | None = None) -> None:
        """`trace`, if given, is called with every SQL statement, in the thread that runs it."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        # Rows changed by writes since opening (SQLite's count: an upsert or delete is one).
        self.rows_written = 0
        # The JSON last written (or loaded) per job not yet ended, and the meta values: a
        # write skips what is unchanged.
        self._job_text: dict[str, str] = {}
        self._meta: dict[str, str] = {}
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.set_trace_callback(trace)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            version = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DataLossError(f"state file {self.path}: {exc}") from None
        if version is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif version[0] != str(SCHEMA_VERSION):
            raise DataLossError(f"state file {self.path}: schema {version[0]}, this coordinator reads {SCHEMA_VERSION}")

    def load(self, now: float) -> SavedState:
        """Everything saved; members' heartbeat clocks start at `now` (monotonic seconds)."""
        try:
            members = [
                snapshot.member_from_dict(snapshot.loads(text, f"member {member_id!r}"), now)
                for member_id, text in self._db.execute("SELECT member_id, data FROM members")
            ]
            job_rows = list(self._db.execute("SELECT job_id, data FROM jobs ORDER BY rowid"))
            jobs = [snapshot.job_from_dict(snapshot.loads(text, f"job {job_id!r}")) for job_id, text in job_rows]
            meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (_EPOCH, _NEXT_MEMBER_ID)))
        except sqlite3.DatabaseError as exc:
            raise DataLossError(f"state file {self.path}: {exc}") from None
        self._meta = meta
        self._job_text = {
            job.job_id: text for job, (_, text) in zip(jobs, job_rows, strict=True) if not job.state.terminal
        }
        return SavedState(members, int(meta.get(_EPOCH, 0)), jobs, int(meta.get(_NEXT_MEMBER_ID, 0)))

    def write(self, changes: Changes) -> int:
        """Writes `changes` in one transaction, skipping jobs and meta values equal to what it
        last wrote; returns the rows written."""
        upserts = [(m, snapshot.dumps(data)) for m, data in changes.members.items() if data is not None]
        deletes = [(m,) for m, data in changes.members.items() if data is None]
        job_rows = [
            (j, text) for j, data in changes.jobs.items() if self._job_text.get(j) != (text := snapshot.dumps(data))
        ]
        meta = [
            (key, value)
            for key, value in ((_EPOCH, str(changes.membership_epoch)), (_NEXT_MEMBER_ID, str(changes.next_member_id)))
            if self._meta.get(key) != value
        ]
        if not (upserts or deletes or job_rows or meta):
            return 0
        before = self._db.total_changes
        with self._transaction():
            self._db.executemany(
                "INSERT INTO members VALUES (?, ?) ON CONFLICT(member_id) DO UPDATE SET data = excluded.data", upserts
            )
            self._db.executemany("DELETE FROM members WHERE member_id = ?", deletes)
            self._db.executemany(
                "INSERT INTO jobs VALUES (?, ?) ON CONFLICT(job_id) DO UPDATE SET data = excluded.data", job_rows
            )
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", meta
            )
        # Committed: remember what the file holds. Ended jobs never change again.
        self._meta.update(meta)
        for job_id, text in job_rows:
            if JobState(changes.jobs[job_id]["state"]).terminal:
                self._job_text.pop(job_id, None)
            else:
                self._job_text[job_id] = text
        written = self._db.total_changes - before
        self.rows_written += written
        return written

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._db.execute("COMMIT" if exc is None else "ROLLBACK")
