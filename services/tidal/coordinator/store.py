"""The coordinator's state on disk: one SQLite file, so a restarted coordinator adopts the
jobs and members of the one that died.

Rows hold the JSON of `tidal.core.snapshot`; every save is one transaction, so a crash
leaves either the old or the new state, never a mix. WAL journaling keeps a save to a few
milliseconds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tidal.core import snapshot
from tidal.core.errors import DataLossError
from tidal.core.job_records import Job
from tidal.core.membership import Member

FILE_NAME = "coordinator.sqlite3"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (member_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, data TEXT NOT NULL);
"""


@dataclass
class SavedState:
    members: list[Member]
    membership_epoch: int
    jobs: list[Job]


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
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
            jobs = [
                snapshot.job_from_dict(snapshot.loads(text, f"job {job_id!r}"))
                for job_id, text in self._db.execute("SELECT job_id, data FROM jobs ORDER BY rowid")
            ]
            epoch = self._db.execute("SELECT value FROM meta WHERE key = 'membership_epoch'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DataLossError(f"state file {self.path}: {exc}") from None
        return SavedState(members, int(epoch[0]) if epoch else 0, jobs)

    def save(self, members: Iterable[Member], membership_epoch: int, jobs: Iterable[Job]) -> None:
        """Writes the given members and jobs (the changed ones; others keep their rows)."""
        member_rows = [(m.member_id, snapshot.dumps(snapshot.member_to_dict(m))) for m in members]
        job_rows = [(j.job_id, snapshot.dumps(snapshot.job_to_dict(j))) for j in jobs]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO members VALUES (?, ?) ON CONFLICT(member_id) DO UPDATE SET data = excluded.data",
                member_rows,
            )
            self._db.executemany(
                "INSERT INTO jobs VALUES (?, ?) ON CONFLICT(job_id) DO UPDATE SET data = excluded.data", job_rows
            )
            self._db.execute(
                "INSERT INTO meta VALUES ('membership_epoch', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(membership_epoch),),
            )

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
