"""Response shapes, as the OpenAPI docs at /docs describe them."""

from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    """What the model says about one image."""

    digit: int = Field(ge=0, le=9, description="the most probable digit")
    confidence: float = Field(ge=0, le=1, description="its probability")
    log_probs: list[float] = Field(min_length=10, max_length=10, description="log-softmax output, digits 0-9")
    probs: list[float] = Field(min_length=10, max_length=10, description="exp(log_probs), summing to 1")
    model_version: str = Field(description="first 12 hex digits of the weights' sha256")


class BatchPrediction(BaseModel):
    """One prediction per uploaded file, in upload order."""

    predictions: list[Prediction]
    model_version: str


class ModelInfo(BaseModel):
    """The checkpoint's metadata (arch, sha256, test_accuracy, hyperparameters...) and serving details."""

    model_config = {"extra": "allow"}

    model_version: str
    version: str
    arch: str
    serving: dict[str, Any] = Field(description="device and the settings in force")


class Status(BaseModel):
    status: str
    model_version: str | None = None


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, in words")
