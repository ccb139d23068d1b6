"""What a server process runs besides HTTP: the model, the batching engine, the checkpoint watcher,
the job store and runner, and model versions; started and stopped together by the lifespan."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import torch

from app.batching import BatchingEngine
from app.config import Settings
from app.db import Database, database_url
from app.jobs.runner import JobManager
from app.jobs.store import JobStore
from app.metrics import Metrics
from app.versions import ModelVersions
from app.watcher import ModelWatcher
from models.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from models.device import resolve_device

log = logging.getLogger("app")


@dataclass(frozen=True)
class Services:
    """Everything a request may need, put on `app.state.services` by the lifespan."""

    settings: Settings
    metrics: Metrics
    engine: BatchingEngine
    store: JobStore
    versions: ModelVersions
    watcher: ModelWatcher
    jobs: JobManager


def try_load(settings: Settings, device: torch.device) -> tuple[LoadedCheckpoint | None, str]:
    """The checkpoint, or None and the reason it could not be loaded (the server starts anyway)."""
    try:
        return load_checkpoint(settings.model_path, device), ""
    except CheckpointError as exc:
        log.warning("no model loaded from %s: %s", settings.model_path, exc)
        return None, str(exc)


@asynccontextmanager
async def running_services(settings: Settings, metrics: Metrics) -> AsyncIterator[Services]:
    """Load the model off the event loop, start everything; on exit stop jobs, watcher and engine."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device, setting="MNIST_DEVICE")
    checkpoint, reason = await asyncio.to_thread(try_load, settings, device)
    metrics.set_model(checkpoint.version if checkpoint else None, checkpoint.arch if checkpoint else None)
    if not settings.train_token:
        log.warning("MNIST_TRAIN_TOKEN is not set: anyone who can reach the server can train and swap models")
    log.info(
        "serving model %s on %s (torch threads %d); settings: %s",
        checkpoint.version if checkpoint else f"NONE ({reason})",
        device,
        torch.get_num_threads(),
        settings.public(),
    )
    database = Database(database_url(settings.database_url, settings.state_dir))
    await asyncio.to_thread(database.migrate)
    store = JobStore(database, stale_after_s=settings.job_stale_after_s)
    await asyncio.to_thread(store.reap)  # jobs whose server died while they ran
    versions = ModelVersions(database, settings.state_dir, settings.model_path)
    await asyncio.to_thread(versions.record_kept_files)  # a state folder from before version records
    if checkpoint is not None:
        await asyncio.to_thread(versions.adopt, checkpoint.version, f"{settings.model_path} at startup")

    def swapped(new: LoadedCheckpoint) -> None:
        metrics.set_model(new.version, new.arch)
        # e.g. a model written by `python -m training` by hand; a promotion is recorded already
        versions.adopt(new.version, f"{settings.model_path} changed")

    engine = BatchingEngine(
        checkpoint,
        device,
        max_batch_size=settings.max_batch_size,
        queue_size=settings.queue_size,
        timeout_s=settings.request_timeout_s,
        observers=metrics.engine_observers(),
        unavailable_reason=reason,
    )
    async with engine:
        watcher = ModelWatcher(settings.model_path, engine, device, swapped, settings.model_poll_s)
        jobs = JobManager(
            store,
            versions,
            watcher.check,
            device=settings.device,
            threads=settings.train_threads,
            data_dir=settings.data_dir,
            heartbeat_s=settings.job_heartbeat_s,
        )
        watcher.start()
        try:
            yield Services(settings, metrics, engine, store, versions, watcher, jobs)
        finally:
            await jobs.stop()
            await watcher.stop()
            database.dispose()
    log.info("inference engine stopped")
