"""The Open Inference Protocol v2 for the one model this service serves, whatever the transport:
what the model takes and gives (its metadata), the checks on a request, the binary tensor layout,
and inference through the same batching engine as /predict. app/v2/rest.py (JSON and binary over
HTTP) and app/v2/grpc_service.py only translate their wire formats to and from these types."""

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from app import NAME, __version__
from app.errors import BadRequest, ServiceError, TooManyFiles, VersionNotFound
from app.predict.answers import logged, request_id
from app.predict.batching import BatchingEngine
from app.predict.not_a_digit import NotADigitPolicy
from app.predict.preprocess import Decoder, Invert, model_input
from app.predict.recent import RecentInputs
from models.calibration import calibrated
from models.signature import SIGNATURE

MODEL_NAME = "mnist"
PLATFORM = "pytorch"
EXTENSIONS = ("binary_tensor_data",)
# A request may hold this many engine batches (MNIST_MAX_BATCH_SIZE each): split, then reassembled.
BATCHES_PER_REQUEST = 16
BYTES_PREFIX = struct.Struct("<I")  # a BYTES element's length, before its bytes
# Requests larger than this are parsed on a thread: the event loop never stalls on one.
OFF_LOOP_BYTES = 256 * 1024
T = TypeVar("T")
# Normalised grey levels lie in [-0.42, 2.82]; far past that a client sent something else.
MAX_NORMALISED = 1000.0
INPUT = SIGNATURE.input
NORMALISATION = (
    f"(x / {INPUT.brightest:g} - {INPUT.mean}) / {INPUT.std}, "
    f"about {INPUT.normalized(0.0):.2f} to {INPUT.normalized(INPUT.brightest):.2f}"
)


# A name a client sent (an input's, an output's, a model's) is shown in an error cut to this many
# characters: a 16 MB name must not come back as a 16 MB answer.
MAX_SHOWN = 64


def shown(value: object) -> str:
    """What a client sent, as an error message quotes it: repr, cut to MAX_SHOWN characters (and a
    shape to its first 8 dimensions)."""
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(map(str, value[:8]))}, ... ({len(value)} dimensions)]"
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= MAX_SHOWN:
        return repr(value) if isinstance(value, str) else text
    return repr(text[:MAX_SHOWN]) + f"... ({len(text)} characters)"


class ModelNotFound(ServiceError):
    status_code = 404


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model metadata declares it; -1 is the batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def described(self) -> str:
        """As the API's text names it: datatype, name and shape (N: the number of images)."""
        dims = ",".join("N" if dim == -1 else str(dim) for dim in self.shape)
        return f"{self.datatype} `{self.name}` [{dims}]"


INPUTS = {
    spec.name: spec
    for spec in (
        TensorSpec("input", "FP32", INPUT.shape(-1)),  # normalised as in training
        TensorSpec("pixels", "UINT8", (-1, *INPUT.size)),  # 0-255, light digit on dark
        TensorSpec("image", "BYTES", (-1,)),  # encoded image files, preprocessed as for /predict
    )
}
OUTPUTS = {
    spec.name: spec
    for spec in (
        TensorSpec("log_probs", "FP32", (-1, SIGNATURE.output.classes)),
        TensorSpec("probs", "FP32", (-1, SIGNATURE.output.classes)),
        TensorSpec("digit", "INT64", (-1,)),
        TensorSpec("not_a_digit", "BOOL", (-1,)),
        TensorSpec("ood_score", "FP32", (-1,)),
    )
}
DEFAULT_OUTPUTS = ("log_probs",)
# Fixed-size datatypes as little-endian numpy types (the protocol's byte order).
NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "UINT8": np.dtype("u1"),
    "INT64": np.dtype("<i8"),
    "BOOL": np.dtype("?"),  # one byte each
}
INPUT_CHOICES = " or ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in INPUTS.values())


@dataclass
class InputTensor:
    """One input as a transport delivered it: typed `values` (JSON data, gRPC contents: a numpy
    array, or a list of bytes for BYTES) or `raw` bytes (the binary extension, raw_input_contents)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)
    values: np.ndarray | list[bytes] | None = None
    raw: bytes | None = None


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # REST only: this output's binary_data parameter, if given


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray  # shaped, little-endian
    binary: bool | None = None  # REST only: as the request asked for this output

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass
class InferResult:
    model_version: str
    outputs: list[OutputTensor]
    # The request's id: its row i's prediction is `<prediction_id>-<i>` (a response parameter).
    prediction_id: str


def server_metadata() -> dict[str, Any]:
    return {"name": NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def check_model(name: str, version: str | None, engine: BatchingEngine) -> None:
    """404 unless `name` is this server's model and `version` (if given) the one it serves."""
    if name != MODEL_NAME:
        raise ModelNotFound(f"unknown model {shown(name)}: this server serves {MODEL_NAME!r}")
    if version:
        served = engine.serving().version
        if version != served:
            raise VersionNotFound(
                f"model {MODEL_NAME!r} version {shown(version)} is not being served; the active version is "
                f"{served!r} (GET /model/versions lists the kept ones, POST .../activate serves one)"
            )


def model_metadata(engine: BatchingEngine) -> dict[str, Any]:
    served = engine.checkpoint
    return {
        "name": MODEL_NAME,
        "versions": [served.version] if served else [],
        "platform": PLATFORM,
        "inputs": [spec.public() for spec in INPUTS.values()],
        "outputs": [spec.public() for spec in OUTPUTS.values()],
    }


# Triton's names for the datatypes, in its model configuration.
CONFIG_TYPES = {
    "FP32": "TYPE_FP32",
    "UINT8": "TYPE_UINT8",
    "BYTES": "TYPE_STRING",
    "INT64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL",
}


def model_config(engine: BatchingEngine) -> dict[str, Any]:
    """The model as Triton's model configuration extension describes one (HTTP only): what
    perf_analyzer reads before it sends a request. Every input is optional: a request carries one."""

    def tensor(spec: TensorSpec, optional: bool) -> dict[str, Any]:
        dims = list(spec.shape[1:])  # the metadata's shape less the batch: [] for one file per image
        described: dict[str, Any] = {
            "name": spec.name,
            "data_type": CONFIG_TYPES[spec.datatype],
            "dims": dims,
        }
        if optional:
            described["optional"] = True
        return described

    return {
        "name": MODEL_NAME,
        "platform": PLATFORM,
        "max_batch_size": max_rows(engine),
        "input": [tensor(spec, optional=True) for spec in INPUTS.values()],
        "output": [tensor(spec, optional=False) for spec in OUTPUTS.values()],
        "dynamic_batching": {},
    }


def max_rows(engine: BatchingEngine) -> int:
    return engine.max_batch_size * BATCHES_PER_REQUEST


def most_values(engine: BatchingEngine) -> int:
    """The most elements any request's input may hold: the most rows, of one image's values each."""
    return max_rows(engine) * INPUT.values


def the_input(request: InferRequest, most_rows: int) -> tuple[InputTensor, int]:
    """The request's one input, checked against the metadata, and how many images it holds."""
    if len(request.inputs) != 1:
        names = ", ".join(shown(tensor.name) for tensor in request.inputs[:4]) or "none"
        names += ", ..." if len(request.inputs) > 4 else ""
        raise BadRequest(f"send exactly one input per request, got {len(request.inputs)} ({names})")
    tensor = request.inputs[0]
    spec = INPUTS.get(tensor.name)
    if spec is None:
        raise BadRequest(f"unknown input {shown(tensor.name)}: this model takes {INPUT_CHOICES}")
    if tensor.datatype != spec.datatype:
        raise BadRequest(f"input {spec.name!r} must be {spec.datatype}, got {shown(tensor.datatype)}")
    fixed = [(given, wanted) for given, wanted in zip(tensor.shape, spec.shape, strict=False) if wanted != -1]
    if len(tensor.shape) != len(spec.shape) or any(given != wanted for given, wanted in fixed):
        raise BadRequest(
            f"input {spec.name!r} must have shape {list(spec.shape)} (-1: the number of images), "
            f"got {shown(tensor.shape)}"
        )
    rows = tensor.shape[0]
    if rows < 1:
        raise BadRequest(f"input {spec.name!r} holds no image (shape {tensor.shape})")
    if rows > most_rows:
        raise TooManyFiles(
            f"{rows} images in one request; at most {most_rows} "
            f"(MNIST_MAX_BATCH_SIZE x {BATCHES_PER_REQUEST})"
        )
    return tensor, rows


def requested_outputs(request: InferRequest) -> list[RequestedOutput]:
    """The outputs asked for, in order (log_probs when none are named)."""
    if not request.outputs:
        return [RequestedOutput(name) for name in DEFAULT_OUTPUTS]
    names = [output.name for output in request.outputs]
    for name in names:
        if name not in OUTPUTS:
            raise BadRequest(f"unknown output {shown(name)}: this model gives {', '.join(OUTPUTS)}")
    if len(set(names)) != len(names):
        twice = next(name for index, name in enumerate(names) if name in names[:index])
        raise BadRequest(f"output {twice!r} is asked for twice")
    return request.outputs


def elements(tensor: InputTensor, rows: int) -> np.ndarray | list[bytes]:
    """The input's elements, checked for count and range: a flat numpy array, or the BYTES items."""
    count = math.prod(tensor.shape)
    if tensor.datatype == "BYTES":
        items = bytes_items(tensor.raw, tensor.name, rows) if tensor.raw is not None else tensor.values
        if not isinstance(items, list) or len(items) != rows:
            sent = len(items) if isinstance(items, list) else 0
            more = "more than " if tensor.raw is not None and sent > rows else ""
            raise BadRequest(
                f"input {tensor.name!r} has shape {tensor.shape} but holds {more}{sent} elements"
            )
        return items
    dtype = NUMPY_TYPES[tensor.datatype]
    if tensor.raw is not None:
        if len(tensor.raw) != count * dtype.itemsize:
            raise BadRequest(
                f"input {tensor.name!r} of shape {tensor.shape} {tensor.datatype} takes "
                f"{count * dtype.itemsize} bytes; {len(tensor.raw)} were sent"
            )
        return np.frombuffer(tensor.raw, dtype=dtype)
    values = tensor.values
    if not isinstance(values, np.ndarray):
        raise BadRequest(f"input {tensor.name!r} has no data")
    if values.size != count:
        raise BadRequest(f"input {tensor.name!r} has shape {tensor.shape} but holds {values.size} elements")
    if tensor.datatype == "UINT8":
        if values.dtype.kind not in "iu" or (values.size and (values.min() < 0 or values.max() > 255)):
            raise BadRequest(f"input {tensor.name!r} (UINT8) must hold whole numbers from 0 to 255")
    elif values.dtype.kind not in "iuf":
        raise BadRequest(f"input {tensor.name!r} (FP32) must hold numbers")
    return values.reshape(-1).astype(dtype)


def bytes_items(raw: bytes, name: str, expected: int) -> list[bytes]:
    """A BYTES tensor's elements from the binary layout: each a 4-byte little-endian length, then
    that many bytes. Stops one past `expected`: 16 MB of empty elements must not cost a walk."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw) and len(items) <= expected:
        if offset + BYTES_PREFIX.size > len(raw):
            raise BadRequest(f"input {name!r}: the binary data ends inside an element's length prefix")
        (size,) = BYTES_PREFIX.unpack_from(raw, offset)
        offset += BYTES_PREFIX.size
        if offset + size > len(raw):
            raise BadRequest(
                f"input {name!r}: element {len(items)} declares {size} bytes; {len(raw) - offset} remain"
            )
        items.append(raw[offset : offset + size])
        offset += size
    return items


def raw_bytes(array: np.ndarray) -> bytes:
    """A fixed-size tensor in the binary layout: row-major, little-endian."""
    return np.ascontiguousarray(array).tobytes()


async def engine_input(tensor: InputTensor, rows: int, decoder: Decoder) -> torch.Tensor:
    """The batching engine's input (rows of the model's input shape, normalised as in training)."""
    values = elements(tensor, rows)
    if isinstance(values, list):  # encoded images: today's preprocessing, within its limits
        inputs, _ = await decoder.decode_bytes(
            values,
            invert_of(tensor.parameters),
            lambda error, index: error.about(f"{tensor.name}[{index}]"),
        )
        return inputs
    if tensor.datatype == "UINT8":
        return model_input(values, rows)
    x = torch.from_numpy(values.reshape(INPUT.shape(rows)).copy())
    if not torch.isfinite(x).all():
        raise BadRequest(f"input {tensor.name!r} holds values that are not finite numbers (NaN or infinity)")
    if x.abs().max() > MAX_NORMALISED:  # far outside any image: the logits would overflow to NaN
        raise BadRequest(
            f"input {tensor.name!r} holds values beyond +-{MAX_NORMALISED:g}: it takes grey levels "
            f"normalised as in training, {NORMALISATION}"
        )
    return x


def invert_of(parameters: dict[str, Any]) -> Invert:
    """The `invert` parameter of an image input, as /predict's query parameter: auto, true, false."""
    value = parameters.get("invert", Invert.AUTO.value)
    text = str(value).lower() if isinstance(value, bool | str) else ""
    try:
        return Invert(text)
    except ValueError:
        raise BadRequest(f"parameter 'invert' must be auto, true or false, got {shown(value)}") from None


async def parsed(size: int, parse: Callable[[], T], decoder: Decoder) -> T:
    """`parse()` of a request of `size` bytes: on a decoding thread past OFF_LOOP_BYTES, here below
    it (a hand-off to a thread costs more than a small parse)."""
    return await decoder.off_loop(parse) if size > OFF_LOOP_BYTES else parse()


def check_declared(
    request: InferRequest, model: str, version: str | None, engine: BatchingEngine
) -> tuple[InputTensor, int, list[RequestedOutput]]:
    """What a request declares, checked before its elements are looked at: the model and version,
    its one input's name, datatype and shape (rows within the limit), and the outputs it names."""
    check_model(model, version, engine)
    tensor, rows = the_input(request, max_rows(engine))
    return tensor, rows, requested_outputs(request)


async def infer(
    request: InferRequest,
    model: str,
    version: str | None,
    engine: BatchingEngine,
    decoder: Decoder,
    recent: RecentInputs,
    policy: NotADigitPolicy,
) -> InferResult:
    """Check, run through the batching engine (split into engine batches and reassembled in order)
    and compute the outputs asked for (with refusing on, a row not a digit is a 422 for all)."""
    tensor, rows, wanted = check_declared(request, model, version, engine)
    x = await engine_input(tensor, rows, decoder)
    log_probs, answering = await engine.infer(x)
    served = answering.version
    if version and served != version:  # the active version changed while this request waited
        raise VersionNotFound(
            f"model {MODEL_NAME!r} version {shown(version)} stopped being served while this request waited; "
            f"the active version is {served!r}"
        )
    judged = policy.judged(log_probs, answering)
    logs = log_probs.numpy().astype(NUMPY_TYPES["FP32"], copy=False)
    computed: dict[str, Callable[[], np.ndarray]] = {
        "log_probs": lambda: logs,
        # Calibrated: the network's own log-softmax at its fitted temperature (1.0: unchanged).
        "probs": lambda: np.exp(
            calibrated(log_probs, answering.temperature).numpy().astype(NUMPY_TYPES["FP32"], copy=False)
        ),
        "digit": lambda: logs.argmax(axis=1).astype(NUMPY_TYPES["INT64"]),
        "not_a_digit": lambda: judged.flagged.numpy().astype(NUMPY_TYPES["BOOL"], copy=False),
        "ood_score": lambda: judged.scores.numpy().astype(NUMPY_TYPES["FP32"], copy=False),
    }
    outputs = [
        OutputTensor(out.name, OUTPUTS[out.name].datatype, computed[out.name](), out.binary) for out in wanted
    ]
    named = request_id()
    recent.keep(named, x)  # a correction may name these predictions instead of sending the images
    logged(named, lambda: logs.argmax(axis=1).tolist(), served)
    return InferResult(served, outputs, named)
