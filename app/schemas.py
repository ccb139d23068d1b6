"""Response shapes, as the OpenAPI docs at /docs describe them."""

import dataclasses
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from app.jobs.promotion import PromoteRule
from app.jobs.store import JobStatus
from models.comparison import Standing
from models.hyperparameters import Hyperparameters, bounds_of, hyperparameter_fields, value_type
from models.signature import SIGNATURE

CLASSES = SIGNATURE.output.classes


class Prediction(BaseModel):
    """What the model says about one image."""

    digit: int = Field(ge=0, le=CLASSES - 1, description="the most probable digit")
    confidence: float = Field(ge=0, le=1, description="its calibrated probability")
    low_confidence: bool = Field(
        description="confidence below MNIST_LOW_CONFIDENCE: worth a person's look (the model card's "
        "`low_confidence` table says what share of errors that catches)"
    )
    not_a_digit: bool = Field(
        description="ood_score above the threshold in force (GET /model: serving.not_a_digit): the "
        "image does not look like a digit; `digit` is still the model's best guess"
    )
    ood_score: float = Field(
        ge=0,
        le=1,
        description="1 - the network's own (uncalibrated) largest probability: higher is less like "
        "a digit (from a model trained with outlier exposure, the card's not_a_digit says how well "
        "it separates)",
    )
    log_probs: list[float] = Field(
        min_length=CLASSES,
        max_length=CLASSES,
        description=f"the network's own log-softmax output, digits {SIGNATURE.output.labels_text}",
    )
    probs: list[float] = Field(
        min_length=CLASSES,
        max_length=CLASSES,
        description="calibrated probabilities, summing to 1: softmax(log_probs / T) at the model's "
        "fitted temperature T (the card's calibration; exp(log_probs) where T is 1)",
    )
    model_version: str = Field(description="first 12 hex digits of the weights' sha256")
    prediction_id: str = Field(
        description="names this prediction (`<request>-<row>`): in the logs beside the version (at "
        "debug level), and what a correction refers to"
    )
    input_image: str | None = Field(
        None,
        description=f"with return_input=true: the preprocessed {SIGNATURE.input.size_text} image "
        "as a PNG data URL",
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
    serving: dict[str, Any] = Field(
        description="device, the settings in force, and not_a_digit: the threshold in force and "
        "where it comes from (the setting, the model's card, or none)"
    )


class Status(BaseModel):
    status: str
    model_version: str | None = None


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: query, path or body, then the field")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: `detail` in words; a 422 for invalid parameters or fields also lists them."""

    detail: str = Field(description="what went wrong, in words")
    errors: list[FieldError] | None = Field(
        None, description="422 only: each invalid field (never its value)"
    )


VALIDATION: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "a parameter or field is missing, unknown or out of bounds"}
}
# The routes that take MNIST_TRAIN_TOKEN.
AUTH: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "MNIST_TRAIN_TOKEN is set and the bearer token is missing or wrong",
    }
}


def request_field(spec: dataclasses.Field[Any]) -> tuple[Any, Any]:
    """One hyperparameter as an optional body field, within its bounds and the server's cap."""
    bounds = bounds_of(spec)
    kind: Any = Literal.__getitem__(bounds.choices) if bounds.choices else value_type(spec)
    caps = [cap for cap in (bounds.le, bounds.server_max) if cap is not None]
    limits: dict[str, Any] = {
        "ge": bounds.ge,
        "gt": bounds.gt,
        "lt": bounds.lt,
        "le": min(caps) if caps else None,
    }
    if kind is float:
        limits["allow_inf_nan"] = False
    return kind | None, Field(None, description=bounds.help, **limits)


if TYPE_CHECKING:
    HyperparameterFields = BaseModel
else:
    HyperparameterFields = create_model(
        "HyperparameterFields", **{spec.name: request_field(spec) for spec in hyperparameter_fields()}
    )


class TrainRequest(HyperparameterFields):
    """A training job: hyperparameters (models/hyperparameters.py), each one left out taking the
    recipe's value, and the accuracy the new model needs."""

    model_config = ConfigDict(extra="forbid")

    min_accuracy: float | None = Field(
        None, ge=0, le=100, description="test accuracy (percent) the new model needs to be promoted"
    )
    promote: PromoteRule | None = Field(
        None,
        description="if_better (the default): promote the new model only if it is at least as good "
        "as the active one on the same test data (accuracy, then loss at equal accuracy), else the "
        "job ends rejected; always; never (keep it as a version without activating it)",
    )
    use_feedback: bool | None = Field(
        None,
        description="also train on the accepted corrections' training split (each one "
        "feedback_weight times an epoch); every job is measured on their held-out split either way",
    )
    nproc_per_node: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="processes training the job together (DDP ranks: one per GPU, or CPU processes); "
        "at most the server's MNIST_TRAIN_MAX_PROCS; batch_size is per rank",
    )

    @model_validator(mode="after")
    def values_that_go_together(self) -> Self:
        """The rules that tie hyperparameters together (a batch-normed network's batch of two or
        more), on the recipe's values with this body's, as the job will build them."""
        given = {spec.name: getattr(self, spec.name) for spec in hyperparameter_fields()}
        Hyperparameters.from_recipe(given.pop("recipe"), **given)  # its ValueError: a 422
        return self


class JobProgress(BaseModel):
    model_config = {"extra": "allow"}

    epoch: int | None = None
    epochs: int | None = None
    fraction: float | None = Field(None, description="share of all training batches done")
    loss: float | None = Field(None, description="latest training loss")
    test_loss: float | None = None
    test_accuracy: float | None = None
    history: list[dict[str, float]] = Field(default_factory=list, description="test figures after each epoch")
    losses: list[list[float]] = Field(
        default_factory=list,
        description="the training loss curve: [fraction of the run, loss] pairs, at most 200 "
        "(every other point dropped as a long job grows)",
    )


class Promotion(BaseModel):
    """How a finished job's model was judged against the active one."""

    rule: PromoteRule
    promoted: bool = Field(description="the new model is the active version now")
    reason: str | None = Field(
        description="why it was not promoted, in words; where held-out corrections were compared, "
        "both figures, promoted or not"
    )
    challenger: Standing = Field(description="the job's model")
    champion: Standing | None = Field(
        description="the active model it was compared with (null: none was active, or not compared)"
    )
    difference: dict[str, float] | None = Field(
        description="test_accuracy (points) and test_loss of the challenger minus the champion"
    )


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
    model_version: str | None = Field(
        description="the new model's version (kept, and activatable, whether or not it was promoted)"
    )
    test_accuracy: float | None
    promotion: Promotion | None = Field(description="once the job's model was judged")
    pid: int | None = Field(description="the training process")


class JobList(BaseModel):
    jobs: list[JobPublic]
    max_nproc_per_node: int = Field(
        description="the most processes a job may ask for here (MNIST_TRAIN_MAX_PROCS)"
    )


class CardComparison(BaseModel):
    """Two versions' model cards (models/card.py) and b minus a: positive accuracy is b's gain."""

    a: dict[str, Any]
    b: dict[str, Any]
    not_comparable: str | None = Field(
        description="why the two cannot be compared (not measured on the same test data); null when they can"
    )
    difference: dict[str, Any] | None = Field(
        description="test_accuracy, test_loss, per_class_accuracy and confusion_matrix of b minus a, "
        "each null where a card lacks the figure; null when the two cannot be compared"
    )


class VersionList(BaseModel):
    versions: list[dict[str, Any]]
    active: str | None


class FeedbackItem(BaseModel):
    """A user's correction: the image the model saw, the digit it really is, and what became of it."""

    id: str
    status: Literal["pending", "accepted", "rejected"] = Field(
        description="pending: waits for a token holder's review; accepted: trained on or held out; "
        "rejected: reviewed and refused"
    )
    label: int = Field(ge=0, le=CLASSES - 1, description="the digit it is, as its sender says")
    split: Literal["train", "heldout"] = Field(
        description="where it goes once accepted, by its id: training data, or the held-out "
        "real-world test set"
    )
    prediction_id: str | None = Field(description="the prediction it corrects, where the sender named one")
    predicted: int | None = Field(
        description="what the serving model answered for this image when it arrived"
    )
    model_version: str | None = Field(description="that model's version")
    trusted: bool = Field(description="sent with the token")
    created_at: str
    reviewed_at: str | None
    image: str = Field(description=f"the {SIGNATURE.input.size_text} image the model saw, as a PNG data URL")


class FeedbackCreated(FeedbackItem):
    """The correction as kept, and the serving model's answer for its image now."""

    confidence: float | None = Field(description="the serving model's probability for `predicted`")


class FeedbackCounts(BaseModel):
    total: int
    by_status: dict[str, int] = Field(description="pending, accepted and rejected")
    accepted_by_label: list[int] = Field(description="accepted corrections of each digit")
    accepted_by_split: dict[str, int] = Field(description="accepted corrections in train and heldout")


class FeedbackList(BaseModel):
    counts: FeedbackCounts
    items: list[FeedbackItem] = Field(description="newest first")


class FeedbackByPrediction(BaseModel):
    """A correction that names a recent prediction instead of sending its image again."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(max_length=64, description="the `prediction_id` of a recent answer")
    label: int = Field(ge=0, le=CLASSES - 1, description="the digit the image really is")


class FeedbackReview(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accept: bool = Field(description="true: it may be trained on; false: it never will be")
