"""Runs a training job as a child process: `python -m training ... --events -`, never in the server.

The child gets a limited thread count and the idle CPU class, so serving keeps the cores it needs.
Its JSON-lines events become the job's progress; its exit decides the outcome. A successful model
is filed as a version and promoted only if it meets `min_accuracy`.

What happens when a job succeeds, step by step:

1. `POST /train` (app/routes/train.py) validates the body (`TrainRequest`, app/schemas.py, whose
   fields are derived from `Hyperparameters` in models/hyperparameters.py) and calls
   `JobManager.submit` (here).
2. `JobStore.create` (app/jobs/store.py) inserts a `queued` record in one write transaction, or
   refuses with 409 while another job is queued or running, in any process sharing the store.
3. `_run_child` starts `python -m training` (training/__main__.py -> `run` in training/loop.py) with
   one flag per hyperparameter given (`cli_flag`), `--out` in `<state>/incoming/` (app/versions.py)
   and `--events - --quiet`, marks the job `running` and keeps its heartbeat while the child lives.
4. `_read_events` folds each JSON line on the child's stdout into the record's `progress`; stderr
   lines are kept only to explain a crash.
5. The child saves the checkpoint atomically (`save_checkpoint`, models/checkpoint.py) and exits 0.
6. `_finish` -> `_judge`: below `min_accuracy` the file is discarded and the job `rejected`; else
   `ModelVersions.keep` files it as `<state>/models/<version>.pt` and records it, and `activate`
   records it as the active version and copies it atomically onto MNIST_MODEL_PATH (app/versions.py).
7. `promoted` is `ModelWatcher.check` (app/watcher.py): it loads the new file off the event loop
   and `BatchingEngine.swap` (app/batching.py) serves it from the next batch; the watchers of
   other processes and replicas do the same within MNIST_MODEL_POLL_S.
8. The record ends `succeeded` with the new `model_version` and its `test_accuracy`.
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
from app.errors import RecordsUnavailable
from app.jobs.store import Job, JobStatus, JobStore
from app.versions import ModelVersions
from models.checkpoint import CheckpointError, read_metadata
from models.events import TrainingEvent
from models.hyperparameters import cli_flag, hyperparameter_fields

log = logging.getLogger("app.jobs")


def training_command(params: dict[str, Any], out: Path, device: str, data_dir: Path | None) -> list[str]:
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
    return command


def lower_priority(pid: int) -> None:
    """Idle CPU class where the OS has one (threads the child starts later inherit it), else nice 19."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


class JobManager:
    """Starts, watches and stops the training jobs this server process owns."""

    def __init__(
        self,
        store: JobStore,
        versions: ModelVersions,
        promoted: Callable[[], Awaitable[None]],
        *,
        device: str = "cpu",
        threads: int = 1,
        data_dir: Path | None = None,
        heartbeat_s: float = 2.0,
        kill_grace_s: float = 5.0,
    ) -> None:
        self.store, self.versions, self.promoted = store, versions, promoted
        self.device, self.threads, self.data_dir = device, threads, data_dir
        self.heartbeat_s, self.kill_grace_s = heartbeat_s, kill_grace_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, params: dict[str, Any]) -> Job:
        """Record a queued job (or JobConflict) and start it in the background."""
        job = await asyncio.to_thread(self.store.create, params, self.owner)
        task = asyncio.create_task(self._run(job), name=f"training-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job; the served model is untouched. Finished jobs stay as they are."""
        job = await asyncio.to_thread(self.store.request_cancel, job_id)
        if not job.status.active:
            return job
        child = self._children.get(job_id)
        if child is not None:
            await self._terminate(child)
        # The owner (this process or another) records the end; wait a little for it.
        for _ in range(int((self.kill_grace_s + 3 * self.heartbeat_s) / 0.1)):
            job = await asyncio.to_thread(self.store.get, job_id)
            if not job.status.active:
                break
            await asyncio.sleep(0.1)
        return job

    async def stop(self) -> None:
        """Server shutdown: stop our children; their jobs end failed, since nobody will finish them."""
        for job_id, child in list(self._children.items()):
            with contextlib.suppress(RecordsUnavailable):  # the child is stopped all the same
                await asyncio.to_thread(
                    self.store.update, job_id, error="interrupted: the server shut down", cancel_requested=1
                )
            await self._terminate(child)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.kill_grace_s + 5)

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
            await asyncio.to_thread(
                self.store.update,
                job.id,
                status=JobStatus.FAILED,
                finished_at=now_iso(),
                error=f"internal error: {type(exc).__name__}",
            )

    async def _run_child(self, job: Job) -> None:
        out = self.versions.incoming_path(job.id)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
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
            await asyncio.to_thread(
                self.store.update, job.id, status=JobStatus.RUNNING, started_at=now_iso(), pid=child.pid
            )
            log.info("training job %s started (pid %d): %s", job.id, child.pid, job.params)
            await asyncio.gather(
                self._read_events(job.id, child, progress, failure), self._read_stderr(child, stderr)
            )
            returncode = await child.wait()
        finally:
            beating.cancel()
            self._children.pop(job.id, None)
            await self._terminate(child)  # an error of ours above must not leave it training alone
        await self._finish(job, returncode, failure[-1] if failure else None, list(stderr), out)

    async def _heartbeat(self, job_id: str, child: asyncio.subprocess.Process) -> None:
        while child.returncode is None:
            try:
                if await asyncio.to_thread(self.store.beat, job_id):
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
                await asyncio.to_thread(self.store.update, job_id, progress=progress)

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
        """Record how the job ended. A failure's reason is the child's own error event; its raw
        stderr only when it crashed without one."""
        current = await asyncio.to_thread(self.store.get, job.id)
        end: dict[str, Any] = {"finished_at": now_iso()}
        if current.cancel_requested:
            self.versions.discard(out)
            end.update(status=JobStatus.CANCELLED if current.error is None else JobStatus.FAILED)
        elif returncode != 0:
            self.versions.discard(out)
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
        await asyncio.to_thread(self.store.update, job.id, **end)
        log.info("training job %s ended %s", job.id, end["status"])

    async def _judge(self, job: Job, out: Path) -> dict[str, Any]:
        """Promote the new model, or reject it when it misses min_accuracy."""
        metadata = read_metadata(out) or {}
        accuracy = metadata.get("test_accuracy")
        minimum = job.params.get("min_accuracy")
        if minimum is not None and (accuracy is None or accuracy < minimum):
            self.versions.discard(out)
            return {
                "status": JobStatus.REJECTED,
                "test_accuracy": accuracy,
                "error": f"test accuracy {accuracy}% is below min_accuracy {minimum}%: not promoted",
            }
        try:
            version = await asyncio.to_thread(self.versions.keep, out)
            await asyncio.to_thread(self.versions.activate, version, f"training job {job.id}")
        except CheckpointError as exc:
            return {"status": JobStatus.FAILED, "error": f"the new checkpoint did not load: {exc}"}
        await self.promoted()
        return {"status": JobStatus.SUCCEEDED, "model_version": version, "test_accuracy": accuracy}
