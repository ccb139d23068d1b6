"""A job's child processes: the one way to start, register and stop one, for training and for
measuring the active model alike. Children get the server's environment minus its secrets, a
limited thread count and, by default, the idle CPU class, so serving keeps the cores it needs.
"""

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from models.hyperparameters import cli_flag, hyperparameter_fields

# The server's secrets: a child needs none of them (it reads data, writes a file).
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
# Batches between a job's progress events: enough points for the page's live training curve.
JOB_LOG_INTERVAL = 10


def procs_of(params: dict[str, Any]) -> int:
    return int(params.get("nproc_per_node") or 1)


@dataclass(frozen=True)
class Commands:
    """The programs a job runs: `training(params, out, feedback)` writes a checkpoint to `out` and
    reports JSON-lines events on stdout; `evaluation(weights, feedback)` prints a checkpoint's figures
    on the test set as one JSON object. `feedback`: the corrections export the job froze, if any."""

    training: Callable[[dict[str, Any], Path, Path | None], list[str]]
    evaluation: Callable[[Path, Path | None], list[str]]

    @classmethod
    def of_python(cls, device: str, data_dir: Path | None) -> "Commands":
        """`python -m training` and `python -m training.evaluate`, on `device` and `data_dir`."""
        data = ["--data-dir", str(data_dir)] if data_dir is not None else []

        def training(params: dict[str, Any], out: Path, feedback: Path | None) -> list[str]:
            """A job's hyperparameters as flags; with nproc_per_node > 1 the launch flag too (the
            child then launches that many ranks, in the same process tree)."""
            command = [sys.executable, "-m", "training", "--events", "-", "--quiet", "--out", str(out)]
            command += ["--device", device, "--log-interval", str(JOB_LOG_INTERVAL), *data]
            if feedback is not None:
                command += ["--feedback", str(feedback)] + (
                    ["--use-feedback"] if params.get("use_feedback") else []
                )
            for spec in hyperparameter_fields():
                if params.get(spec.name) is not None:
                    command += [cli_flag(spec.name), str(params[spec.name])]
            if procs_of(params) > 1:
                command += ["--nproc-per-node", str(procs_of(params))]
            return command

        def evaluation(weights: Path, feedback: Path | None) -> list[str]:
            command = [sys.executable, "-m", "training.evaluate", str(weights), "--device", device, *data]
            return command + (["--feedback", str(feedback)] if feedback is not None else [])

        return cls(training, evaluation)


def lower_priority(pid: int) -> None:
    """Idle CPU class where the OS has one (threads the child starts later inherit it), else nice 19."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def child_env(threads: int) -> dict[str, str]:
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


class Children:
    """The live child processes of each job of this process, so that a cancel, a lost job or a
    shutdown stops whichever one the job is running now."""

    def __init__(self, priority: Literal["idle", "normal"], kill_grace_s: float) -> None:
        self.priority, self.kill_grace_s = priority, kill_grace_s
        self._of_job: dict[str, list[asyncio.subprocess.Process]] = {}

    def jobs(self) -> list[str]:
        """The jobs that have a child running here."""
        return list(self._of_job)

    @asynccontextmanager
    async def running(
        self, job_id: str, command: list[str], threads: int
    ) -> AsyncIterator[asyncio.subprocess.Process]:
        """A child of `job_id` with piped stdout and stderr, stopped on the way out (an error of
        ours must never leave it running alone)."""
        child = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(threads),
        )
        if self.priority == "idle":
            lower_priority(child.pid)
        self._of_job.setdefault(job_id, []).append(child)
        try:
            yield child
        finally:
            try:
                await self.terminate(child)
            finally:  # unregistered even when stopping it is cut short
                remaining = [other for other in self._of_job.get(job_id, []) if other is not child]
                if remaining:
                    self._of_job[job_id] = remaining
                else:
                    self._of_job.pop(job_id, None)

    async def stop(self, job_id: str) -> None:
        """Stop every child of `job_id` (none: nothing to do)."""
        for child in list(self._of_job.get(job_id, [])):
            await self.terminate(child)

    async def terminate(self, child: asyncio.subprocess.Process) -> None:
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
