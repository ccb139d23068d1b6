"""Training jobs: start one, watch it, list them, cancel one."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from app.deps import JobsDep, StoreDep, TokenDep
from app.schemas import ErrorBody, JobList, JobPublic, TrainRequest

router = APIRouter(prefix="/train", tags=["train"])

AUTH: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "MNIST_TRAIN_TOKEN is set and the bearer token is missing or wrong",
    }
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such job"}}


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    dependencies=[TokenDep],
    responses={
        **AUTH,
        409: {"model": ErrorBody, "description": "every trainer slot (and queue place) is taken"},
        503: {"model": ErrorBody, "description": "no trainer is running, or the database is out"},
        422: {"description": "unknown field or a value out of bounds"},
    },
)
async def create_training_job(
    response: Response, jobs: JobsDep, request: Annotated[TrainRequest, Body(default_factory=TrainRequest)]
) -> JobPublic:
    """Start a background training job (the same code as `python -m training`) and answer at once."""
    job = await jobs.submit(request.model_dump(exclude_none=True))
    response.headers["Location"] = f"/train/{job.id}"
    return JobPublic.model_validate(job)


@router.get("", response_model=JobList)
async def read_training_jobs(store: StoreDep, limit: int = Query(20, ge=1, le=500)) -> JobList:
    """Training jobs, newest first."""
    found = await store.database.run(store.list, limit)
    return JobList(jobs=[JobPublic.model_validate(job) for job in found])


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def read_training_job(job_id: str, store: StoreDep) -> JobPublic:
    """One job: status, hyperparameters, progress, times, error, and the new model's version."""
    job = await store.database.run(store.get, job_id)
    return JobPublic.model_validate(job)


@router.delete(
    "/{job_id}", response_model=JobPublic, dependencies=[TokenDep], responses={**AUTH, **NOT_FOUND}
)
async def cancel_training_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """Cancel a queued or running job (its process is stopped; the served model is untouched)."""
    job = await jobs.cancel(job_id)
    return JobPublic.model_validate(job)
