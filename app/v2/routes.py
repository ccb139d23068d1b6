"""The Open Inference Protocol v2 over HTTP (KServe, Triton): health, metadata and inference for the
model `mnist`, through the same batching engine, limits and metrics as /predict."""

from typing import Any

from fastapi import APIRouter, Request, Response

from app.deps import EngineDep, services_of
from app.predict.not_a_digit import NotADigitPolicy
from app.v2 import protocol, rest
from app.v2.schemas import InferRequestBody, InferResponseBody, ModelMetadata, ServerMetadata, V2Error

router = APIRouter(prefix="/v2", tags=["v2"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error, "description": "a tensor's name, datatype, shape or size does not match"},
    404: {"model": V2Error, "description": "no such model, or that version is not the one served"},
    503: {"model": V2Error, "description": "no model loaded, or the inference queue is full (Retry-After)"},
}
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    408: {"model": V2Error, "description": "the body did not arrive within MNIST_BODY_TIMEOUT_S"},
    413: {"model": V2Error, "description": "body over MNIST_MAX_BATCH_BYTES, too many images or pixels"},
    415: {"model": V2Error, "description": "an image input that is not an image, or a compressed body"},
    422: {"model": V2Error, "description": "an image input is blank"},
    504: {"model": V2Error, "description": "inference did not finish within MNIST_REQUEST_TIMEOUT_S"},
}
EMPTY_OK: dict[int | str, dict[str, Any]] = {200: {"description": "yes (an empty body)", "content": {}}}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequestBody"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"the JSON, then the tensors' bytes; {rest.HEADER_LENGTH} says its length",
            },
        },
    }
}
DOCUMENTED = (InferRequestBody,)
INFER_DESCRIPTION = (
    f"Digits for a tensor of images: {protocol.INPUTS['input'].described()} normalised, "
    f"{protocol.INPUTS['pixels'].described()} or {protocol.INPUTS['image'].described()} files; "
    "JSON or binary both ways."
)


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def read_server_metadata() -> dict[str, Any]:
    """The server's name, version and the protocol extensions it supports."""
    return protocol.server_metadata()


@router.get("/health/live", response_class=Response, responses=EMPTY_OK)
async def read_server_live() -> Response:
    """The server is up and answering."""
    return Response()


@router.get("/health/ready", response_class=Response, responses={**EMPTY_OK, 503: ERRORS[503]})
async def read_server_ready(engine: EngineDep) -> Response:
    """Every model is ready: a model is loaded and the batching engine runs."""
    engine.ready()
    return Response()


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=ERRORS)
async def read_model_metadata(model_name: str, engine: EngineDep) -> dict[str, Any]:
    """The model's version, inputs (one per request: input, pixels or image) and outputs."""
    protocol.check_model(model_name, None, engine)
    return protocol.model_metadata(engine)


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata, responses=ERRORS)
async def read_model_version_metadata(
    model_name: str, model_version: str, engine: EngineDep
) -> dict[str, Any]:
    """The same, for the version served (404 for any other)."""
    protocol.check_model(model_name, model_version, engine)
    return protocol.model_metadata(engine)


@router.get("/models/{model_name}/config", response_model=dict[str, Any], responses=ERRORS)
async def read_model_config(model_name: str, engine: EngineDep) -> dict[str, Any]:
    """The model in Triton's model configuration format (its max_batch_size, optional inputs), as
    perf_analyzer asks for it."""
    protocol.check_model(model_name, None, engine)
    return protocol.model_config(engine)


@router.get("/models/{model_name}/ready", response_class=Response, responses={**EMPTY_OK, **ERRORS})
async def read_model_ready(model_name: str, engine: EngineDep) -> Response:
    """The model is loaded and the batching engine runs."""
    protocol.check_model(model_name, None, engine)
    engine.ready()
    return Response()


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_class=Response,
    responses={**EMPTY_OK, **ERRORS},
)
async def read_model_version_ready(model_name: str, model_version: str, engine: EngineDep) -> Response:
    """That version is the one served, and ready."""
    protocol.check_model(model_name, None, engine)
    engine.ready()
    protocol.check_model(model_name, model_version, engine)
    return Response()


@router.post(
    "/models/{model_name}/infer",
    response_model=InferResponseBody,
    responses=INFER_ERRORS,
    openapi_extra=INFER_BODY,
    summary="Run inference",
    description=INFER_DESCRIPTION,
)
async def infer_model(model_name: str, request: Request) -> Response:
    """Digits for a tensor of images, each input of the shape the model's signature gives."""
    return await answer(request, model_name, None)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    response_model=InferResponseBody,
    responses=INFER_ERRORS,
    openapi_extra=INFER_BODY,
    summary="Run inference on a version",
)
async def infer_model_version(model_name: str, model_version: str, request: Request) -> Response:
    """The same, refused (404) unless that version is the one served."""
    return await answer(request, model_name, model_version)


async def answer(request: Request, model_name: str, model_version: str | None) -> Response:
    # Straight from services_of, not dependencies: their solving costs throughput, as on /predict.
    services = services_of(request)
    settings = services.settings
    protocol.check_model(model_name, model_version, services.engine)  # before reading a byte of the body
    rest.refuse_encoded(request.headers.get("content-encoding"))
    async with services.bodies.holding(request, settings.max_batch_bytes) as body:
        header_length = request.headers.get(rest.HEADER_LENGTH)

        def parse() -> protocol.InferRequest:  # a refusal frees what was parsed where it was parsed
            return rest.parse_request(
                body,
                header_length,
                lambda declared: protocol.check_declared(
                    declared, model_name, model_version, services.engine
                ),
                most_values=protocol.most_values(services.engine),
            )

        parsed = await protocol.parsed(len(body), parse, services.decoder)
        result = await protocol.infer(
            parsed,
            model_name,
            model_version,
            services.engine,
            services.decoder,
            services.recent,
            NotADigitPolicy.of(services.settings),
        )
    content, headers, media_type = rest.encode_response(parsed, result)
    return Response(content, headers=headers, media_type=media_type)
