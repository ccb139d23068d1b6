"""Job records in SQLite, in the state folder, shared by every server process and replica.

The one-job-at-a-time rule lives here, in a write transaction, not in a variable of one process:
several processes (or containers sharing the volume) see the same rows and the same lock. Each
queued or running job names its owner process and carries a heartbeat; a job whose owner stopped
beating is marked failed ("interrupted"), so a replica that restarts never fails a sibling's live job.
"""

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.errors import JobConflict, JobNotFound


class JobStatus(StrEnum):
    """A job's state; stored as its text, shown as it is by the API."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def active(self) -> bool:
        """Queued or running: the job still holds the one-job slot."""
        return self in (JobStatus.QUEUED, JobStatus.RUNNING)


# The active statuses as an SQL list, for WHERE clauses (the members are fixed strings, not input).
ACTIVE_SQL = "(" + ", ".join(f"'{status}'" for status in JobStatus if status.active) + ")"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    model_version TEXT,
    test_accuracy REAL,
    owner TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """One training job as stored."""

    id: str
    status: JobStatus
    params: dict[str, Any]
    progress: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    model_version: str | None = None
    test_accuracy: float | None = None
    owner: str = ""
    heartbeat: float = 0.0
    pid: int | None = None
    cancel_requested: bool = False

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        data = dict(row)
        data["params"] = json.loads(data["params"])
        data["progress"] = json.loads(data["progress"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        data["status"] = JobStatus(data["status"])
        return cls(**data)


class JobStore:
    """All job state, in `<state_dir>/jobs.sqlite3`."""

    def __init__(self, state_dir: Path, stale_after_s: float = 15.0) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "jobs.sqlite3"
        self.stale_after_s = stale_after_s
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: cheap for SQLite, and safe from any thread or process.
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An immediate write transaction: one writer at a time across every process."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _reap(self, db: sqlite3.Connection) -> None:
        """Fail active jobs whose owner stopped beating (it crashed or was killed)."""
        cutoff = time.time() - self.stale_after_s
        db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, "
            "error = 'interrupted: the server running this job stopped before it finished' "
            f"WHERE status IN {ACTIVE_SQL} AND heartbeat < ?",
            (JobStatus.FAILED, now_iso(), cutoff),
        )

    def create(self, params: dict[str, Any], owner: str) -> Job:
        """A new queued job, or JobConflict naming the job that is already queued or running."""
        with self._write() as db:
            self._reap(db)
            active = db.execute(f"SELECT id, status FROM jobs WHERE status IN {ACTIVE_SQL}").fetchone()
            if active is not None:
                raise JobConflict(
                    f"training job {active['id']} is {active['status']}; one job runs at a time",
                    job_id=active["id"],
                )
            job_id = uuid.uuid4().hex[:12]
            db.execute(
                "INSERT INTO jobs (id, status, params, created_at, owner, heartbeat) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (job_id, json.dumps(params), now_iso(), owner, time.time()),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no training job {job_id}")
        return Job.from_row(row)

    def list(self, limit: int = 20) -> list[Job]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
            return [Job.from_row(row) for row in rows]

    def reap(self) -> None:
        with self._write() as db:
            self._reap(db)

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one job (progress and params are stored as JSON)."""
        for key in ("progress", "params"):
            if key in values:
                values[key] = json.dumps(values[key])
        columns = ", ".join(f"{key} = ?" for key in values)
        with self._write() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def beat(self, job_id: str) -> bool:
        """Refresh the heartbeat; True when a cancel was asked for (by any process)."""
        with self._write() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), job_id))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def request_cancel(self, job_id: str) -> Job:
        """Ask for a job to stop: a queued one ends at once, a running one when its owner stops it."""
        with self._write() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no training job {job_id}")
            if JobStatus(row["status"]).active:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)
