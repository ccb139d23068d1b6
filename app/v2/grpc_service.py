"""The v2 protocol over gRPC: GRPCInferenceService on MNIST_GRPC_PORT, served by each server process
on the event loop that serves its HTTP, through the same engine, limits and metrics. With several
processes (`python -m app`, MNIST_WORKERS > 1) each listens on the port with SO_REUSEPORT and the
kernel spreads connections over them, as uvicorn's shared socket spreads HTTP ones."""

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from grpc import aio

from app.config import Settings
from app.errors import BadRequest, NoModel, RequestTimeout, ServiceError
from app.logs import Throttled
from app.memory import Trimmer
from app.metrics import Metrics
from app.predict.batching import BatchingEngine
from app.predict.not_a_digit import NotADigitPolicy
from app.predict.preprocess import Decoder
from app.predict.recent import RecentInputs
from app.predict.uploads import Bodies, client_of_peer
from app.v2 import grpc_predict_v2_pb2 as pb
from app.v2 import protocol
from app.v2.protocol import InferRequest, InferResult, InputTensor, RequestedOutput

log = logging.getLogger("app.grpc")
refusals = Throttled(log)
SERVICE = "inference.GRPCInferenceService"
# The HTTP statuses of our errors as gRPC status codes (the table of grpc-gateway and Triton).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Where each datatype's elements travel in InferTensorContents.
CONTENTS = {
    "FP32": "fp32_contents",
    "UINT8": "uint_contents",
    "BYTES": "bytes_contents",
    "INT64": "int64_contents",
}
# Each method's request message: every call is received as bytes (see `rpc`) and parsed here.
REQUESTS: dict[str, type[Message]] = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}


def calls_per_client(bodies: Bodies, settings: Settings) -> int:
    """How many calls one client's share of the budget holds room for (see `rpc`): also one
    connection's stream cap, since a connection has one client."""
    return max(1, bodies.client_budget // settings.grpc_max_message_bytes)


async def received(requests: AsyncIterator[bytes], timeout_s: float) -> bytes:
    """A unary call's one message, which must arrive within `timeout_s` of the call's start."""
    try:
        async with asyncio.timeout(timeout_s):
            async for message in requests:
                return message
    except TimeoutError:
        raise RequestTimeout(f"the request message did not arrive within {timeout_s:g} s") from None
    raise BadRequest("the call ended without a request message")


def parse(kind: type[Message], raw: bytes) -> Message:
    try:
        return kind.FromString(raw)
    except DecodeError:
        raise BadRequest(f"the request is not a valid {kind.DESCRIPTOR.name} message") from None


def rpc(
    service: "InferenceService", name: str
) -> Callable[[AsyncIterator[bytes], aio.ServicerContext], Awaitable[Message]]:
    """Method `name` as gRPC calls it. Registered as request-streaming with no deserializer, so it
    runs as soon as a call starts (a unary client sends the same bytes), before gRPC reads its
    message: room for the largest message is held against the upload budget first (within the
    client's share; past it the call is refused and nothing is read), the message must then arrive
    within MNIST_BODY_TIMEOUT_S, and is held at its size until the call is answered. gRPC reads a
    message only once a handler asks for it (with BDP probing off, see `start_grpc_server`), so
    what it buffers stays within the budget however many calls are open. A malformed message is
    INVALID_ARGUMENT; a large one is parsed on a thread. Counts and times every call; our errors
    become their gRPC status with the same words, anything else is logged and answered INTERNAL
    without details."""
    method = getattr(service, name)
    kind = REQUESTS[name]

    async def call(requests: AsyncIterator[bytes], context: aio.ServicerContext) -> Message:
        started, code, detail, size = time.perf_counter(), grpc.StatusCode.OK, "", 0
        try:
            most = service.settings.grpc_max_message_bytes
            with service.bodies.reserved(most, client_of_peer(context.peer())) as held:
                raw = await received(requests, service.settings.body_timeout_s)
                size = len(raw)
                held.resize(size)
                request = await protocol.parsed(size, lambda: parse(kind, raw), service.decoder)
                raw = b""  # the parsed message holds its own copy
                response: Message = await method(request, context)
                return response
        except ServiceError as error:
            code, detail = STATUS_CODES.get(error.status_code, grpc.StatusCode.INTERNAL), error.detail
            if error.status_code >= 500:
                refusals.warning(code.name, "gRPC %s -> %s: %s", name, code.name, detail)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client went away or its deadline passed
            raise
        except aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error in gRPC %s", name)
            code, detail = grpc.StatusCode.INTERNAL, "internal server error"
        finally:
            service.metrics.observe_grpc(name, code.name, time.perf_counter() - started)
            service.trimmer.after(size)
        # Aborted here, outside the handlers: an abort raised inside one would chain the error, and
        # through its traceback the frames holding the request (megabytes) until a full collection.
        await context.abort(code, detail)
        raise AssertionError("abort raises")  # pragma: no cover

    return call


class InferenceService:
    """The service's methods, each taking its parsed request (see `rpc` for how calls reach them)."""

    def __init__(
        self,
        engine: BatchingEngine,
        decoder: Decoder,
        bodies: Bodies,
        settings: Settings,
        metrics: Metrics,
        recent: RecentInputs,
    ) -> None:
        self.engine, self.decoder, self.bodies, self.recent = engine, decoder, bodies, recent
        self.settings, self.metrics = settings, metrics
        self.trimmer = Trimmer()

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        protocol.check_model(request.name, None, self.engine)
        served = self.engine.checkpoint
        version_ok = not request.version or (served is not None and served.version == request.version)
        return pb.ModelReadyResponse(ready=self._ready() and version_ok)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**protocol.server_metadata())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        protocol.check_model(request.name, request.version or None, self.engine)
        metadata = protocol.model_metadata(self.engine)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in metadata["outputs"]],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        # What the request declares is checked before its contents are converted: a count and a
        # shape are free, millions of typed elements are not.
        protocol.check_declared(
            declared_request_of(request), request.model_name, request.model_version or None, self.engine
        )
        parsed = await protocol.parsed(request.ByteSize(), lambda: infer_request_of(request), self.decoder)
        result = await protocol.infer(
            parsed,
            request.model_name,
            request.model_version or None,
            self.engine,
            self.decoder,
            self.recent,
            NotADigitPolicy.of(self.settings),
        )
        return infer_response_of(result, request.id)

    def _ready(self) -> bool:
        try:
            self.engine.ready()
        except NoModel:
            return False
        return True


def parameters_of(parameters: Any) -> dict[str, Any]:
    """A map of InferParameter as plain values."""
    plain = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            plain[key] = getattr(parameter, choice)
    return plain


def declared_request_of(message: pb.ModelInferRequest) -> InferRequest:
    """The request's inputs and outputs as declared (names, datatypes, shapes), without elements."""
    inputs = [InputTensor(given.name, given.datatype, list(given.shape)) for given in message.inputs]
    return InferRequest(inputs, [RequestedOutput(output.name) for output in message.outputs])


def infer_request_of(message: pb.ModelInferRequest) -> InferRequest:
    """The protocol's request from the message: each input's elements in raw_input_contents (one
    entry per input, as tritonclient sends them) or in its typed contents."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(f"raw_input_contents holds {len(raw)} entries for {len(message.inputs)} inputs")
    inputs = []
    for index, given in enumerate(message.inputs):
        tensor = InputTensor(given.name, given.datatype, list(given.shape), parameters_of(given.parameters))
        if raw:
            if given.HasField("contents"):
                raise BadRequest(f"input {given.name!r} has both contents and raw_input_contents")
            tensor.raw = raw[index]
        else:
            tensor.values = contents_of(given)
        inputs.append(tensor)
    outputs = []
    for output in message.outputs:
        if "classification" in output.parameters:
            raise BadRequest("the classification extension is not supported: ask for the probs output")
        outputs.append(RequestedOutput(output.name))
    return InferRequest(inputs, outputs, message.id, parameters_of(message.parameters))


def contents_of(given: pb.ModelInferRequest.InferInputTensor) -> np.ndarray | list[bytes] | None:
    """An input's typed contents: the field for its datatype, and no other."""
    field = CONTENTS.get(given.datatype)
    used = [descriptor.name for descriptor, _ in given.contents.ListFields()]
    if field is None:
        return None  # the protocol refuses the datatype, naming the one expected
    if any(name != field for name in used):
        raise BadRequest(
            f"input {given.name!r} ({given.datatype}) carries its elements in {field}, not {used}"
        )
    values = getattr(given.contents, field)
    if len(values) != math.prod(given.shape):  # before converting: a count is free, 4M floats are not
        raise BadRequest(
            f"input {given.name!r} has shape {list(given.shape)} but holds {len(values)} elements"
        )
    if given.datatype == "BYTES":
        return list(values)
    return np.asarray(values)


def infer_response_of(result: InferResult, request_id: str) -> pb.ModelInferResponse:
    """Outputs in raw_output_contents, as Triton answers and tritonclient reads."""
    response = pb.ModelInferResponse(
        model_name=protocol.MODEL_NAME, model_version=result.model_version, id=request_id
    )
    response.parameters["prediction_id"].string_param = result.prediction_id
    for output in result.outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(protocol.raw_bytes(output.data))
    return response


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(
    settings: Settings,
    engine: BatchingEngine,
    decoder: Decoder,
    bodies: Bodies,
    metrics: Metrics,
    recent: RecentInputs,
) -> aio.Server:
    """GRPCInferenceService on MNIST_HOST:MNIST_GRPC_PORT, within the limits HTTP has: a message no
    larger than MNIST_GRPC_MAX_MESSAGE_BYTES (RESOURCE_EXHAUSTED past it), held against the same
    budget as HTTP bodies from before it is read (see `rpc`), at most MNIST_MAX_CONNECTIONS calls at
    once and as many streams on one connection as its client's share holds room for. A connection
    idle for a minute is closed, and any connection after 10 minutes (with MNIST_BODY_TIMEOUT_S of
    grace for its calls). Raises if the port cannot be bound."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_concurrent_streams", calls_per_client(bodies, settings)),
            # Each stream's window stays at its first 64 KiB until its handler asks for the message:
            # BDP probing would widen every window, and gRPC would read whole messages unasked.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 64 * 1024),
            ("grpc.so_reuseport", 1),
            ("grpc.max_connection_idle_ms", 60_000),
            ("grpc.max_connection_age_ms", 600_000),
            ("grpc.max_connection_age_grace_ms", int(settings.body_timeout_s * 1000)),
        ],
        maximum_concurrent_rpcs=settings.max_connections,
    )
    service = InferenceService(engine, decoder, bodies, settings, metrics, recent)
    handlers = {
        name: grpc.stream_unary_rpc_method_handler(
            rpc(service, name), request_deserializer=None, response_serializer=serialized
        )
        for name in REQUESTS
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    where = address(settings.host, settings.grpc_port)
    try:
        server.add_insecure_port(where)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {where} (MNIST_GRPC_PORT): {exc}") from None
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) on %s", where)
    return server


def serialized(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data
