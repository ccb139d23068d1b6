"""Runs a training job as a child process: `python -m training ... --events -`, never in the server.

The child gets a limited thread count and the idle CPU class, so serving keeps the cores it needs.
Its JSON-lines events become the job's progress; its exit decides the outcome. A successful model
is filed as a version and promoted only if it meets `min_accuracy`.

What happens when a job succeeds, step by step:

1. `POST /train` (app/routes/train.py) validates the body (`TrainRequest`, app/schemas.py, whose
   fields are derived from `Hyperparameters` in models/hyperparameters.py) and calls
   `JobManager.submit` (here), in any process of any role but `trainer`.
2. `JobStore.create` (app/jobs/store.py) inserts a `queued` record in one write transaction if the
   active jobs leave room (live trainers' slots plus MNIST_TRAIN_QUEUE), else refuses with 409.
3. A process that trains (MNIST_ROLE all or trainer; this one is woken at once, others poll) claims
   it in `_claim_jobs` -> `JobStore.claim`: the job is now `running`, owned by that process.
4. `_run_child` starts `python -m training` (training/__main__.py -> `run` in training/loop.py) with
   one flag per hyperparameter given (`cli_flag`), `--out` in `<state>/incoming/` (app/versions.py)
   and `--events - --quiet`, and keeps the job's heartbeat while the child lives.
5. `_read_events` folds each JSON line on the child's stdout into the record's `progress`; stderr
   lines are kept only to explain a crash.
6. The child saves the checkpoint atomically (`save_checkpoint`, models/checkpoint.py) and exits 0.
7. `_finish` -> `_judge`: below `min_accuracy` the job is `rejected`; else `ModelVersions.keep`
   puts the weights in the model store (app/model_store.py) and records the version, and `activate`
   records it as the active version (app/versions.py). Retried while the database or store is out.
8. The record ends `succeeded` with the new `model_version` and its `test_accuracy`; `promoted`
   (`ModelFollower.check`, app/follower.py) swaps it in here at once, and the followers of every
   other process and replica do the same within MNIST_MODEL_POLL_S (`BatchingEngine.swap`).
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from app.db import now_iso
from app.errors import ModelObjectCorrupt, ModelStoreUnavailable, RecordsUnavailable
from app.jobs.store import Beat, Job, JobStatus, JobStore
from app.versions import ModelVersions
from models.checkpoint import CheckpointError, read_metadata
from models.events import TrainingEvent
from models.hyperparameters import cli_flag, hyperparameter_fields

log = logging.getLogger("app.jobs")
# The server's secrets: the training child needs none of them (it reads data, writes a file).
CHILD_WITHHELD = frozenset(
    {
        "MNIST_TRAIN_TOKEN",
        "MNIST_DATABASE_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
)
# Where the server itself runs as a rank of some launch (a PyTorchJob pod, say), its job's child
# must not think it is one: it launches its own ranks, or trains alone.
LAUNCH_VARIABLES = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_NAME",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)
# How long a finished job's model waits for an unreachable model store before the job fails.
STORE_PATIENCE_S = 300.0


def training_command(params: dict[str, Any], out: Path, device: str, data_dir: Path | None) -> list[str]:
    """`python -m training` for a job: its hyperparameters as flags, and with nproc_per_node > 1
    the launch flag (the child then launches that many ranks, in the same process tree)."""
    command = [
        sys.executable,
        "-m",
        "training",
        "--events",
        "-",
        "--quiet",
        "--out",
        str(out),
        "--device",
        device,
    ]
    for spec in hyperparameter_fields():
        if params.get(spec.name) is not None:
            command += [cli_flag(spec.name), str(params[spec.name])]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if procs_of(params) > 1:
        command += ["--nproc-per-node", str(procs_of(params))]
    return command


def procs_of(params: dict[str, Any]) -> int:
    return int(params.get("nproc_per_node") or 1)


def lower_priority(pid: int) -> None:
    """Idle CPU class where the OS has one (threads the child starts later inherit it), else nice 19."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


class JobManager:
    """Accepts jobs, and where this process trains (MNIST_ROLE all or trainer), claims queued jobs
    and starts, watches and stops their children."""

    def __init__(
        self,
        store: JobStore,
        versions: ModelVersions,
        promoted: Callable[[], Awaitable[None]],
        *,
        trains: bool = True,
        trainer: str = "",
        slots: int = 1,
        queue: int = 0,
        device: str = "cpu",
        threads: int = 1,
        max_procs: int = 1,
        data_dir: Path | None = None,
        heartbeat_s: float = 2.0,
        kill_grace_s: float = 5.0,
        claim_poll_s: float = 0.5,
    ) -> None:
        self.store, self.versions, self.promoted = store, versions, promoted
        self.records = store.database.run
        self.trains, self.trainer, self.slots, self.queue = (
            trains,
            trainer or socket.gethostname(),
            slots,
            queue,
        )
        self.device, self.threads, self.max_procs, self.data_dir = device, threads, max_procs, data_dir
        self.heartbeat_s, self.kill_grace_s, self.claim_poll_s = heartbeat_s, kill_grace_s, claim_poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tending: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """A trainer checks in (so jobs are accepted for it) and starts claiming queued jobs; every
        process keeps reaping jobs whose trainer went silent, so readers see them end."""
        if self.trains:
            with contextlib.suppress(RecordsUnavailable):  # it checks in again on every beat
                await self.records(self.store.check_in, self.trainer, self.slots)
        self._tending = asyncio.create_task(self._tend_jobs(), name="job-tender")

    async def submit(self, params: dict[str, Any]) -> Job:
        """Record a queued job (or JobConflict / NoTrainer); a trainer with a free slot claims it."""
        job = await self.records(self.store.create, params, self.queue)
        self._wake.set()  # this process may be that trainer: no need to wait for its next poll
        return job

    async def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job; the served model is untouched. Finished jobs stay as they are."""
        job = await self.records(self.store.request_cancel, job_id)
        if not job.status.active:
            return job
        child = self._children.get(job_id)
        if child is not None:
            await self._terminate(child)
        # The owner (this process or another host) records the end; wait a little for it.
        for _ in range(int((self.kill_grace_s + 3 * self.heartbeat_s) / 0.1)):
            job = await self.records(self.store.get, job_id)
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
                await asyncio.wait_for(asyncio.shield(self._tending), self.kill_grace_s)
            except TimeoutError:  # a database that does not answer: a claim cut off now is
                self._tending.cancel()  # requeued by the reaper, its child never having started
                with contextlib.suppress(asyncio.CancelledError):
                    await self._tending
        for job_id, child in list(self._children.items()):
            with contextlib.suppress(RecordsUnavailable):  # the child is stopped all the same
                await self.records(
                    self.store.update,
                    job_id,
                    self.owner,
                    error="interrupted: the server shut down",
                    cancel_requested=True,
                )
            await self._terminate(child)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.kill_grace_s + 5)
        if self.trains:
            with contextlib.suppress(RecordsUnavailable):
                await self.records(self.store.check_out, self.trainer)

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
                        await self.records(self.store.check_in, self.trainer, self.slots)
                    else:
                        await self.records(self.store.reap)  # a trainer's claims reap already
                while self.trains and not self._stopping and len(self._tasks) < self.slots:
                    job = await self.records(self.store.claim, self.trainer, self.owner, self.slots)
                    if job is None:
                        break
                    self._start(job)
            except RecordsUnavailable:
                pass  # logged by app.db; all of it resumes with the database
            except Exception:
                log.exception("tending training jobs failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), self.claim_poll_s if self.trains else self.heartbeat_s
                )
            self._wake.clear()

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run(job), name=f"training-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _terminate(self, child: asyncio.subprocess.Process) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        if child.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.wait(), self.kill_grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()

    async def _run(self, job: Job) -> None:
        try:
            await self._run_child(job)
        except Exception as exc:  # the job must never stay "running" because of our own error
            log.exception("training job %s failed in the server", job.id)
            await self._fail(job.id, f"internal error: {type(exc).__name__}")

    async def _fail(self, job_id: str, error: str) -> None:
        """End a job of ours as failed, saying why (its child, if any, is stopped by the caller)."""
        with contextlib.suppress(RecordsUnavailable):  # else the stale window ends it
            await self.records(
                self.store.update,
                job_id,
                self.owner,
                status=JobStatus.FAILED,
                finished_at=now_iso(),
                error=error,
            )

    async def _run_child(self, job: Job) -> None:
        if self._stopping:  # claimed as the server began to shut down: back to the queue
            with contextlib.suppress(RecordsUnavailable):  # else the reaper requeues it
                await self.records(self.store.release, job.id, self.owner)
            return
        procs = procs_of(job.params)
        if procs > self.max_procs:  # accepted by an api replica whose limit is not this trainer's
            limit = f"MNIST_TRAIN_MAX_PROCS {self.max_procs}"
            await self._fail(job.id, f"nproc_per_node {procs} is more than this trainer runs ({limit})")
            return
        out = self.versions.incoming_path(job.id)
        threads = str(max(1, self.threads // procs))  # the job's threads, shared by its ranks
        env = {
            **{
                name: value
                for name, value in os.environ.items()
                if name not in CHILD_WITHHELD | LAUNCH_VARIABLES and not name.startswith("TORCHELASTIC_")
            },
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
        }
        child = await asyncio.create_subprocess_exec(
            *training_command(job.params, out, self.device, self.data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        lower_priority(child.pid)
        self._children[job.id] = child
        stderr: deque[str] = deque(maxlen=20)
        failure: list[str] = []
        progress: dict[str, Any] = {}
        beating = asyncio.create_task(self._heartbeat(job.id, child))
        try:
            with contextlib.suppress(RecordsUnavailable):  # the pid is for people; the job runs on
                await self.records(self.store.update, job.id, self.owner, pid=child.pid)
            log.info("training job %s started (pid %d): %s", job.id, child.pid, job.params)
            await asyncio.gather(
                self._read_events(job.id, child, progress, failure), self._read_stderr(child, stderr)
            )
            returncode = await child.wait()
            await self._finish(job, returncode, failure[-1] if failure else None, list(stderr), out)
        finally:
            beating.cancel()
            self._children.pop(job.id, None)
            await self._terminate(child)  # an error of ours above must not leave it training alone
            self.versions.discard(out)
            self._wake.set()  # a slot is free: claim the next queued job now

    async def _heartbeat(self, job_id: str, child: asyncio.subprocess.Process) -> None:
        """Keep the job ours while it runs; stop the child when a cancel is asked for, or when the
        job was taken from us (reaped during an outage longer than the stale window)."""
        while True:
            try:
                beat = await self.records(self.store.beat, job_id, self.owner)
                if beat is Beat.LOST:
                    log.warning("training job %s is no longer ours (marked interrupted): stopping it", job_id)
                if beat is not Beat.ALIVE:
                    await self._terminate(child)
            except RecordsUnavailable:
                pass  # the child trains on; beats resume with the database (logged by app.db)
            await asyncio.sleep(self.heartbeat_s)

    async def _read_events(
        self, job_id: str, child: asyncio.subprocess.Process, progress: dict[str, Any], failure: list[str]
    ) -> None:
        """The child's JSON-lines events (models/events.py), folded into the job's stored progress as
        they come; an `error` event's message goes to `failure`."""
        assert child.stdout is not None
        async for line in child.stdout:
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if not isinstance(parsed, dict) or "event" not in parsed:
                continue
            event = cast(TrainingEvent, parsed)
            if event["event"] == "error":
                failure.append(str(event.get("message", "the training process reported an error")))
                continue
            if event["event"] == "progress":
                progress.update(
                    epoch=event["epoch"],
                    epochs=event["epochs"],
                    fraction=round(event["fraction"], 4),
                    loss=event["loss"],
                )
            elif event["event"] == "epoch":
                progress.update(
                    epoch=event["epoch"],
                    epochs=event["epochs"],
                    test_loss=event["test_loss"],
                    test_accuracy=event["test_accuracy"],
                )
                progress.setdefault("history", []).append(
                    {
                        "epoch": event["epoch"],
                        "test_loss": event["test_loss"],
                        "test_accuracy": event["test_accuracy"],
                    }
                )
            else:  # start and saved: the outcome is judged from the checkpoint file itself
                continue
            with contextlib.suppress(RecordsUnavailable):  # the next event carries this one's news too
                await self.records(self.store.update, job_id, self.owner, progress=progress)

    async def _read_stderr(self, child: asyncio.subprocess.Process, lines: deque[str]) -> None:
        """The child's last stderr lines (it prints no text with --quiet): what explains a crash."""
        assert child.stderr is not None
        async for line in child.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                lines.append(text)

    async def _finish(
        self, job: Job, returncode: int, reported: str | None, stderr: list[str], out: Path
    ) -> None:
        """Record how the job ended, retrying while the database or model store is out (the
        heartbeat keeps the job ours meanwhile). A store that stays out for STORE_PATIENCE_S
        fails the job, so it does not hold its slot for ever."""
        loop = asyncio.get_running_loop()
        give_up: float | None = None  # counted from the store's first refusal, not the database's
        while True:
            try:
                await self._record_end(job, returncode, reported, stderr, out)
                return
            except RecordsUnavailable as exc:
                log.warning("training job %s ended; recording it waits: %s", job.id, exc.detail)
            except ModelStoreUnavailable as exc:
                give_up = give_up or loop.time() + STORE_PATIENCE_S
                if loop.time() > give_up:
                    returncode, reported = 1, f"the model could not be stored: {exc.detail}"
                    continue  # recorded as failed, with this reason
                log.warning("training job %s ended; storing its model waits: %s", job.id, exc.detail)
            await asyncio.sleep(self.heartbeat_s)

    async def _record_end(
        self, job: Job, returncode: int, reported: str | None, stderr: list[str], out: Path
    ) -> None:
        """A failure's reason is the child's own error event; its raw stderr only when it crashed
        without one."""
        if await self.records(self.store.beat, job.id, self.owner) is Beat.LOST:
            log.warning("training job %s was marked interrupted before it could be recorded", job.id)
            return
        current = await self.records(self.store.get, job.id)
        end: dict[str, Any] = {"finished_at": now_iso()}
        if current.cancel_requested:
            end.update(status=JobStatus.CANCELLED if current.error is None else JobStatus.FAILED)
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
            end.update(await self._judge(job, out))
        await self.records(self.store.update, job.id, self.owner, **end)
        log.info("training job %s ended %s", job.id, end["status"])
        if end["status"] is JobStatus.SUCCEEDED:
            await self.promoted()

    async def _judge(self, job: Job, out: Path) -> dict[str, Any]:
        """Promote the new model, or reject it when it misses min_accuracy."""
        metadata = read_metadata(out) or {}
        accuracy = metadata.get("test_accuracy")
        minimum = job.params.get("min_accuracy")
        if minimum is not None and (accuracy is None or accuracy < minimum):
            return {
                "status": JobStatus.REJECTED,
                "test_accuracy": accuracy,
                "error": f"test accuracy {accuracy}% is below min_accuracy {minimum}%: not promoted",
            }
        try:
            version = await self.versions.run(self.versions.keep, out)
            await self.versions.run(self.versions.activate, version, f"training job {job.id}")
        except CheckpointError as exc:
            return {"status": JobStatus.FAILED, "error": f"the new checkpoint did not load: {exc}"}
        except ModelObjectCorrupt as exc:  # what the store gave back is not what was put there
            return {"status": JobStatus.FAILED, "error": f"the new model could not be stored: {exc.detail}"}
        except OSError as exc:  # the state disk is full, or its folder was deleted
            return {
                "status": JobStatus.FAILED,
                "error": f"the new model could not be stored: {exc.strerror or exc}",
            }
        return {"status": JobStatus.SUCCEEDED, "model_version": version, "test_accuracy": accuracy}
