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
from app.records.feedback import FeedbackStore
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


async def get_feedback(request: Request) -> FeedbackStore:
    return services_of(request).feedback


async def get_follower(request: Request) -> ModelFollower:
    return services_of(request).follower


def has_valid_token(request: Request, expected: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def unauthorized() -> Unauthorized:
    return Unauthorized("a valid bearer token is required (Authorization: Bearer <MNIST_TRAIN_TOKEN>)")


async def require_token(request: Request) -> None:
    """With MNIST_TRAIN_TOKEN set, changes to training and models need `Authorization: Bearer <token>`."""
    expected = services_of(request).settings.train_token
    if expected and not has_valid_token(request, expected):
        raise unauthorized()


def holds_token(request: Request) -> bool:
    """Whether the sender holds MNIST_TRAIN_TOKEN (False where none is set, or none was sent); a
    token that is sent and wrong is a 401, never quietly taken for no token."""
    expected = services_of(request).settings.train_token
    if not expected or "authorization" not in request.headers:
        return False
    if not has_valid_token(request, expected):
        raise unauthorized()
    return True


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[BatchingEngine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
StoreDep = Annotated[JobStore, Depends(get_store)]
VersionsDep = Annotated[ModelVersions, Depends(get_versions)]
TokenDep = Depends(require_token)
FollowerDep = Annotated[ModelFollower, Depends(get_follower)]
FeedbackDep = Annotated[FeedbackStore, Depends(get_feedback)]
