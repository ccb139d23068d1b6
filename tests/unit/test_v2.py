"""The v2 protocol's pieces without a server: the binary layout, the REST codec's checks, the gRPC
port check, and the generated gRPC modules against their proto."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.__main__ import grpc_port_taken
from app.errors import BadRequest, PayloadTooLarge, ServiceError, TooManyFiles
from app.v2.protocol import (
    InferRequest,
    InferResult,
    InputTensor,
    OutputTensor,
    bytes_items,
    elements,
    the_input,
)
from app.v2.rest import HEADER_LENGTH, JSON_SLACK, encode_response, parse_request
from tests.server import REPO


def binary_body(document: dict[str, object], blob: bytes) -> tuple[bytes, str]:
    head = json.dumps(document).encode()
    return head + blob, str(len(head))


def test_bytes_elements_are_length_prefixed_and_a_short_one_is_refused() -> None:
    raw = (3).to_bytes(4, "little") + b"abc" + (0).to_bytes(4, "little") + (2).to_bytes(4, "little") + b"xy"
    assert bytes_items(raw, "image", 3) == [b"abc", b"", b"xy"]
    with pytest.raises(BadRequest, match="element 1 declares 9 bytes; 2 remain"):
        bytes_items(raw[:7] + (9).to_bytes(4, "little") + b"xy", "image", 3)
    with pytest.raises(BadRequest, match="inside an element's length prefix"):
        bytes_items(raw[:9], "image", 3)


def test_a_bytes_tensor_with_more_elements_than_its_shape_stops_being_read_at_once() -> None:
    """Four million empty elements in 16 MB: read one past the shape's count, then refused."""
    raw = bytes(16 * 1024 * 1024)
    assert len(bytes_items(raw, "image", 5)) == 6
    tensor = InputTensor("image", "BYTES", [5], raw=raw)
    with pytest.raises(BadRequest, match=r"holds more than 6 elements"):
        elements(tensor, 5)


def test_binary_inputs_are_cut_from_the_body_in_order() -> None:
    pixels = np.arange(784 * 2, dtype=np.uint32).astype(np.uint8)
    document = {
        "id": "a",
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": [2, 28, 28],
                "parameters": {"binary_data_size": 1568},
            }
        ],
        "outputs": [{"name": "digit", "parameters": {"binary_data": True}}, {"name": "probs"}],
        "parameters": {"binary_data_output": False},
    }
    body, length = binary_body(document, pixels.tobytes())
    request = parse_request(body, length)
    tensor, rows = the_input(request, 1024)
    assert rows == 2 and request.id == "a"
    assert np.array_equal(elements(tensor, rows), pixels)
    assert [(output.name, output.binary) for output in request.outputs] == [("digit", True), ("probs", None)]


@pytest.mark.parametrize(
    ("document", "blob", "length", "words"),
    [
        (
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [1, 28, 28],
                        "parameters": {"binary_data_size": 784},
                    }
                ]
            },
            b"",
            None,
            "no Inference-Header-Content-Length",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [1, 28, 28],
                        "data": [0],
                        "parameters": {"binary_data_size": 1},
                    }
                ]
            },
            bytes(1),
            "auto",
            "both data and binary_data_size",
        ),
        (
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28]}]},
            b"",
            None,
            "neither data nor",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [1, 28, 28],
                        "parameters": {"binary_data_size": -1},
                    }
                ]
            },
            b"",
            "auto",
            "whole number of bytes",
        ),
        (
            {
                "inputs": [
                    {"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [[0, 1], [2]]}
                ]
            },
            b"",
            None,
            "evenly nested",
        ),
        (
            {
                "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [0]}],
                "outputs": [{"name": "probs", "parameters": {"classification": 3}}],
            },
            b"",
            None,
            "classification extension",
        ),
        (
            {
                "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [0]}],
                "parameters": {"binary_data_output": "yes"},
            },
            b"",
            None,
            "true or false",
        ),
        ({"inputs": []}, b"", None, "inputs"),
        (
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [0]}]},
            b"",
            "\u00b2",
            "whole number",
        ),
        (
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [0]}]},
            b"",
            "1e3",
            "whole number",
        ),
    ],
)
def test_malformed_requests_are_400_saying_why(
    document: dict[str, object], blob: bytes, length: str | None, words: str
) -> None:
    body, computed = binary_body(document, blob)
    with pytest.raises(ServiceError) as error:
        parse_request(body, computed if length == "auto" else length)
    assert error.value.status_code == 400 and words in error.value.detail


def test_the_one_input_is_checked_against_the_metadata() -> None:
    def tensor(name: str = "pixels", datatype: str = "UINT8", shape: list[int] | None = None) -> InferRequest:
        return InferRequest([InputTensor(name, datatype, shape or [1, 28, 28], values=np.zeros(784))], [])

    assert the_input(tensor(), 1024)[1] == 1
    for request, words in [
        (tensor(name="pixel"), "unknown input 'pixel'"),
        (tensor(datatype="FP32"), "must be UINT8"),
        (tensor(shape=[1, 28]), "must have shape"),
        (tensor(shape=[0, 28, 28]), "holds no image"),
        (InferRequest([], []), "exactly one input"),
    ]:
        with pytest.raises(BadRequest, match=words):
            the_input(request, 1024)
    with pytest.raises(TooManyFiles, match="at most 1024"):
        the_input(tensor(shape=[1025, 28, 28]), 1024)


def test_fp32_values_must_be_numbers_and_uint8_whole_numbers_in_range() -> None:
    def values(datatype: str, data: object) -> InputTensor:
        shape = [1, 1, 28, 28] if datatype == "FP32" else [1, 28, 28]
        return InputTensor(
            "input" if datatype == "FP32" else "pixels", datatype, shape, values=np.asarray(data)
        )

    assert elements(values("FP32", [1] * 784), 1).dtype == np.dtype("<f4")  # integers are numbers
    for tensor, words in [
        (values("FP32", ["a"] * 784), "must hold numbers"),
        (values("FP32", [True] * 784), "must hold numbers"),
        (values("UINT8", [0.5] * 784), "whole numbers from 0 to 255"),
        (values("UINT8", [-1] * 784), "whole numbers from 0 to 255"),
        (values("UINT8", [0] * 783), "holds 783 elements"),
    ]:
        with pytest.raises(BadRequest, match=words):
            elements(tensor, 1)


def test_outputs_go_binary_as_asked_and_the_header_says_where_the_json_ends() -> None:
    request = InferRequest([], [], "x", {"binary_data_output": True})
    digits = np.array([7, 2], dtype="<i8")
    probs = np.full((2, 10), 0.1, dtype="<f4")
    result = InferResult(
        "v1", [OutputTensor("digit", "INT64", digits), OutputTensor("probs", "FP32", probs, False)], "0f1e"
    )
    body, headers, media_type = encode_response(request, result)
    length = int(headers[HEADER_LENGTH])
    head = json.loads(body[:length])
    assert media_type == "application/octet-stream" and head["id"] == "x" and head["model_version"] == "v1"
    assert head["parameters"] == {"prediction_id": "0f1e"}
    assert head["outputs"][0] == {
        "name": "digit",
        "datatype": "INT64",
        "shape": [2],
        "parameters": {"binary_data_size": 16},
    }
    assert head["outputs"][1]["data"] == pytest.approx([0.1] * 20)
    assert np.frombuffer(body[length:], "<i8").tolist() == [7, 2]


def test_a_grpc_port_in_use_is_found_before_serving() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert grpc_port_taken("127.0.0.1", port) == "Address already in use"
    assert grpc_port_taken("127.0.0.1", port) is None  # closed (even if in TIME_WAIT): free


def test_the_generated_grpc_modules_match_the_proto(tmp_path: Path) -> None:
    """`make proto` was run after the last change to app/v2/grpc_predict_v2.proto."""
    proto = "app/v2/grpc_predict_v2.proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        ".",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        proto,
    ]
    subprocess.run(command, cwd=REPO, check=True)
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py"):
        assert (tmp_path / "app/v2" / name).read_text() == (REPO / "app/v2" / name).read_text(), name


def test_a_json_document_that_must_hold_more_values_than_any_request_is_refused_unparsed() -> None:
    """Counting commas costs nothing; parsing millions of numbers makes an object of each."""

    def document(values: int) -> bytes:
        data = ",".join(["0"] * values)
        tensor = f'"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [{data}]'
        return ('{"inputs": [{' + tensor + "}]}").encode()  # 5 commas of its own

    assert parse_request(document(784), None, most_values=784).inputs[0].values.size == 784
    most = 784 + JSON_SLACK - 5 + 1  # values whose commas (and the document's 5) reach the bound
    assert parse_request(document(most), None, most_values=784).inputs[0].values.size == most
    with pytest.raises(PayloadTooLarge) as refused:
        parse_request(document(most + 1), None, most_values=784)
    assert str(refused.value) == (
        f"the JSON document holds {784 + JSON_SLACK + 1} commas: more values than a request may carry "
        "(784); send large tensors in binary (Inference-Header-Content-Length)"
    )
