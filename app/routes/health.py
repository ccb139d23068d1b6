"""Liveness, readiness and metrics: what orchestrators and Prometheus poll."""

from fastapi import APIRouter, Response

from app.deps import EngineDep, JobsDep, MetricsDep, SettingsDep
from app.schemas import ErrorBody, Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
async def read_liveness() -> Status:
    """The process is up and answering."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorBody}})
async def read_readiness(engine: EngineDep, settings: SettingsDep, jobs: JobsDep) -> Status:
    """Ready to predict: a model is loaded and the batching engine runs; 503 saying why otherwise.
    A trainer (MNIST_ROLE=trainer) is ready when it can reach the database it takes jobs from."""
    if settings.role == "trainer":
        await jobs.store.database.aping()
        return Status(status="ready")
    return Status(status="ready", model_version=engine.ready().version)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def read_metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: requests, latency, batch sizes, queue wait and depth, model version."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
