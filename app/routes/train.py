"""Training jobs: start one, watch it, list them, cancel one."""

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from app.deps import JobsDep, SettingsDep, StoreDep, TokenDep
from app.errors import InvalidRequest
from app.routes.json_bodies import json_body
from app.schemas import AUTH, VALIDATION, ErrorBody, JobList, JobPublic, TrainRequest

router = APIRouter(prefix="/train", tags=["train"], responses=VALIDATION)

# A full set of hyperparameters is a few hundred bytes of JSON.
MAX_TRAIN_BODY_BYTES = 16 * 1024
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such job"}}
JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TrainRequest"}}},
        "description": "hyperparameters; an empty body (or `{}`) takes the recipe's values",
    }
}


async def train_request_of(request: Request) -> TrainRequest:
    """The job's parameters from a JSON body of at most MAX_TRAIN_BODY_BYTES, read only after the
    token was checked (the route's dependency), so a stranger cannot make us read or parse much."""
    return await json_body(request, TrainRequest, MAX_TRAIN_BODY_BYTES, empty=TrainRequest())


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    dependencies=[TokenDep],
    openapi_extra=JSON_BODY,
    responses={
        **AUTH,
        400: {"model": ErrorBody, "description": "the body is not valid JSON"},
        409: {"model": ErrorBody, "description": "every trainer slot (and queue place) is taken"},
        413: {"model": ErrorBody, "description": f"a body over {MAX_TRAIN_BODY_BYTES} bytes"},
        415: {"model": ErrorBody, "description": "a body that is not application/json"},
        503: {"model": ErrorBody, "description": "no trainer is running, or the database is out"},
    },
)
async def create_training_job(
    request: Request, response: Response, jobs: JobsDep, settings: SettingsDep
) -> JobPublic:
    """Start a background training job (the same code as `python -m training`) and answer at once."""
    train = await train_request_of(request)
    if train.nproc_per_node is not None and train.nproc_per_node > settings.train_max_procs:
        raise InvalidRequest(
            [
                {
                    "loc": ("body", "nproc_per_node"),
                    "msg": f"this server runs at most {settings.train_max_procs} processes per job "
                    "(MNIST_TRAIN_MAX_PROCS)",
                    "type": "less_than_equal",
                }
            ]
        )
    job = await jobs.submit(train.model_dump(mode="json", exclude_none=True))
    response.headers["Location"] = f"/train/{job.id}"
    return JobPublic.model_validate(job)


@router.get("", response_model=JobList)
async def read_training_jobs(
    store: StoreDep, settings: SettingsDep, limit: int = Query(20, ge=1, le=500)
) -> JobList:
    """Training jobs, newest first, and how many processes a new one may ask for."""
    found = await store.arecent(limit)
    return JobList(
        jobs=[JobPublic.model_validate(job) for job in found], max_nproc_per_node=settings.train_max_procs
    )


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def read_training_job(job_id: str, store: StoreDep) -> JobPublic:
    """One job: status, hyperparameters, progress, times, error, and the new model's version."""
    job = await store.aget(job_id)
    return JobPublic.model_validate(job)


@router.delete(
    "/{job_id}", response_model=JobPublic, dependencies=[TokenDep], responses={**AUTH, **NOT_FOUND}
)
async def cancel_training_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """Cancel a queued or running job (its process is stopped; the served model is untouched)."""
    job = await jobs.cancel(job_id)
    return JobPublic.model_validate(job)
