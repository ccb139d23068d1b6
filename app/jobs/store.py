"""Job records in the database (app/records/database.py), shared by every server process and replica, and the
trainers that run them.

The rules live here, in serialised write transactions, not in a variable of one process: every
process (or machine, with PostgreSQL) sees the same rows under the same lock.
- Capacity: a job is accepted while the active jobs fit the free slots of the live trainers plus
  MNIST_TRAIN_QUEUE; beyond that, 409 naming the running jobs.
- Claiming: a trainer with a free slot takes the oldest queued job (row lock, SKIP LOCKED).
- Liveness: each trainer and each running job's owner keep a heartbeat on the database's clock; a
  running job whose owner went silent is marked failed ("interrupted") by whoever looks next, so a
  replica that restarts never fails a live job of another host, and an owner that finds its job
  taken from it (an outage longer than the stale window) stops it, keeping the slot rule.
"""

import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)

from app.errors import JobConflict, JobNotFound, NoTrainer
from app.records.database import Database, now_iso
from app.records.pools import on_records
from app.records.tables import jobs, trainers


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
    trainer: str | None = None
    promotion: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> "Job":
        data = {key: value for key, value in row._mapping.items() if key in cls.__dataclass_fields__}
        data["status"] = JobStatus(data["status"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)


def known_shape(job_id: str) -> None:
    """Ids are 12 hex digits: anything else is not found, before a database sees it (PostgreSQL
    refuses some text outright, a NUL byte for one)."""
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no training job {job_id[:64]!r}")


# A claimed job back in the queue, as if never claimed.
REQUEUED: dict[str, Any] = {
    "status": JobStatus.QUEUED.value,
    "owner": "",
    "trainer": None,
    "started_at": None,
    "progress": {},
}


class Beat(StrEnum):
    """What a running job's owner learns from its heartbeat."""

    ALIVE = "alive"
    CANCEL = "cancel"  # someone asked for it to stop
    LOST = "lost"  # no longer ours: reaped as interrupted while we could not reach the database


class JobStore:
    """All job and trainer state, in the service's database."""

    def __init__(self, database: Database, *, stale_after_s: float) -> None:
        self.database, self.records = database, database.records
        self.stale_after_s = stale_after_s

    def _stale(self) -> ColumnElement[Any]:
        return self.database.clock() - self.stale_after_s

    def _reap(self, db: Connection) -> None:
        """Settle running jobs whose owner stopped beating (it crashed, was killed, or lost its
        host): one whose child never started goes back to the queue, the others end failed.
        Queued jobs have no owner yet: they wait for a trainer. Not done until this process has
        had the database back for a stale window: after an outage every heartbeat looks old,
        and live owners need that long to beat again."""
        if self.database.reachable_for() < self.stale_after_s:
            return
        silent = (jobs.c.status == JobStatus.RUNNING.value, jobs.c.heartbeat < self._stale())
        db.execute(  # a cancel its owner can no longer carry out is done: the owner is gone
            update(jobs)  # (a server shutting down also sets the flag, with an error: that fails)
            .where(*silent, jobs.c.cancel_requested.is_(True), jobs.c.error.is_(None))
            .values(status=JobStatus.CANCELLED.value, finished_at=now_iso())
        )
        db.execute(update(jobs).where(*silent, jobs.c.pid.is_(None)).values(**REQUEUED))
        db.execute(
            update(jobs)
            .where(*silent)
            .values(
                status=JobStatus.FAILED.value,
                finished_at=now_iso(),
                error="interrupted: the trainer running this job stopped before it finished",
            )
        )
        db.execute(delete(trainers).where(trainers.c.heartbeat < self._stale()))

    def create(self, params: dict[str, Any], queue: int = 0) -> Job:
        """A new queued job, if the active jobs leave room: the live trainers' slots plus `queue`
        waiting places. Else JobConflict naming what runs, or NoTrainer when nothing could run it."""
        with self.database.write() as db:
            self._reap(db)
            slots = db.execute(select(func.coalesce(func.sum(trainers.c.slots), 0))).scalar_one()
            active = db.execute(
                select(jobs.c.id, jobs.c.status).where(jobs.c.status.in_(ACTIVE)).order_by(jobs.c.created_at)
            ).all()
            if len(active) >= slots + queue:
                if slots + queue == 0:
                    raise NoTrainer(
                        "no trainer is running to take the job: start one (MNIST_ROLE=trainer or all), "
                        "or set MNIST_TRAIN_QUEUE to let jobs wait for one"
                    )
                named = ", ".join(f"{row.id} ({row.status})" for row in active)
                raise JobConflict(
                    f"training job(s) {named} hold every trainer slot"
                    + (f" and the {queue} queue place(s)" if queue else "")
                    + f": {slots} job(s) run at a time; try again when one ends",
                    job_id=active[0].id,
                )
            job_id = uuid.uuid4().hex[:12]
            db.execute(
                jobs.insert().values(
                    id=job_id,
                    status=JobStatus.QUEUED.value,
                    params=params,
                    created_at=now_iso(),
                    owner="",
                    heartbeat=self.database.clock(),
                )  # no progress yet and no cancel asked: the table's defaults
            )
        return self.get(job_id)

    def claim(self, trainer: str, owner: str, slots: int) -> Job | None:
        """The oldest queued job, now running and owned by `owner`, if `trainer` has a free slot."""
        with self.database.read() as db:  # the usual answer, "nothing to do", without the write lock
            waiting = or_(
                jobs.c.status == JobStatus.QUEUED.value,
                and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.heartbeat < self._stale()),
            )
            if not db.execute(select(exists().where(waiting))).scalar():
                return None
        with self.database.write() as db:
            self._reap(db)
            busy = db.execute(
                select(func.count())
                .select_from(jobs)
                .where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.trainer == trainer)
            ).scalar_one()
            if busy >= slots:
                return None
            # No row lock needed: writes are serialised (Database.write), so no other claim runs
            # between this read and the update.
            job_id = db.execute(
                select(jobs.c.id)
                .where(jobs.c.status == JobStatus.QUEUED.value)
                .order_by(jobs.c.created_at, jobs.c.id)
                .limit(1)
            ).scalar()
            if job_id is None:
                return None
            db.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    status=JobStatus.RUNNING.value,
                    owner=owner,
                    trainer=trainer,
                    heartbeat=self.database.clock(),
                    started_at=now_iso(),
                )
            )
            # Read back in the same transaction: a claim is either returned or never made.
            return Job.from_row(db.execute(select(jobs).where(jobs.c.id == job_id)).one())

    def release(self, job_id: str, owner: str) -> None:
        """Give a claimed job whose child was never started back to the queue (a shutdown)."""
        with self.database.write() as db:
            db.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.owner == owner, jobs.c.status == JobStatus.RUNNING.value)
                .values(**REQUEUED)
            )

    def check_in(self, trainer: str, slots: int) -> None:
        """A trainer is alive with this many slots (every trainer process calls it on each beat)."""
        with self.database.write() as db:
            updated = db.execute(
                update(trainers)
                .where(trainers.c.name == trainer)
                .values(slots=slots, heartbeat=self.database.clock())
            ).rowcount
            if not updated:
                db.execute(
                    trainers.insert().values(
                        name=trainer, slots=slots, heartbeat=self.database.clock(), started_at=now_iso()
                    )
                )

    def check_out(self, trainer: str) -> None:
        """A trainer stops taking jobs (its siblings of the same name check in again on their beat)."""
        with self.database.write() as db:
            db.execute(delete(trainers).where(trainers.c.name == trainer))

    def _settled(self, query: Select[Any]) -> list[Job]:
        """The jobs `query` selects, none of them shown `running` for an owner that went silent: such
        a job is reaped first (readers need not wait for a trainer's timer to see it end)."""
        silent = and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.heartbeat < self._stale())
        with self.database.read() as db:
            rows = db.execute(query.add_columns(silent.label("silent"))).all()
        if any(row.silent for row in rows) and self.database.reachable_for() >= self.stale_after_s:
            self.reap()
            with self.database.read() as db:
                rows = db.execute(query).all()
        return [Job.from_row(row) for row in rows]

    def get(self, job_id: str) -> Job:
        known_shape(job_id)
        found = self._settled(select(jobs).where(jobs.c.id == job_id))
        if not found:
            raise JobNotFound(f"no training job {job_id}")
        return found[0]

    def recent(self, limit: int = 20) -> list[Job]:
        """The newest `limit` jobs, newest first."""
        return self._settled(select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit))

    def reap(self) -> None:
        with self.database.write() as db:
            self._reap(db)

    def update(self, job_id: str, owner: str, /, **values: Any) -> bool:
        """Set columns of a job `owner` runs; False when it is no longer running as theirs. (The two
        come by position only, so that `values` may name any column.)"""
        with self.database.write() as db:
            changed = db.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.owner == owner, jobs.c.status == JobStatus.RUNNING.value)
                .values(**values)
            ).rowcount
        return bool(changed)

    def beat(self, job_id: str, owner: str) -> Beat:
        """Refresh a running job's heartbeat, and say whether it should go on."""
        with self.database.write() as db:
            mine = db.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.owner == owner, jobs.c.status == JobStatus.RUNNING.value)
                .values(heartbeat=self.database.clock())
            ).rowcount
            cancel = db.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
        if not mine:
            return Beat.LOST
        return Beat.CANCEL if cancel else Beat.ALIVE

    def request_cancel(self, job_id: str) -> Job:
        """Ask for a job to stop: a queued one ends at once, a running one when its owner stops it."""
        known_shape(job_id)
        with self.database.write() as db:
            status = db.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
            if status is None:
                raise JobNotFound(f"no training job {job_id}")
            if status == JobStatus.QUEUED:
                db.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=now_iso())
                )
            elif status == JobStatus.RUNNING:
                db.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
                self._reap(db)  # an owner that went silent cannot stop it: cancelled now
        return self.get(job_id)

    # The event loop's way in: each call on the records' own threads.
    acreate = on_records(create)
    aclaim = on_records(claim)
    arelease = on_records(release)
    acheck_in = on_records(check_in)
    acheck_out = on_records(check_out)
    aget = on_records(get)
    arecent = on_records(recent)
    areap = on_records(reap)
    aupdate = on_records(update)
    abeat = on_records(beat)
    arequest_cancel = on_records(request_cancel)
