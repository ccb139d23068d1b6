"""The v2 protocol over HTTP: a JSON request (with the binary tensor data extension: tensors' bytes
after the JSON, its length in the Inference-Header-Content-Length header) to an InferRequest, and
an InferResult to the JSON answer, each output in JSON or in binary as the request asked."""

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import ValidationError

from app.errors import BadRequest, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from app.v2.protocol import (
    MODEL_NAME,
    InferRequest,
    InferResult,
    InputTensor,
    RequestedOutput,
    raw_bytes,
    shown,
)
from app.v2.schemas import InferInputTensor, InferRequestBody

HEADER_LENGTH = "Inference-Header-Content-Length"
# Commas a JSON request may hold besides its values' (between fields, inputs, outputs, parameters).
JSON_SLACK = 4096


class InvalidInferRequest(InvalidRequest):
    """A JSON document that breaks the protocol's schema: a bad request, as the protocol says."""

    status_code = 400


def parse_request(
    body: bytes,
    header_length: str | None,
    check_declared: Callable[[InferRequest], object] = lambda _: None,
    most_values: int | None = None,
) -> InferRequest:
    """The request's JSON (and the binary data after it), checked against the protocol's schema and
    the binary sizes; the tensors themselves are checked against the model by the protocol.
    `check_declared` sees the request's names, datatypes and shapes before any JSON data becomes
    an array. A JSON document that must hold more than `most_values` values is refused unparsed:
    parsing makes an object of each (holding the GIL, so every thread waits), 20 times the bytes."""
    document_bytes, binary = split_body(body, header_length)
    if most_values is not None and (separators := document_bytes.count(b",")) > most_values + JSON_SLACK:
        raise PayloadTooLarge(
            f"the JSON document holds {separators} commas: more values than a request may carry "
            f"({most_values}); send large tensors in binary ({HEADER_LENGTH})"
        )
    try:
        document = InferRequestBody.model_validate_json(document_bytes)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise BadRequest(
                "the request is not valid JSON (a binary request says where its JSON ends "
                f"in the {HEADER_LENGTH} header)"
            ) from None
        raise InvalidInferRequest(error.errors()) from None
    inputs, offset, in_json = [], 0, []
    for given in document.inputs:
        parameters: dict[str, Any] = dict(given.parameters or {})
        size = parameters.pop("binary_data_size", None)
        if size is None:
            inputs.append(InputTensor(given.name, given.datatype, given.shape, parameters))
            in_json.append((inputs[-1], given))
            continue
        if given.data is not None:
            raise BadRequest(f"input {shown(given.name)} has both data and binary_data_size")
        if header_length is None:
            raise BadRequest(
                f"input {shown(given.name)} has binary_data_size but the request has no {HEADER_LENGTH}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {shown(given.name)}: binary_data_size must be a whole number of bytes")
        if offset + size > len(binary):
            raise BadRequest(
                f"input {shown(given.name)} declares binary_data_size {size} but only {len(binary) - offset} "
                "bytes of binary data remain: the body is truncated"
            )
        inputs.append(
            InputTensor(
                given.name, given.datatype, given.shape, parameters, raw=binary[offset : offset + size]
            )
        )
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the last binary input")
    binary_default = flag(document.parameters, "binary_data_output")
    outputs = [
        RequestedOutput(output.name, flag(output.parameters, "binary_data", refuse=("classification",)))
        for output in document.outputs or []
    ]
    parameters = dict(document.parameters or {})
    if binary_default is not None:
        parameters["binary_data_output"] = binary_default
    request = InferRequest(inputs, outputs, document.id or "", parameters)
    check_declared(request)
    for tensor, given in in_json:
        tensor.values = json_values(given)
    return request


def refuse_encoded(content_encoding: str | None) -> None:
    """Compressed bodies are refused: the size limits count the bytes the server must hold."""
    if content_encoding and content_encoding.strip().lower() != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {content_encoding[:40]!r} is not supported: send the request uncompressed"
        )


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON document and the binary data after it."""
    if header_length is None:
        return body, b""
    if not re.fullmatch(r"[0-9]{1,12}", header_length.strip()):  # ASCII only: "²".isdigit() is true
        raise BadRequest(f"{HEADER_LENGTH} must be a whole number of bytes, got {header_length[:40]!r}")
    length = int(header_length)
    if length > len(body):
        raise BadRequest(f"{HEADER_LENGTH} says the JSON takes {length} bytes; the body holds {len(body)}")
    return body[:length], body[length:]


def flag(parameters: dict[str, Any] | None, name: str, refuse: tuple[str, ...] = ()) -> bool | None:
    """A true/false parameter, if given; a parameter asking for an extension we lack is refused."""
    for unsupported in refuse:
        if parameters and unsupported in parameters:
            raise BadRequest(f"the {unsupported} extension is not supported: ask for the probs output")
    value = (parameters or {}).get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"parameter {name!r} must be true or false, got {shown(value)}")
    return value


def json_values(given: InferInputTensor) -> np.ndarray | list[bytes]:
    """An input's JSON data: numbers as a numpy array (flat or nested, checked by the protocol), BYTES
    elements from base64 (JSON cannot hold raw bytes)."""
    if given.data is None:
        raise BadRequest(f"input {shown(given.name)} has neither data nor parameters.binary_data_size")
    if given.datatype == "BYTES":
        items = []
        for index, item in enumerate(given.data):
            if not isinstance(item, str):
                raise BadRequest(
                    f"input {shown(given.name)}[{index}]: a BYTES element in JSON is a base64 string"
                )
            try:
                items.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise BadRequest(f"input {shown(given.name)}[{index}] is not valid base64") from None
        return items
    try:
        return np.asarray(given.data)
    except (ValueError, TypeError):
        raise BadRequest(
            f"input {shown(given.name)}: data must be a flat or evenly nested list of numbers"
        ) from None


def encode_response(request: InferRequest, result: InferResult) -> tuple[bytes, dict[str, str], str]:
    """The answer's body, headers and media type: outputs asked for in binary follow the JSON."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    described, blobs = [], []
    for output in result.outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.binary if output.binary is not None else binary_default:
            blob = raw_bytes(output.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = output.data.reshape(-1).tolist()
        described.append(entry)
    document: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": result.model_version}
    if request.id:
        document["id"] = request.id
    document["parameters"] = {"prediction_id": result.prediction_id}
    document["outputs"] = described
    head = json.dumps(document).encode()
    if not blobs:
        return head, {}, "application/json"
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head))}, "application/octet-stream"
