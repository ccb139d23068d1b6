"""POST /predict and POST /predict/batch: images in, digits and probabilities out."""

import json
from typing import Any

from fastapi import APIRouter, Query, Request, Response

from app.deps import services_of
from app.errors import MissingField, TooManyFiles
from app.predict.answers import answered, request_id
from app.predict.not_a_digit import NotADigitPolicy
from app.predict.preprocess import Invert
from app.predict.uploads import Upload
from app.schemas import BatchPrediction, ErrorBody, Prediction
from models.signature import SIGNATURE

router = APIRouter(tags=["predict"])

EXTRA_PARTS = 8  # form fields a client may send beside the files; ignored, but counted
IMAGE_TYPES = "PNG, JPEG, BMP, GIF (first frame), WebP or TIFF"
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "empty, truncated or corrupt image; malformed multipart body"},
    413: {
        "model": ErrorBody,
        "description": "upload over MNIST_MAX_UPLOAD_BYTES, too many pixels, or too many files",
    },
    415: {"model": ErrorBody, "description": f"not multipart/form-data, or not a {IMAGE_TYPES} image"},
    422: {"model": ErrorBody, "description": "the file field is missing, or the image is blank (no digit)"},
    503: {"model": ErrorBody, "description": "no model loaded, or the inference queue is full (Retry-After)"},
    504: {"model": ErrorBody, "description": "inference did not finish within MNIST_REQUEST_TIMEOUT_S"},
}
RETURN_INPUT = Query(
    False,
    description=f"also return the preprocessed {SIGNATURE.input.size_text} image "
    "(`input_image`, a PNG data URL)",
)
INVERT = Query(
    Invert.AUTO,
    description="auto: invert when the background is light (MNIST digits are light on dark); "
    "true/false: force it",
)


def multipart_body(field: str, many: bool) -> dict[str, Any]:
    """OpenAPI text for a multipart body we parse ourselves (to enforce limits while reading)."""
    item = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": item} if many else item
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {field: schema}, "required": [field]}
                }
            },
            "description": f"{'one or more images' if many else 'one image'}: {IMAGE_TYPES}",
        }
    }


def json_response(content: dict[str, Any]) -> Response:
    """Serialise directly: the shapes are fixed, so response-model validation would be wasted work."""
    return Response(json.dumps(content).encode(), media_type="application/json")


def files_named(uploads: list[Upload], field: str) -> list[Upload]:
    files = [upload for upload in uploads if upload.name == field]
    if not files:
        raise MissingField(f"multipart field {field!r} with an image is required")
    return files


@router.post(
    "/predict",
    response_model=Prediction,
    responses=ERRORS,
    openapi_extra=multipart_body("file", many=False),
    summary="Recognise the digit in one image",
)
async def predict_digit(
    request: Request, invert: Invert = INVERT, return_input: bool = RETURN_INPUT
) -> Response:
    """Recognise the digit in one uploaded image (multipart field `file`)."""
    # Straight from services_of, not dependencies: their solving cost 12% of throughput here.
    services = services_of(request)
    settings = services.settings
    async with services.bodies.uploads(request, settings.max_upload_bytes, EXTRA_PARTS + 1) as uploads:
        upload = files_named(uploads, "file")[0]
        inputs, images = await services.decoder.decode([upload], invert, batch=False)
        log_probs, served = await services.engine.infer(inputs)
        policy = NotADigitPolicy.of(settings)
        judged = policy.judged(log_probs, served)
        named = request_id()
        services.recent.keep(named, inputs)  # a correction may name this prediction instead of the image
        answer = answered(
            named, log_probs, served, settings.low_confidence, images if return_input else None, judged
        )
        return json_response(answer[0])


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    responses=ERRORS,
    openapi_extra=multipart_body("files", many=True),
    summary="Recognise the digits in several images",
)
async def predict_digits(
    request: Request, invert: Invert = INVERT, return_input: bool = RETURN_INPUT
) -> Response:
    """Recognise each uploaded image (repeated field `files`), answering in upload order; one bad
    file fails the whole request, naming the file, and nothing is predicted."""
    # Straight from services_of, not dependencies: their solving cost 12% of throughput here.
    services = services_of(request)
    settings = services.settings
    # Parts past the most files allowed (and a few other fields) are refused while parsing: a
    # body of a million empty parts costs nothing but a 413.
    max_parts = settings.max_batch_files + EXTRA_PARTS
    async with services.bodies.uploads(request, settings.max_batch_bytes, max_parts) as uploads:
        files = files_named(uploads, "files")
        if len(files) > settings.max_batch_files:
            raise TooManyFiles(f"{len(files)} files; at most {settings.max_batch_files} per request")
        inputs, images = await services.decoder.decode(files, invert, batch=True)
        log_probs, served = await services.engine.infer(inputs)
    policy = NotADigitPolicy.of(settings)
    judged = policy.judged(log_probs, served, [upload.filename for upload in files])
    named = request_id()
    services.recent.keep(named, inputs)
    predictions = answered(
        named, log_probs, served, settings.low_confidence, images if return_input else None, judged
    )
    return json_response({"predictions": predictions, "model_version": served.version})
