"""Response shapes, as the OpenAPI docs at /docs describe them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.store import JobStatus


class Prediction(BaseModel):
    """What the model says about one image."""

    digit: int = Field(ge=0, le=9, description="the most probable digit")
    confidence: float = Field(ge=0, le=1, description="its probability")
    log_probs: list[float] = Field(min_length=10, max_length=10, description="log-softmax output, digits 0-9")
    probs: list[float] = Field(min_length=10, max_length=10, description="exp(log_probs), summing to 1")
    model_version: str = Field(description="first 12 hex digits of the weights' sha256")
    input_image: str | None = Field(
        None, description="with return_input=true: the preprocessed 28x28 image as a PNG data URL"
    )


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


class TrainRequest(BaseModel):
    """Hyperparameters for a training job; each one left out takes the recipe's value."""

    model_config = {"extra": "forbid"}

    epochs: int | None = Field(None, ge=1, le=50)
    lr: float | None = Field(None, gt=0, le=10)
    momentum: float | None = Field(None, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1, le=4096)
    arch: Literal["net", "lenet5"] | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    recipe: Literal["tutorial", "accurate"] | None = None
    limit_train: int | None = Field(None, ge=1, le=60000, description="train on the first N images only")
    min_accuracy: float | None = Field(
        None, ge=0, le=100, description="test accuracy (percent) the new model needs to be promoted"
    )


class JobProgress(BaseModel):
    model_config = {"extra": "allow"}

    epoch: int | None = None
    epochs: int | None = None
    fraction: float | None = Field(None, description="share of all training batches done")
    loss: float | None = Field(None, description="latest training loss")
    test_loss: float | None = None
    test_accuracy: float | None = None
    history: list[dict[str, float]] = Field(default_factory=list, description="test figures after each epoch")


class JobPublic(BaseModel):
    """A training job's state, read from its record (owner, heartbeat and cancel flag stay internal)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    status: JobStatus
    hyperparameters: dict[str, Any] = Field(validation_alias="params")
    progress: JobProgress
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    model_version: str | None = Field(description="the promoted model's version, on success")
    test_accuracy: float | None
    pid: int | None = Field(description="the training process")


class JobList(BaseModel):
    jobs: list[JobPublic]


class VersionList(BaseModel):
    versions: list[dict[str, Any]]
    active: str | None
