"""Users' corrections: send one, list them, review, delete, and export the accepted ones as IDX files."""

import asyncio
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Query, Request, Response

from app.deps import FeedbackDep, TokenDep, holds_token, services_of
from app.errors import (
    InferenceFailed,
    InferenceTimeout,
    InvalidRequest,
    NoModel,
    QueueFull,
    RecentInputGone,
    ShuttingDown,
)
from app.predict.preprocess import Invert, png_data_url
from app.predict.uploads import Upload, client_of
from app.records.feedback import Correction, FeedbackStatus
from app.routes.json_bodies import is_json, json_body, parsed_json
from app.routes.predict import ERRORS, EXTRA_PARTS, IMAGE_TYPES, INVERT, files_named
from app.schemas import (
    AUTH,
    VALIDATION,
    ErrorBody,
    FeedbackByPrediction,
    FeedbackCreated,
    FeedbackItem,
    FeedbackList,
    FeedbackReview,
)
from app.services import Services
from models.calibration import calibrated
from models.signature import SIGNATURE

router = APIRouter(prefix="/feedback", tags=["feedback"], responses=VALIDATION)

MAX_JSON_BYTES = 4 * 1024
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such correction"}}
BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "label": {"type": "integer", "minimum": 0, "maximum": SIGNATURE.output.classes - 1},
                        "prediction_id": {"type": "string", "maxLength": 64},
                    },
                    "required": ["file", "label"],
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/FeedbackByPrediction"}},
        },
        "description": f"the image ({IMAGE_TYPES}) and the digit it is; or, as JSON, a recent "
        "prediction's id and the digit its image is",
    }
}


def shown(item: dict[str, Any]) -> dict[str, Any]:
    """An item with its image as a picture."""
    pixels = np.frombuffer(item["image"], dtype=np.uint8).reshape(SIGNATURE.input.size)
    return {**item, "image": png_data_url(pixels)}


def form_label(uploads: list[Upload]) -> int:
    """The multipart field `label`: one digit, or a 422 that says so."""
    texts = [upload.data.decode("utf-8", "replace").strip() for upload in uploads if upload.name == "label"]
    if not texts:
        raise InvalidRequest([{"loc": ("body", "label"), "msg": "Field required", "type": "missing"}])
    if len(texts[0]) != 1 or not texts[0].isdigit() or not texts[0].isascii():
        last = SIGNATURE.output.classes - 1
        raise InvalidRequest(
            [{"loc": ("body", "label"), "msg": f"must be a digit from 0 to {last}", "type": "digit"}]
        )
    return int(texts[0])


def form_prediction_id(uploads: list[Upload]) -> str | None:
    texts = [
        upload.data.decode("utf-8", "replace").strip() for upload in uploads if upload.name == "prediction_id"
    ]
    if not texts or not texts[0]:
        return None
    if len(texts[0]) > 64:
        raise InvalidRequest(
            [{"loc": ("body", "prediction_id"), "msg": "at most 64 characters", "type": "string_too_long"}]
        )
    return texts[0]


async def received_correction(
    request: Request, services: Services, invert: Invert
) -> tuple[torch.Tensor, int, str | None]:
    """The image (grey levels, uint8), label and prediction id of a multipart or JSON correction."""
    content_type = request.headers.get("content-type")
    if content_type and is_json(content_type):
        body = await services.bodies.read(request, MAX_JSON_BYTES)
        named = parsed_json(body, content_type, FeedbackByPrediction)
        image = services.recent.image(named.prediction_id)
        if image is None:
            raise RecentInputGone(
                f"this server process does not hold the input of prediction {named.prediction_id!r} (it "
                "keeps a recent prediction's input for MNIST_FEEDBACK_RECENT_S in the process that "
                "answered it): send the image as multipart/form-data with `file` and `label`"
            )
        return image, named.label, named.prediction_id
    async with services.bodies.uploads(
        request, services.settings.max_upload_bytes, EXTRA_PARTS + 3
    ) as uploads:
        upload = files_named(uploads, "file")[0]
        label, prediction_id = form_label(uploads), form_prediction_id(uploads)
        inputs, _ = await services.decoder.decode([upload], invert, batch=False)
    return SIGNATURE.input.levels(inputs[0]).reshape(SIGNATURE.input.size), label, prediction_id


@router.post(
    "",
    status_code=201,
    response_model=FeedbackCreated,
    openapi_extra=BODY,
    responses={
        **ERRORS,
        **AUTH,
        404: {
            "model": ErrorBody,
            "description": "JSON naming a prediction whose input this process does not hold",
        },
        429: {
            "model": ErrorBody,
            "description": "this client's corrections without the token are over "
            "MNIST_FEEDBACK_PER_MINUTE (Retry-After)",
        },
        503: {
            "model": ErrorBody,
            "description": "the review queue is full (Retry-After), or the database is out",
        },
    },
    summary="Correct a prediction: this image is that digit",
)
async def create_feedback(request: Request, response: Response, invert: Invert = INVERT) -> dict[str, Any]:
    """Keep a correction (multipart `file`, `label`, optional `prediction_id`; or JSON naming a recent
    prediction): accepted at once when sent with the token (or when none is set), else pending review."""
    services = services_of(request)
    settings = services.settings
    trusted = holds_token(request)
    image, label, prediction_id = await received_correction(request, services, invert)
    predicted, confidence, version = None, None, None
    # What the serving model says of the image now: a correction is kept all the same when there is no
    # model or it cannot answer now.
    try:
        inputs = SIGNATURE.input.normalize(image.float()[None, None])
        log_probs, served = await services.engine.infer(inputs)
        version = served.version
        best, digit = calibrated(log_probs[0], served.temperature).max(dim=0)  # as /predict states it
        predicted, confidence = int(digit), float(best.exp())
    except (NoModel, QueueFull, ShuttingDown, InferenceTimeout, InferenceFailed):
        pass
    status = FeedbackStatus.ACCEPTED if trusted or not settings.train_token else FeedbackStatus.PENDING
    correction = Correction(
        image.numpy().tobytes(), label, prediction_id, predicted, version, client_of(request), trusted
    )
    limits = (settings.feedback_per_minute, settings.feedback_max_pending)
    item = await services.feedback.aadd(correction, status, *limits)
    response.headers["Location"] = f"/feedback/{item['id']}"
    return {**shown(item), "confidence": confidence}


@router.get("", response_model=FeedbackList)
async def read_feedback(
    feedback: FeedbackDep,
    status: Annotated[FeedbackStatus | None, Query(description="only items of this status")] = None,
    limit: int = Query(50, ge=0, le=500),
    offset: int = Query(0, ge=0, le=10**9),
) -> dict[str, Any]:
    """How many corrections there are (by status; the accepted ones by label and split), and a page of
    them, newest first, each with the image the model saw."""
    items = await feedback.apage(status, limit, offset) if limit else []
    return {"counts": await feedback.acounts(), "items": [shown(item) for item in items]}


@router.get(
    "/export",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "a zip of IDX files and a manifest"}},
)
async def export_feedback(feedback: FeedbackDep) -> Response:
    """The accepted corrections in MNIST's IDX format (`train-` and `heldout-` images and labels) with
    a manifest of their ids and sha256: what `python -m training --feedback` reads."""
    found = await feedback.aaccepted()
    data = await asyncio.to_thread(found.to_zip)  # hashes and compresses every image: not on the loop
    filename = f"feedback-{found.sha256[:12]}.zip"
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/{item_id}", response_model=FeedbackItem, responses=NOT_FOUND)
async def read_feedback_item(item_id: str, feedback: FeedbackDep) -> dict[str, Any]:
    """One correction."""
    return shown(await feedback.aget(item_id))


@router.post(
    "/{item_id}/review",
    response_model=FeedbackItem,
    dependencies=[TokenDep],
    responses={**AUTH, **NOT_FOUND},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeedbackReview"}}},
        }
    },
)
async def review_feedback(item_id: str, request: Request, feedback: FeedbackDep) -> dict[str, Any]:
    """Accept a correction (`{"accept": true}`: it may be trained on) or reject it (again, if a
    reviewer changes their mind)."""
    review = await json_body(request, FeedbackReview, MAX_JSON_BYTES)
    return shown(await feedback.areview(item_id, review.accept))


@router.delete("/{item_id}", status_code=204, dependencies=[TokenDep], responses={**AUTH, **NOT_FOUND})
async def delete_feedback(item_id: str, feedback: FeedbackDep) -> Response:
    """Delete a correction for good: no training set made after this holds it."""
    await feedback.adelete(item_id)
    return Response(status_code=204)
