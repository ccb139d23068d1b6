"""GET /model: what is being served, and how."""

from typing import Any

from fastapi import APIRouter

from app.deps import EngineDep, SettingsDep
from app.errors import NoModel
from app.schemas import ErrorBody, ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, responses={503: {"model": ErrorBody}})
async def read_model(engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    """The served checkpoint's metadata (version, accuracy, hyperparameters...) and the settings in force."""
    checkpoint = engine.checkpoint
    if checkpoint is None:
        raise NoModel(f"no model loaded: {engine.unavailable_reason}")
    return {
        **checkpoint.metadata,
        "model_version": checkpoint.version,
        "serving": {"device": str(engine.device), "settings": settings.public()},
    }
