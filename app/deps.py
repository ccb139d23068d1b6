"""Typed accessors for the services that live on `app.state`, as FastAPI dependencies.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, a
thread hop per request that cost more than the whole prediction under load.
"""

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.batching import BatchingEngine
from app.config import Settings
from app.errors import Unauthorized
from app.jobs.runner import JobManager
from app.jobs.store import JobStore
from app.metrics import Metrics
from app.versions import ModelVersions
from app.watcher import ModelWatcher


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> BatchingEngine:
    engine: BatchingEngine = request.app.state.engine
    return engine


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_jobs(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.jobs
    return jobs


async def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def get_versions(request: Request) -> ModelVersions:
    versions: ModelVersions = request.app.state.versions
    return versions


async def get_watcher(request: Request) -> ModelWatcher:
    watcher: ModelWatcher = request.app.state.watcher
    return watcher


async def require_token(request: Request) -> None:
    """With MNIST_TRAIN_TOKEN set, changes to training and models need `Authorization: Bearer <token>`."""
    expected: str | None = request.app.state.settings.train_token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <MNIST_TRAIN_TOKEN>)")


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[BatchingEngine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
StoreDep = Annotated[JobStore, Depends(get_store)]
VersionsDep = Annotated[ModelVersions, Depends(get_versions)]
TokenDep = Depends(require_token)
WatcherDep = Annotated[ModelWatcher, Depends(get_watcher)]
