"""Typed accessors for the services that live on `app.state`, as FastAPI dependencies.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, a
thread hop per request that cost more than the whole prediction under load.
"""

from typing import Annotated

from fastapi import Depends, Request

from app.batching import BatchingEngine
from app.config import Settings
from app.metrics import Metrics


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> BatchingEngine:
    engine: BatchingEngine = request.app.state.engine
    return engine


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[BatchingEngine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
