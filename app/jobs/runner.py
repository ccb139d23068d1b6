"""Runs a training job as a child process: `python -m training ... --events -`, never in the server.

The child gets a limited thread count and the idle CPU class, so serving keeps the cores it needs.
Its JSON-lines events become the job's progress; its exit decides the outcome. A successful model
is kept as a version and promoted only if the job's rule says so (champion and challenger).

What happens when a job succeeds, step by step:

1. `POST /train` (app/routes/train.py) validates the body (`TrainRequest`, app/schemas.py, whose
   fields are derived from `Hyperparameters` in models/hyperparameters.py) and calls
   `JobManager.submit` (here), in any process of any role but `trainer`.
2. `JobStore.create` (app/jobs/store.py) inserts a `queued` record in one write transaction if the
   active jobs leave room (live trainers' slots plus MNIST_TRAIN_QUEUE), else refuses with 409.
3. A process that trains (MNIST_ROLE all or trainer; this one is woken at once, others poll) claims
   it in `_claim_jobs` -> `JobStore.claim`: the job is now `running`, owned by that process.
4. `_run_child` starts `python -m training` (training/__main__.py -> `run` in training/loop.py) with
   one flag per hyperparameter given (`cli_flag`), `--out` in `<state>/incoming/` (app/records/versions.py)
   and `--events - --quiet`, and keeps the job's heartbeat while the child lives.
5. `_read_events` folds each JSON line on the child's stdout into the record's `progress`; stderr
   lines are kept only to explain a crash.
6. The child saves the checkpoint atomically (`save_checkpoint`, models/checkpoint.py) and exits 0.
7. `_finish` -> `_judge`: `ModelVersions.keep` puts the weights in the model store
   and records the version, whatever comes next. The rule (app/jobs/promotion.py) then compares it
   with the active version on the same test data (the active one measured first by a child,
   `python -m training.evaluate`, when its record has no figures on that data): below
   `min_accuracy`, or worse under `promote: if_better`, the job ends `rejected` saying by how much;
   else `ModelVersions.promote` makes it active, unless another version was activated meanwhile
   (then it is judged again against that one). Retried while the database or store is out.
8. The record ends `succeeded` with the new `model_version`, its `test_accuracy` and how it was
   judged (`promotion`); `promoted` (`ModelFollower.check`, app/records/follower.py) swaps it in here at
   once, and the followers of every other process and replica do the same within
   MNIST_MODEL_POLL_S (`BatchingEngine.swap`).
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
from typing import Any, Literal, cast

from app.errors import ModelObjectCorrupt, ModelStoreUnavailable, RecordsUnavailable
from app.jobs.promotion import CannotCompare, Outcome, PromoteRule, Standing, Verdict, difference, judge
from app.jobs.store import Beat, Job, JobStatus, JobStore
from app.records.database import now_iso
from app.records.versions import ModelVersions
from models.checkpoint import CheckpointError
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
# Batches between a job's progress events: enough points for the page's live training curve.
JOB_LOG_INTERVAL = 10
# A job's record takes training progress at most this often, and keeps this many curve points.
PROGRESS_WRITE_S = 0.5
MAX_CURVE_POINTS = 200


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
        "--log-interval",
        str(JOB_LOG_INTERVAL),
    ]
    for spec in hyperparameter_fields():
        if params.get(spec.name) is not None:
            command += [cli_flag(spec.name), str(params[spec.name])]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if procs_of(params) > 1:
        command += ["--nproc-per-node", str(procs_of(params))]
    return command


class LossCurve:
    """At most MAX_CURVE_POINTS (fraction of the run, training loss) points, evenly spread over a
    run of any length: every `stride`-th report is kept; past the limit every other point goes
    and the stride doubles."""

    def __init__(self, points: list[list[float]]) -> None:
        self.points, self.stride, self.seen = points, 1, 0

    def add(self, fraction: float, loss: float) -> None:
        if self.seen % self.stride == 0:
            self.points.append([round(fraction, 4), round(loss, 5)])
            if len(self.points) > MAX_CURVE_POINTS:
                del self.points[1::2]
                self.stride *= 2
        self.seen += 1


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
        priority: Literal["idle", "normal"] = "idle",
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
        self.priority = priority
        self.heartbeat_s, self.kill_grace_s, self.claim_poll_s = heartbeat_s, kill_grace_s, claim_poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tending: asyncio.Task[None] | None = None

    def _give_way(self, pid: int) -> None:
        """A job's process leaves the CPU to serving (MNIST_TRAIN_PRIORITY=idle, the default)."""
        if self.priority == "idle":
            lower_priority(pid)

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
                pass  # logged by app.records.database; all of it resumes with the database
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
        env = self._child_env(max(1, self.threads // procs))  # the job's threads, shared by its ranks
        child = await asyncio.create_subprocess_exec(
            *training_command(job.params, out, self.device, self.data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._give_way(child.pid)
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

    def _child_env(self, threads: int) -> dict[str, str]:
        """The server's environment for a child, minus its secrets and any launch of its own."""
        return {
            **{
                name: value
                for name, value in os.environ.items()
                if name not in CHILD_WITHHELD | LAUNCH_VARIABLES and not name.startswith("TORCHELASTIC_")
            },
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
        }

    async def _heartbeat(self, job_id: str, child: asyncio.subprocess.Process) -> None:
        """Keep the job ours while it runs; stop the child when a cancel is asked for, or when the
        job was taken from us (reaped during an outage longer than the stale window)."""
        while True:
            try:
                beat = await self.records(self.store.beat, job_id, self.owner)
                if beat is Beat.LOST:
                    log.warning("training job %s is no longer ours (marked interrupted): stopping it", job_id)
                if beat is not Beat.ALIVE:  # the training child, or the measuring one after it
                    await self._terminate(self._children.get(job_id, child))
            except RecordsUnavailable:
                pass  # the child trains on; beats resume with the database (logged by app.records.database)
            await asyncio.sleep(self.heartbeat_s)

    async def _read_events(
        self, job_id: str, child: asyncio.subprocess.Process, progress: dict[str, Any], failure: list[str]
    ) -> None:
        """The child's JSON-lines events (models/events.py), folded into the job's stored progress:
        each epoch's figures at once, training progress at most every PROGRESS_WRITE_S (a GPU
        reports hundreds of times a second). An `error` event's message goes to `failure`."""
        assert child.stdout is not None
        loop = asyncio.get_running_loop()
        written, pending = -float("inf"), False
        curve = LossCurve(progress.setdefault("losses", []))
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
                curve.add(event["fraction"], event["loss"])
                if loop.time() - written < PROGRESS_WRITE_S:
                    pending = True
                    continue
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
            written, pending = loop.time(), False
            with contextlib.suppress(RecordsUnavailable):  # the next event carries this one's news too
                await self.records(self.store.update, job_id, self.owner, progress=progress)
        if pending:
            with contextlib.suppress(RecordsUnavailable):
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
        heartbeat keeps the job ours meanwhile). The outcome is decided once: a retry of the
        record's write never judges (or promotes) the model again. A store that stays out for
        STORE_PATIENCE_S fails the job, so it does not hold its slot for ever."""
        loop = asyncio.get_running_loop()
        give_up: float | None = None  # counted from the store's first refusal, not the database's
        end: dict[str, Any] | None = None
        while True:
            try:
                if await self.records(self.store.beat, job.id, self.owner) is Beat.LOST:
                    log.warning("training job %s was marked interrupted before it could be recorded", job.id)
                    return
                if end is None:
                    end = await self._outcome(job, returncode, reported, stderr, out)
                if (end.get("promotion") or {}).get("promoted"):
                    await self.promoted()  # first: whoever sees the job succeed here sees its model
                await self.records(self.store.update, job.id, self.owner, **end)
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
        self, job: Job, returncode: int, reported: str | None, stderr: list[str], out: Path
    ) -> dict[str, Any]:
        """How the job ends. A failure's reason is the child's own error event; its raw stderr
        only when it crashed without one."""
        end: dict[str, Any] = {"finished_at": now_iso()}
        current = await self.records(self.store.get, job.id)
        if current.cancel_requested:
            end.update(stopped(current))
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
        return end

    async def _judge(self, job: Job, out: Path) -> dict[str, Any]:
        """Keep the new model as a version, then promote it as the job's `promote` rule says
        (app/jobs/promotion.py): `rejected` says why not, and by how much it fell short."""
        try:
            version = await self.versions.run(self.versions.keep, out)
        except CheckpointError as exc:
            return {"status": JobStatus.FAILED, "error": f"the new checkpoint did not load: {exc}"}
        except ModelObjectCorrupt as exc:  # what the store gave back is not what was put there
            return not_stored(exc.detail)
        except OSError as exc:  # the state disk is full, or its folder was deleted
            return not_stored(exc.strerror or str(exc))
        challenger = Standing.of(await self.records(self.versions.metadata_of, version))
        rule = PromoteRule(job.params.get("promote", PromoteRule.IF_BETTER))
        kept = {"model_version": version, "test_accuracy": challenger.test_accuracy}
        minimum = job.params.get("min_accuracy")
        while True:  # judged again if another model was activated meanwhile
            active = await self.records(self.versions.active_metadata)
            champion = None if active is None else Standing.of(active)
            # Measured only where it decides: a rule that looks at the active model, a challenger
            # that passed min_accuracy, an active model with no figures on the same data.
            needs_measuring = judge(rule, minimum, challenger, None).outcome is Outcome.PROMOTE
            if active is not None and champion is not None and not challenger.comparable_with(champion):
                if rule is not PromoteRule.IF_BETTER or not needs_measuring:
                    champion = None  # not comparable, and not needed
                else:
                    if stop := await self._stop_asked(job):
                        return {**kept, **stop}
                    try:  # like with like: the active model measured on this job's test data
                        champion = await self._measure(job, active, challenger)
                    except CannotCompare as exc:
                        if stop := await self._stop_asked(job):  # its measuring was stopped
                            return {**kept, **stop}
                        verdict = Verdict(Outcome.REJECT, str(exc))
                        break
            verdict = judge(rule, minimum, challenger, champion)
            if verdict.outcome is not Outcome.PROMOTE:
                break
            if stop := await self._stop_asked(job):  # a cancel during judging: nothing is promoted
                return {**kept, **stop}
            by = f"training job {job.id}"
            try:
                if rule is PromoteRule.ALWAYS:
                    await self.versions.run(self.versions.activate, version, by)
                    break
                replacing = champion.version if champion else None
                if await self.versions.run(self.versions.promote, version, by, replacing):
                    break
            except ModelObjectCorrupt as exc:
                return not_stored(exc.detail)
        end: dict[str, Any] = {
            **kept,
            "error": None,
            "status": JobStatus.REJECTED if verdict.outcome is Outcome.REJECT else JobStatus.SUCCEEDED,
            "promotion": {
                "rule": rule.value,
                "promoted": verdict.outcome is Outcome.PROMOTE,
                "reason": verdict.reason,
                "challenger": challenger.public(),
                "champion": champion.public() if champion else None,
                "difference": difference(challenger, champion),
            },
        }
        if verdict.outcome is Outcome.REJECT:
            end["error"] = (
                f"{verdict.reason}: not promoted. Kept as version {version}; "
                f"POST /model/versions/{version}/activate serves it anyway"
            )
        return end

    async def _stop_asked(self, job: Job) -> dict[str, Any] | None:
        """How the job ends if a cancel was asked for meanwhile (a shutdown asks too), else None."""
        current = await self.records(self.store.get, job.id)
        return stopped(current) if current.cancel_requested else None

    async def _measure(self, job: Job, active: dict[str, Any], challenger: Standing) -> Standing:
        """The active model's figures on this trainer's test data, measured by a child process
        (training/evaluate.py) like a training job's, and added to its version's record."""
        version = str(active["version"])
        try:  # a store that is out is waited for (ModelStoreUnavailable goes up to _finish)
            weights = await self.versions.run(self.versions.local_copy, active)
        except ModelObjectCorrupt as exc:
            raise CannotCompare(f"the active model {version} cannot be measured: {exc.detail}") from None
        command = [sys.executable, "-m", "training.evaluate", str(weights), "--device", self.device]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        child = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._child_env(self.threads),
        )
        self._give_way(child.pid)
        training = self._children.get(job.id)
        self._children[job.id] = child  # a cancel or a shutdown stops it like the training child
        try:
            stdout, stderr = await child.communicate()
        finally:
            if training is not None:
                self._children[job.id] = training
            else:
                self._children.pop(job.id, None)
        lines = stderr.decode(errors="replace").strip().splitlines()
        try:
            figures = json.loads(stdout) if child.returncode == 0 else None
        except ValueError:
            figures = None
        if not isinstance(figures, dict) or figures.get("version") != version:
            why = lines[-1] if lines else f"exit status {child.returncode}"
            raise CannotCompare(f"the active model {version} could not be measured on the test set: {why}")
        log.info("measured the active model %s on the test set: %s%%", version, figures["test_accuracy"])
        by = f"measured to compare with training job {job.id}"
        measured = Standing.of(await self.records(self.versions.record_evaluation, version, figures, by))
        if not challenger.comparable_with(measured):
            raise CannotCompare(f"the new model's test data is not this trainer's: {challenger.test_sha256}")
        return measured


def not_stored(why: str) -> dict[str, Any]:
    return {"status": JobStatus.FAILED, "error": f"the new model could not be stored: {why}"}


def stopped(job: Job) -> dict[str, Any]:
    """How a job ends that was asked to stop: cancelled, or failed where a shutdown said why."""
    return {"status": JobStatus.CANCELLED if job.error is None else JobStatus.FAILED}
