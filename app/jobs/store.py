"""Job records in the database (app/db.py), shared by every server process and replica.

The one-job-at-a-time rule lives here, in a serialised write transaction, not in a variable of one
process: every process (or machine, with PostgreSQL) sees the same rows under the same lock. Each
queued or running job names its owner process and carries a heartbeat; a job whose owner stopped
beating is marked failed ("interrupted"), so a replica that restarts never fails a sibling's live job.
"""

import re
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    Row,
    Table,
    Text,
    select,
    update,
)

from app.db import Database, now_iso
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


ACTIVE = [status.value for status in JobStatus if status.active]
JOB_ID = re.compile(r"[0-9a-f]{12}")

# The jobs table as the migrations leave it (app/migrations/versions).
jobs = Table(
    "jobs",
    MetaData(),
    Column("id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("progress", JSON, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("started_at", Text),
    Column("finished_at", Text),
    Column("error", Text),
    Column("model_version", Text),
    Column("test_accuracy", Float),
    Column("owner", Text, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("pid", Integer),
    Column("cancel_requested", Boolean, nullable=False),
)


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
    def from_row(cls, row: Row[Any]) -> "Job":
        data = dict(row._mapping)
        data["status"] = JobStatus(data["status"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)


def known_shape(job_id: str) -> None:
    """Ids are 12 hex digits: anything else is not found, before a database sees it (PostgreSQL
    refuses some text outright, a NUL byte for one)."""
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no training job {job_id!r}")


class JobStore:
    """All job state, in the service's database."""

    def __init__(self, database: Database, stale_after_s: float = 15.0) -> None:
        self.database = database
        self.stale_after_s = stale_after_s

    def _reap(self, db: Connection) -> None:
        """Fail active jobs whose owner stopped beating (it crashed or was killed)."""
        db.execute(
            update(jobs)
            .where(jobs.c.status.in_(ACTIVE), jobs.c.heartbeat < time.time() - self.stale_after_s)
            .values(
                status=JobStatus.FAILED.value,
                finished_at=now_iso(),
                error="interrupted: the server running this job stopped before it finished",
            )
        )

    def create(self, params: dict[str, Any], owner: str) -> Job:
        """A new queued job, or JobConflict naming the job that is already queued or running."""
        with self.database.write() as db:
            self._reap(db)
            active = db.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.status.in_(ACTIVE))).first()
            if active is not None:
                raise JobConflict(
                    f"training job {active.id} is {active.status}; one job runs at a time", job_id=active.id
                )
            job_id = uuid.uuid4().hex[:12]
            db.execute(
                jobs.insert().values(
                    id=job_id,
                    status=JobStatus.QUEUED.value,
                    params=params,
                    progress={},
                    created_at=now_iso(),
                    owner=owner,
                    heartbeat=time.time(),
                    cancel_requested=False,
                )
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        known_shape(job_id)
        with self.database.read() as db:
            row = db.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no training job {job_id}")
        return Job.from_row(row)

    def list(self, limit: int = 20) -> list[Job]:
        with self.database.read() as db:
            rows = db.execute(select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit))
            return [Job.from_row(row) for row in rows]

    def reap(self) -> None:
        with self.database.write() as db:
            self._reap(db)

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one job."""
        plain = {key: value.value if isinstance(value, JobStatus) else value for key, value in values.items()}
        with self.database.write() as db:
            db.execute(update(jobs).where(jobs.c.id == job_id).values(**plain))

    def beat(self, job_id: str) -> bool:
        """Refresh the heartbeat; True when a cancel was asked for (by any process)."""
        with self.database.write() as db:
            db.execute(update(jobs).where(jobs.c.id == job_id).values(heartbeat=time.time()))
            cancel = db.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
        return bool(cancel)

    def request_cancel(self, job_id: str) -> Job:
        """Ask for a job to stop: a queued one ends at once, a running one when its owner stops it."""
        known_shape(job_id)
        with self.database.write() as db:
            status = db.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
            if status is None:
                raise JobNotFound(f"no training job {job_id}")
            if JobStatus(status).active:
                db.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
        return self.get(job_id)
