"""Builds the app: `create_app(settings)` for tests and tools, `app` for `uvicorn app.main:app`."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.batching import BatchingEngine
from app.config import Settings
from app.errors import install_error_handlers
from app.jobs.runner import JobManager
from app.jobs.store import JobStore
from app.metrics import Metrics, MetricsMiddleware
from app.routes import health, model, page, predict, train
from app.versions import ModelVersions
from app.watcher import ModelWatcher
from models.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint

log = logging.getLogger("app")


def serving_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MNIST_DEVICE=cuda but CUDA is not available on this machine")
    return torch.device(requested)


def try_load(settings: Settings, device: torch.device) -> tuple[LoadedCheckpoint | None, str]:
    """The checkpoint, or None and the reason it could not be loaded (the server starts anyway)."""
    try:
        return load_checkpoint(settings.model_path, device), ""
    except CheckpointError as exc:
        log.warning("no model loaded from %s: %s", settings.model_path, exc)
        return None, str(exc)


def configure_logging(level: str) -> None:
    """Give our logger a handler when nobody configured logging (plain `uvicorn app.main:app`)."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(level.upper())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = serving_device(settings.device)
        checkpoint, reason = await asyncio.to_thread(try_load, settings, device)
        metrics.set_model(checkpoint.version if checkpoint else None, checkpoint.arch if checkpoint else None)

        def swapped(new: LoadedCheckpoint) -> None:
            metrics.set_model(new.version, new.arch)
            versions.adopt(new.version)  # e.g. a model written by `python -m training` by hand

        if not settings.train_token:
            log.warning(
                "MNIST_TRAIN_TOKEN is not set: anyone who can reach the server can train and swap models"
            )
        log.info(
            "serving model %s on %s (torch threads %d); settings: %s",
            checkpoint.version if checkpoint else f"NONE ({reason})",
            device,
            torch.get_num_threads(),
            settings.public(),
        )
        engine = BatchingEngine(
            checkpoint,
            device,
            max_batch_size=settings.max_batch_size,
            queue_size=settings.queue_size,
            timeout_s=settings.request_timeout_s,
            observers=metrics.engine_observers(),
            unavailable_reason=reason,
        )
        store = JobStore(settings.state_dir, stale_after_s=settings.job_stale_after_s)
        await asyncio.to_thread(store.reap)  # jobs whose server died while they ran
        versions = ModelVersions(settings.state_dir, settings.model_path)
        if checkpoint is not None:
            await asyncio.to_thread(versions.adopt, checkpoint.version)
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
            app.state.engine, app.state.store, app.state.versions = engine, store, versions
            app.state.watcher, app.state.jobs = watcher, jobs
            watcher.start()
            # Everything allocated so far (torch, the app, the model) lives as long as the process:
            # move it out of the collector's sight, so full collections under load stay short.
            gc.collect()
            gc.freeze()
            yield
            await jobs.stop()
            await watcher.stop()
        log.info("inference engine stopped")

    app = FastAPI(
        title="mnist-serve",
        summary="Handwritten-digit recognition with dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
        # Prometheus metrics are ours (app/metrics.py); FastAPI's OpenTelemetry hooks cost a
        # provider lookup on every request when nothing is configured to receive them.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(predict.router)
    app.include_router(model.router)
    app.include_router(train.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.include_router(health.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


app = create_app()
