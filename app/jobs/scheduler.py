"""Scheduling training jobs: accepting them, and where this process trains, claiming queued jobs,
running each as a child process (app/jobs/children.py) whose events become its progress
(app/jobs/progress.py), keeping the job ours by heartbeats, and recording how it ended once its
model is judged (app/jobs/judging.py). The whole story of a job is in app/jobs/__init__.py.
"""

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import ModelStoreUnavailable, RecordsUnavailable
from app.jobs.children import Children, Commands, procs_of
from app.jobs.judging import Judge
from app.jobs.progress import fold_events, last_lines
from app.jobs.store import Beat, Job, JobStatus, JobStore
from app.records.database import now_iso
from app.records.feedback import FeedbackStore
from app.records.versions import ModelVersions
from models.checkpoint import atomic_write_bytes

log = logging.getLogger("app.jobs")
# How long a finished job's model waits for an unreachable model store before the job fails.
STORE_PATIENCE_S = 300.0
# A stopped child's time to exit before it is killed; a trainer's wait between looks for queued jobs.
KILL_GRACE_S = 5.0
CLAIM_POLL_S = 0.5


class JobManager:
    """Accepts jobs, and where this process trains (MNIST_ROLE all or trainer), claims queued jobs
    and starts, watches and stops their children."""

    def __init__(
        self,
        store: JobStore,
        versions: ModelVersions,
        promoted: Callable[[], Awaitable[None]],
        settings: Settings,
        feedback: FeedbackStore,
        commands: Commands | None = None,
    ) -> None:
        """`promoted` is called when a job's model became the active version; `commands` are the
        programs a job runs (default: this Python's `training` and `training.evaluate`)."""
        self.store, self.versions, self.promoted, self.feedback = store, versions, promoted, feedback
        self.trains = settings.role != "api"
        self.trainer = settings.trainer_name or socket.gethostname()
        self.slots, self.queue = settings.train_slots, settings.train_queue
        self.threads, self.max_procs = settings.train_threads, settings.train_max_procs
        self.heartbeat_s = settings.job_heartbeat_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.commands = commands or Commands.of_python(settings.device, settings.data_dir)
        self.children = Children(settings.train_priority, KILL_GRACE_S)
        self.judge = Judge(
            store, versions, self.children, self.commands, self.threads, settings.promote_mnist_tolerance
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tending: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """A trainer checks in (so jobs are accepted for it) and starts claiming queued jobs; every
        process keeps reaping jobs whose trainer went silent, so readers see them end."""
        if self.trains:
            with contextlib.suppress(RecordsUnavailable):  # it checks in again on every beat
                await self.store.acheck_in(self.trainer, self.slots)
        self._tending = asyncio.create_task(self._tend_jobs(), name="job-tender")

    async def submit(self, params: dict[str, Any]) -> Job:
        """Record a queued job (or JobConflict / NoTrainer); a trainer with a free slot claims it."""
        job = await self.store.acreate(params, self.queue)
        self._wake.set()  # this process may be that trainer: no need to wait for its next poll
        return job

    async def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job; the served model is untouched. Finished jobs stay as they are."""
        job = await self.store.arequest_cancel(job_id)
        if not job.status.active:
            return job
        await self.children.stop(job_id)
        # The owner (this process or another host) records the end; wait a little for it.
        for _ in range(int((KILL_GRACE_S + 3 * self.heartbeat_s) / 0.1)):
            job = await self.store.aget(job_id)
            if not job.status.active:
                break
            await asyncio.sleep(0.1)
        return job

    async def stop(self) -> None:
        """Server shutdown: claim nothing more, stop our children; their jobs end failed."""
        if self._tending is not None:
            # Not cancelled: a claim cut off mid-way would still commit, with nobody to run the job.
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._tending), KILL_GRACE_S)
            except TimeoutError:  # a database that does not answer: a claim cut off now is
                self._tending.cancel()  # requeued by the reaper, its child never having started
                with contextlib.suppress(asyncio.CancelledError):
                    await self._tending
        for job_id in self.children.jobs():
            with contextlib.suppress(RecordsUnavailable):  # the child is stopped all the same
                await self.store.aupdate(
                    job_id,
                    self.owner,
                    error="interrupted: the server shut down",
                    cancel_requested=True,
                )
            await self.children.stop(job_id)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=KILL_GRACE_S + 5)
        if self.trains:
            with contextlib.suppress(RecordsUnavailable):
                await self.store.acheck_out(self.trainer)

    async def _tend_jobs(self) -> None:
        """Every heartbeat: reap silent trainers' jobs, and a trainer checks in. A trainer also takes
        queued jobs while it has free slots: on each poll, or at once when woken by a submit."""
        last_beat = -float("inf")
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if loop.time() - last_beat >= self.heartbeat_s:
                    last_beat = loop.time()
                    if self.trains:
                        await self.store.acheck_in(self.trainer, self.slots)
                    else:
                        await self.store.areap()  # a trainer's claims reap already
                while self.trains and not self._stopping and len(self._tasks) < self.slots:
                    job = await self.store.aclaim(self.trainer, self.owner, self.slots)
                    if job is None:
                        break
                    self._start(job)
            except RecordsUnavailable:
                pass  # logged by app.records; all of it resumes with the database
            except Exception:
                log.exception("tending training jobs failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CLAIM_POLL_S if self.trains else self.heartbeat_s)
            self._wake.clear()

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run(job), name=f"training-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        try:
            await self._run_child(job)
        except Exception as exc:  # the job must never stay "running" because of our own error
            log.exception("training job %s failed in the server", job.id)
            await self._fail(job.id, f"internal error: {type(exc).__name__}")

    async def _fail(self, job_id: str, error: str) -> None:
        """End a job of ours as failed, saying why (its child, if any, is stopped by the caller)."""
        with contextlib.suppress(RecordsUnavailable):  # else the stale window ends it
            await self.store.aupdate(
                job_id,
                self.owner,
                status=JobStatus.FAILED,
                finished_at=now_iso(),
                error=error,
            )

    async def _run_child(self, job: Job) -> None:
        if self._stopping:  # claimed as the server began to shut down: back to the queue
            with contextlib.suppress(RecordsUnavailable):  # else the reaper requeues it
                await self.store.arelease(job.id, self.owner)
            return
        procs = procs_of(job.params)
        if procs > self.max_procs:  # accepted by an api replica whose limit is not this trainer's
            limit = f"MNIST_TRAIN_MAX_PROCS {self.max_procs}"
            await self._fail(job.id, f"nproc_per_node {procs} is more than this trainer runs ({limit})")
            return
        out = self.versions.incoming_path(job.id)
        try:
            feedback = await self._freeze_feedback(job)
        except (RecordsUnavailable, OSError) as exc:
            await self._fail(job.id, f"the corrections could not be read: {getattr(exc, 'detail', exc)}")
            return
        command = self.commands.training(job.params, out, feedback)
        try:
            # The job's threads, shared by its ranks.
            async with self.children.running(job.id, command, max(1, self.threads // procs)) as child:
                beating = asyncio.create_task(self._heartbeat(job.id))
                try:
                    await self._watch(job, child, out, feedback)
                finally:
                    beating.cancel()
        finally:
            self.versions.discard(out)
            if feedback is not None:
                feedback.unlink(missing_ok=True)
            self._wake.set()  # a slot is free: claim the next queued job now

    async def _freeze_feedback(self, job: Job) -> Path | None:
        """The accepted corrections as they are now, written where the job's children read them:
        its dataset version, fixed for its training and its judging alike. None when there are none."""
        corrections = await self.feedback.aaccepted()
        if not len(corrections):
            return None
        path = self.versions.incoming / f"{job.id}-feedback.zip"
        data = await asyncio.to_thread(corrections.to_zip)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(atomic_write_bytes, path, data)
        log.info(
            "training job %s: %d accepted corrections (%s), trained on: %s",
            job.id,
            len(corrections),
            corrections.sha256[:12],
            bool(job.params.get("use_feedback")),
        )
        return path

    async def _watch(
        self, job: Job, child: asyncio.subprocess.Process, out: Path, feedback: Path | None
    ) -> None:
        """The child's progress until it exits, then how the job ended."""
        assert child.stdout is not None and child.stderr is not None
        with contextlib.suppress(RecordsUnavailable):  # the pid is for people; the job runs on
            await self.store.aupdate(job.id, self.owner, pid=child.pid)
        log.info("training job %s started (pid %d): %s", job.id, child.pid, job.params)
        stderr: deque[str] = deque(maxlen=20)
        failure: list[str] = []

        async def write(progress: dict[str, Any]) -> None:
            with contextlib.suppress(RecordsUnavailable):  # the next event carries this one's news too
                await self.store.aupdate(job.id, self.owner, progress=progress)

        await asyncio.gather(fold_events(child.stdout, {}, failure, write), last_lines(child.stderr, stderr))
        returncode = await child.wait()
        await self._finish(job, returncode, failure[-1] if failure else None, list(stderr), out, feedback)

    async def _heartbeat(self, job_id: str) -> None:
        """Keep the job ours while it runs; stop its child (training, or measuring after it) when a
        cancel is asked for, or when the job was taken from us (reaped during an outage longer than
        the stale window)."""
        while True:
            try:
                beat = await self.store.abeat(job_id, self.owner)
                if beat is Beat.LOST:
                    log.warning("training job %s is no longer ours (marked interrupted): stopping it", job_id)
                if beat is not Beat.ALIVE:
                    await self.children.stop(job_id)
            except RecordsUnavailable:
                pass  # the child trains on; beats resume with the database (logged by app.records)
            await asyncio.sleep(self.heartbeat_s)

    async def _finish(
        self,
        job: Job,
        returncode: int,
        reported: str | None,
        stderr: list[str],
        out: Path,
        feedback: Path | None,
    ) -> None:
        """Record how the job ended, retrying while the database or model store is out (the
        heartbeat keeps the job ours meanwhile). The outcome is decided once: a retry of the
        record's write never judges (or promotes) the model again. A store that stays out for
        STORE_PATIENCE_S fails the job, so it does not hold its slot for ever."""
        loop = asyncio.get_running_loop()
        give_up: float | None = None  # counted from the store's first refusal, not the database's
        end: dict[str, Any] | None = None
        while True:
            try:
                if await self.store.abeat(job.id, self.owner) is Beat.LOST:
                    log.warning("training job %s was marked interrupted before it could be recorded", job.id)
                    return
                if end is None:
                    end = await self._outcome(job, returncode, reported, stderr, out, feedback)
                if (end.get("promotion") or {}).get("promoted"):
                    await self.promoted()  # first: whoever sees the job succeed here sees its model
                await self.store.aupdate(job.id, self.owner, **end)
                log.info("training job %s ended %s", job.id, end["status"])
                return
            except RecordsUnavailable as exc:
                log.warning("training job %s ended; recording it waits: %s", job.id, exc.detail)
            except ModelStoreUnavailable as exc:
                give_up = give_up or loop.time() + STORE_PATIENCE_S
                if loop.time() > give_up:
                    returncode, reported = 1, f"the model store could not be reached: {exc.detail}"
                    continue  # recorded as failed, with this reason
                log.warning("training job %s ended; the model store waits: %s", job.id, exc.detail)
            await asyncio.sleep(self.heartbeat_s)

    async def _outcome(
        self,
        job: Job,
        returncode: int,
        reported: str | None,
        stderr: list[str],
        out: Path,
        feedback: Path | None,
    ) -> dict[str, Any]:
        """How the job ends. A failure's reason is the child's own error event; its raw stderr
        only when it crashed without one."""
        end: dict[str, Any] = {"finished_at": now_iso()}
        if stop := await self.judge.stop_asked(job):
            end.update(stop)
        elif returncode != 0:
            if reported is not None:
                error = reported
            else:
                how = (
                    f"killed by signal {-returncode}"
                    if returncode < 0
                    else f"exited with status {returncode}"
                )
                error = "\n".join([f"training process {how}", *stderr])
            end.update(status=JobStatus.FAILED, error=error)
        else:
            end.update(await self.judge(job, out, feedback))
        return end
