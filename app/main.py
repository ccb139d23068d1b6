"""Builds the app: `create_app(settings)` for tests and tools, `app` for `uvicorn app.main:app`."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from app import NAME, __version__
from app.config import LOG_FORMAT, Settings
from app.errors import install_error_handlers
from app.metrics import Metrics, MetricsMiddleware
from app.routes import feedback, health, model, page, predict, train
from app.schemas import FeedbackByPrediction, FeedbackReview, TrainRequest
from app.services import running_services
from app.v2 import routes as v2

log = logging.getLogger("app")


def configure_logging(level: str) -> None:
    """Give our logger a handler when nobody configured logging (plain `uvicorn app.main:app`)."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
    log.setLevel(level.upper())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings, metrics) as services:
            app.state.services = services
            # Everything allocated so far (torch, the app, the model) lives as long as the process:
            # move it out of the collector's sight, so full collections under load stay short.
            gc.collect()
            gc.freeze()
            yield

    app = FastAPI(
        title=NAME,
        summary="Handwritten-digit recognition with dynamic batching.",
        version=__version__,
        lifespan=lifespan,
        # Prometheus metrics are ours (app/metrics.py); FastAPI's OpenTelemetry hooks cost a
        # provider lookup on every request when nothing is configured to receive them.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    if settings.role != "trainer":  # a trainer answers only health, readiness and metrics
        app.include_router(predict.router)
        app.include_router(model.router)
        app.include_router(train.router)
        app.include_router(feedback.router)
        app.include_router(v2.router)
        # Bodies the routes read themselves (to bound them first): FastAPI cannot see their models.
        document_models(app, (TrainRequest, FeedbackByPrediction, FeedbackReview, *v2.DOCUMENTED))
        app.include_router(page.router)
        app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.include_router(health.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def document_models(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Put `models` among the OpenAPI schemas, for request bodies that refer to them by name."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(found.pop("$defs", {}))
                schemas[model.__name__] = found
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
