"""GET /model: what is being served, and how."""

from typing import Any

from fastapi import APIRouter, Request

from app.deps import EngineDep, FollowerDep, SettingsDep, TokenDep, VersionsDep
from app.predict.not_a_digit import NotADigitPolicy
from app.schemas import VALIDATION, CardComparison, ErrorBody, ModelInfo, VersionList
from models.card import card_of
from models.comparison import Standing, difference

router = APIRouter(tags=["model"], responses=VALIDATION)


@router.get("/model", response_model=ModelInfo, responses={503: {"model": ErrorBody}})
async def read_model(engine: EngineDep, settings: SettingsDep, follower: FollowerDep) -> dict[str, Any]:
    """The served checkpoint's metadata (version, accuracy, hyperparameters...) and the settings in
    force; `serving.fallback` says why, when it is not the active version."""
    checkpoint = engine.serving()
    policy = NotADigitPolicy.of(settings)
    serving: dict[str, Any] = {
        "device": str(engine.device),
        "settings": settings.public(paths=False),
        "not_a_digit": {
            "threshold": policy.threshold(checkpoint),
            "source": policy.source(checkpoint),
            "refuse": policy.refuse,
        },
    }
    if follower.fallback:
        serving["fallback"] = follower.fallback
    return {**checkpoint.metadata, "model_version": checkpoint.version, "serving": serving}


@router.get("/model/versions", response_model=VersionList)
async def read_model_versions(engine: EngineDep, versions: VersionsDep) -> dict[str, Any]:
    """Every model version kept (each promoted checkpoint), newest first, the active one with when
    and by whom it was activated, and which one this server serves."""
    served = engine.checkpoint.version if engine.checkpoint else None
    return {"versions": await versions.alist(), "active": served}


@router.get(
    "/model/versions/{a}/compare/{b}",
    response_model=CardComparison,
    responses={404: {"model": ErrorBody, "description": "no such version"}},
)
async def compare_model_versions(a: str, b: str, versions: VersionsDep) -> dict[str, Any]:
    """Two kept versions' model cards side by side, and b minus a for each figure both have; no
    difference where the two were not measured on the same test data, saying why."""
    first = card_of({**await versions.ametadata_of(a), "model_version": a})
    second = card_of({**await versions.ametadata_of(b), "model_version": b})
    why_not = Standing.of(first).not_comparable_with(Standing.of(second))
    return {
        "a": first,
        "b": second,
        "not_comparable": why_not,
        "difference": None if why_not else difference(second, first),
    }


@router.post(
    "/model/versions/{version}/activate",
    response_model=VersionList,
    dependencies=[TokenDep],
    responses={
        401: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "the version's weights fail verification"},
        503: {"model": ErrorBody, "description": "the database or the model store is out"},
    },
)
async def activate_model_version(
    version: str, request: Request, engine: EngineDep, versions: VersionsDep, follower: FollowerDep
) -> dict[str, Any]:
    """Serve an earlier (or later) kept version: a rollback. Every replica follows within seconds."""
    client = request.client.host if request.client else "unknown"
    await versions.aactivate(version, f"POST /model/versions/{version}/activate from {client}")
    await follower.check()  # serves it here at once; never raises (what fails is logged)
    return await read_model_versions(engine, versions)
