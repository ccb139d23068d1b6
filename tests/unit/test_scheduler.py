"""The job scheduler's branches with real child processes of a tiny stand-in for `python -m
training` and `python -m training.evaluate`: exit codes and signals, a model judged and promoted, a
cancel while the active model is measured, a measurement that fails, and a shutdown mid-job. Real
records (SQLite), a real model store and real checkpoints; only the programs are stand-ins."""

import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.jobs.children import Commands
from app.jobs.scheduler import JobManager
from app.jobs.store import Job, JobStatus, JobStore
from app.records.database import Database, database_url
from app.records.feedback import FeedbackStore
from app.records.model_store import LocalModelStore
from app.records.versions import Adopt, ModelVersions
from models.checkpoint import metadata_path
from tests.checkpoints import measured_elsewhere
from tests.tools import polled_async

# The stand-in: `training <how> <checkpoint to copy> <out>` or `evaluate <how> <figures> <weights>`.
STAND_IN = r"""
import json, os, shutil, signal, sys, time
program, how, source, target = sys.argv[1:5]
def event(**fields):
    print(json.dumps(fields), flush=True)
if how == "hang":
    if program == "evaluate":  # says the child runs, and which process it is
        with open(source, "w") as started:
            started.write(str(os.getpid()))
    time.sleep(120)
elif program == "training":
    event(event="progress", epoch=1, epochs=1, fraction=0.25, loss=0.8)
    event(event="progress", epoch=1, epochs=1, fraction=0.5, loss=0.7)  # within the write interval
    if how == "error":
        event(event="error", message="the data folder holds no MNIST")
        sys.exit(1)
    if how == "crash":
        print("Traceback: something broke", file=sys.stderr, flush=True)
        sys.exit(3)
    if how == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    event(event="epoch", epoch=1, epochs=1, test_loss=0.9, test_accuracy=72.6)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(source, target)
    shutil.copy(source[:-3] + ".json", target[:-3] + ".json")
else:
    if how == "fail":
        print("no MNIST test set here", file=sys.stderr, flush=True)
        sys.exit(2)
    print(open(source).read())
"""


@dataclass
class Programs:
    """What the stand-ins do in one test."""

    training: str = "succeed"
    evaluation: str = "measure"
    figures: Path | None = None  # what the evaluation prints, or where a hanging one writes its pid

    def commands(self, checkpoint: Path) -> Commands:
        def training(params: dict[str, Any], out: Path, feedback: Path | None) -> list[str]:
            return [sys.executable, "-c", STAND_IN, "training", self.training, str(checkpoint), str(out)]

        def evaluation(weights: Path, feedback: Path | None) -> list[str]:
            figures = str(self.figures or "none")
            return [sys.executable, "-c", STAND_IN, "evaluate", self.evaluation, figures, str(weights)]

        return Commands(training, evaluation)


@dataclass
class Trainer:
    manager: JobManager
    store: JobStore
    versions: ModelVersions
    programs: Programs
    promoted: list[None]

    async def submit_and_wait(
        self, params: dict[str, Any], until: Callable[[Job], bool] | None = None
    ) -> Job:
        job = await self.manager.submit(params)
        return await self.wait(job.id, until or (lambda job: not job.status.active))

    async def wait(self, job_id: str, until: Callable[[Job], bool]) -> Job:
        return await polled_async(lambda: self.store.get(job_id), until, timeout_s=30, what=f"job {job_id}")


@pytest.fixture
async def trainer(tmp_path: Path, small_checkpoint: Path) -> AsyncIterator[Trainer]:
    database = Database(database_url(None, tmp_path / "state"))
    store = JobStore(database, stale_after_s=15.0)
    model_path = tmp_path / "mnist_cnn.pt"
    versions = ModelVersions(
        database, LocalModelStore(tmp_path / "state" / "models"), tmp_path / "state", model_path
    )
    settings = Settings(
        state_dir=tmp_path / "state", model_path=model_path, job_heartbeat_s=0.1, train_priority="normal"
    )
    programs, promoted = Programs(), []

    async def on_promotion() -> None:
        promoted.append(None)

    manager = JobManager(
        store,
        versions,
        on_promotion,
        settings,
        FeedbackStore(store.database),
        programs.commands(small_checkpoint),
    )
    await manager.start()
    try:
        yield Trainer(manager, store, versions, programs, promoted)
    finally:
        await manager.stop()
        versions.close()
        database.dispose()


def active_elsewhere(trainer: Trainer, checkpoint: Path, folder: Path) -> str:
    """Make a copy of `checkpoint` the active version, its figures measured on other test data: a
    job's model is then only judged after the active one is measured on the job's data."""
    weights = measured_elsewhere(checkpoint, folder / "mnist_cnn.pt")
    return trainer.versions.adopt(weights, "a test", Adopt.ALWAYS)


async def test_a_model_that_trains_is_kept_judged_and_promoted(
    trainer: Trainer, small_checkpoint: Path
) -> None:
    job = await trainer.submit_and_wait({"epochs": 1})
    assert job.status is JobStatus.SUCCEEDED, job.error
    version = json.loads(metadata_path(small_checkpoint).read_text())["version"]
    assert job.model_version == version and trainer.versions.active() == version
    assert job.promotion is not None and job.promotion["promoted"] and job.promotion["champion"] is None
    assert job.progress["history"] == [{"epoch": 1, "test_loss": 0.9, "test_accuracy": 72.6}]
    assert job.progress["losses"] == [[0.25, 0.8], [0.5, 0.7]]
    assert trainer.promoted == [None]  # the server swaps it in
    incoming = trainer.versions.incoming_path(job.id)  # the child's file, cleaned up once recorded
    await polled_async(incoming.exists, lambda exists: not exists, what="the incoming file removed")


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("error", "the data folder holds no MNIST"),  # the child's own words, not its stderr
        ("crash", "training process exited with status 3\nTraceback: something broke"),
        ("killed", "training process killed by signal 9"),
    ],
)
async def test_a_child_that_fails_fails_its_job_saying_why(trainer: Trainer, how: str, error: str) -> None:
    trainer.programs.training = how
    job = await trainer.submit_and_wait({"epochs": 1})
    assert (job.status, job.error, job.model_version) == (JobStatus.FAILED, error, None)
    assert job.progress["fraction"] == 0.5  # the last report is written, however soon after another
    assert trainer.versions.active() is None and trainer.promoted == []


async def test_a_failed_measurement_rejects_the_model_and_keeps_it(
    trainer: Trainer, small_checkpoint: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    active = active_elsewhere(trainer, other_checkpoint, tmp_path / "active")
    trainer.programs.evaluation = "fail"
    job = await trainer.submit_and_wait({"epochs": 1})
    assert job.status is JobStatus.REJECTED
    measured = f"the active model {active} could not be measured on the test set: no MNIST test set here"
    assert job.error is not None and job.error.startswith(f"{measured}: not promoted")
    assert trainer.versions.active() == active and trainer.promoted == []
    assert job.model_version in {entry["model_version"] for entry in trainer.versions.list()}  # kept


async def test_the_active_model_measured_on_the_jobs_data_decides(
    trainer: Trainer, small_checkpoint: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    active = active_elsewhere(trainer, other_checkpoint, tmp_path / "active")
    figures = tmp_path / "figures.json"  # the active model, better than the job's on the same data
    data = json.loads(metadata_path(small_checkpoint).read_text())["data"]
    figures.write_text(
        json.dumps({"version": active, "test_accuracy": 99.0, "test_loss": 0.03, "data": data})
    )
    trainer.programs.figures = figures
    job = await trainer.submit_and_wait({"epochs": 1})
    assert job.status is JobStatus.REJECTED and job.promotion is not None
    assert job.promotion["champion"]["test_accuracy"] == 99.0  # measured, recorded, compared
    assert (
        trainer.versions.metadata_of(active)["evaluated"]["by"]
        == f"measured to compare with training job {job.id}"
    )
    assert trainer.versions.active() == active


async def test_a_cancel_while_the_active_model_is_measured_promotes_nothing(
    trainer: Trainer, other_checkpoint: Path, tmp_path: Path
) -> None:
    active = active_elsewhere(trainer, other_checkpoint, tmp_path / "active")
    trainer.programs.evaluation, trainer.programs.figures = "hang", tmp_path / "measuring.pid"
    job = await trainer.manager.submit({"epochs": 1})
    pid = int(
        await polled_async(measuring_pid(tmp_path / "measuring.pid"), bool, timeout_s=30, what="measuring")
    )
    cancelled = await trainer.manager.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED, cancelled.error
    assert cancelled.model_version is not None  # kept all the same, not activated
    assert trainer.versions.active() == active and trainer.promoted == []
    await polled_async(lambda: alive(pid), lambda running: not running, what="the measuring child stopped")
    await polled_async(trainer.manager.children.jobs, lambda jobs: jobs == [], what="no children left")


async def test_a_shutdown_while_the_active_model_is_measured_stops_that_child(
    trainer: Trainer, other_checkpoint: Path, tmp_path: Path
) -> None:
    active_elsewhere(trainer, other_checkpoint, tmp_path / "active")
    trainer.programs.evaluation, trainer.programs.figures = "hang", tmp_path / "measuring.pid"
    job = await trainer.manager.submit({"epochs": 1})
    pid = int(
        await polled_async(measuring_pid(tmp_path / "measuring.pid"), bool, timeout_s=30, what="measuring")
    )
    await trainer.manager.stop()
    assert not alive(pid) and trainer.manager.children.jobs() == []
    ended = trainer.store.get(job.id)
    assert (ended.status, ended.error) == (JobStatus.FAILED, "interrupted: the server shut down")


def measuring_pid(path: Path) -> Callable[[], str]:
    """The pid a hanging stand-in wrote, once it has ('' before)."""
    return lambda: path.read_text() if path.exists() else ""


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, stopped but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def test_a_shutdown_stops_the_child_and_fails_its_job(trainer: Trainer) -> None:
    trainer.programs.training = "hang"
    job = await trainer.manager.submit({"epochs": 1})
    await trainer.wait(job.id, lambda job: job.pid is not None)
    await trainer.manager.stop()
    assert trainer.manager.children.jobs() == []
    ended = trainer.store.get(job.id)
    assert (ended.status, ended.error) == (JobStatus.FAILED, "interrupted: the server shut down")
