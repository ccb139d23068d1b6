"""The services on `app.state`, for routes: one accessor, and typed dependencies built on it.

The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per request that cost more than the whole prediction under load. The predict
routes call `services_of` directly: dependency solving there cost 12% throughput.
"""

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.errors import Unauthorized
from app.jobs.scheduler import JobManager
from app.jobs.store import JobStore
from app.metrics import Metrics
from app.predict.batching import BatchingEngine
from app.records.follower import ModelFollower
from app.records.versions import ModelVersions
from app.services import Services


def services_of(request: Request) -> Services:
    """What the lifespan started for this app."""
    services: Services = request.app.state.services
    return services


async def get_settings(request: Request) -> Settings:
    return services_of(request).settings


async def get_engine(request: Request) -> BatchingEngine:
    return services_of(request).engine


async def get_metrics(request: Request) -> Metrics:
    return services_of(request).metrics


async def get_jobs(request: Request) -> JobManager:
    return services_of(request).jobs


async def get_store(request: Request) -> JobStore:
    return services_of(request).store


async def get_versions(request: Request) -> ModelVersions:
    return services_of(request).versions


async def get_follower(request: Request) -> ModelFollower:
    return services_of(request).follower


async def require_token(request: Request) -> None:
    """With MNIST_TRAIN_TOKEN set, changes to training and models need `Authorization: Bearer <token>`."""
    expected = services_of(request).settings.train_token
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
FollowerDep = Annotated[ModelFollower, Depends(get_follower)]
