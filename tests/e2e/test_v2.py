"""The Open Inference Protocol v2 over real HTTP and gRPC, called with Triton's own client library
(tritonclient) against a real server process: the same answers as /predict, every kind of input
both ways, the limits, the errors, the metrics, a hot swap under load, and `python -m app`."""

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from app import __version__
from models.checkpoint import load_checkpoint
from tests.images import encode
from tests.server import ServerProcess, free_port, fresh_deployment, two_versions
from tests.tolerances import assert_log_probs_close
from tests.tools import polled
from tests.uploads import post_all
from tests.v2_client import (
    OUTPUTS,
    as_inputs,
    call_grpc,
    infer_grpc,
    infer_http,
    raw_outputs,
    typed_contents_request,
)
from training.data import Mnist
from training.loop import to_model_input

N_EXACT = 1000
KINDS = ("input", "pixels", "image")
HEADER = "Inference-Header-Content-Length"


class V2Server(ServerProcess):
    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.env['MNIST_GRPC_PORT']}"

    @property
    def http_url(self) -> str:
        return self.url.removeprefix("http://")


def v2_server(env: dict[str, str], production: bool = False) -> V2Server:
    return V2Server({**env, "MNIST_GRPC_PORT": str(free_port())}, production=production, ready_path="/readyz")


@pytest.fixture(scope="module")
def server(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    env = fresh_deployment(tmp_path_factory.mktemp("v2"), trained_checkpoint)
    with v2_server(env) as running:
        yield running


@pytest.fixture(scope="module")
def expected(server: V2Server, mnist: Mnist) -> dict[str, Any]:
    """What /predict answers for the first 1,000 test digits (as PNG uploads)."""

    async def predict() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await post_all(client, [encode(image) for image in mnist.test_images[:N_EXACT]])

    responses = asyncio.run(predict())
    assert all(response.status_code == 200 for response in responses)
    answers = [response.json() for response in responses]
    return {
        "digits": [answer["digit"] for answer in answers],
        "log_probs": torch.tensor([answer["log_probs"] for answer in answers]),
        "probs": np.array([answer["probs"] for answer in answers]),
        "not_a_digit": [answer["not_a_digit"] for answer in answers],
        "ood_score": np.array([answer["ood_score"] for answer in answers]),
        "version": answers[0]["model_version"],
    }


def assert_same_as_predict(outputs: dict[str, np.ndarray], expected: dict[str, Any], rows: slice) -> None:
    digits = outputs["digit"]
    assert digits.dtype == np.int64 and digits.shape == (rows.stop - rows.start,)
    assert digits.tolist() == expected["digits"][rows]
    log_probs = torch.from_numpy(outputs["log_probs"].copy())
    assert_log_probs_close(log_probs, expected["log_probs"][rows])
    np.testing.assert_allclose(outputs["probs"], expected["probs"][rows], rtol=1e-5, atol=1e-6)
    flagged = outputs["not_a_digit"]
    assert flagged.dtype == np.bool_ and flagged.tolist() == expected["not_a_digit"][rows]
    np.testing.assert_allclose(outputs["ood_score"], expected["ood_score"][rows], atol=1e-6)


def test_health_and_metadata_over_http_and_grpc(server: V2Server, trained_checkpoint: Path) -> None:
    version = load_checkpoint(trained_checkpoint).version
    inputs = [
        {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 28, 28]},
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
    ]
    outputs = [
        {"name": "log_probs", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "probs", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "digit", "datatype": "INT64", "shape": [-1]},
        {"name": "not_a_digit", "datatype": "BOOL", "shape": [-1]},
        {"name": "ood_score", "datatype": "FP32", "shape": [-1]},
    ]
    with triton_http.InferenceServerClient(server.http_url) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mnist") and client.is_model_ready("mnist", version)
        assert not client.is_model_ready("mnist", "not-this-one")
        assert client.get_server_metadata() == {
            "name": "mnist-serve",
            "version": __version__,
            "extensions": ["binary_tensor_data"],
        }
        metadata = client.get_model_metadata("mnist")
        assert metadata == {
            "name": "mnist",
            "versions": [version],
            "platform": "pytorch",
            "inputs": inputs,
            "outputs": outputs,
        }
        assert client.get_model_metadata("mnist", version) == metadata
        # Triton's model configuration, as perf_analyzer reads it: a request takes any one input
        config = client.get_model_config("mnist")
        assert config["max_batch_size"] == 64 * 16
        assert [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in config["input"]] == [
            ("input", "TYPE_FP32", [1, 28, 28], True),
            ("pixels", "TYPE_UINT8", [28, 28], True),
            ("image", "TYPE_STRING", [], True),
        ]
        assert [o["name"] for o in config["output"]] == [
            "log_probs",
            "probs",
            "digit",
            "not_a_digit",
            "ood_score",
        ]
        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("fashion")
        assert unknown.value.status() == "404" and "unknown model 'fashion'" in unknown.value.message()
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mnist") and client.is_model_ready("mnist", version)
        assert not client.is_model_ready("mnist", "not-this-one")
        served = client.get_server_metadata(as_json=True)
        assert served == {"name": "mnist-serve", "version": __version__, "extensions": ["binary_tensor_data"]}
        by_grpc = client.get_model_metadata("mnist", as_json=True)
        # protobuf's JSON writes int64 as strings
        assert by_grpc["versions"] == [version]
        assert [{**i, "shape": [int(d) for d in i["shape"]]} for i in by_grpc["inputs"]] == inputs
        assert [{**o, "shape": [int(d) for d in o["shape"]]} for o in by_grpc["outputs"]] == outputs
        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("fashion")
        assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_without_a_model_both_protocols_are_live_and_not_ready(tmp_path: Path) -> None:
    env = {
        "MNIST_MODEL_PATH": str(tmp_path / "models" / "mnist_cnn.pt"),
        "MNIST_STATE_DIR": str(tmp_path / "state"),
    }
    with V2Server({**env, "MNIST_GRPC_PORT": str(free_port())}) as server:  # up, not ready
        with triton_http.InferenceServerClient(server.http_url) as client:
            assert client.is_server_live() and not client.is_server_ready()
            assert not client.is_model_ready("mnist")
        with triton_grpc.InferenceServerClient(server.grpc_url) as client:
            assert client.is_server_live() and not client.is_server_ready()
            assert not client.is_model_ready("mnist")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_answers_match_predict_for_1000_digits(
    server: V2Server, mnist: Mnist, expected: dict[str, Any], kind: str, binary: bool
) -> None:
    """Binary: all 1,000 in one request (16 engine batches, reassembled in order). JSON: in requests
    of 250, which keeps a JSON body of normalised floats under the body limit."""
    step = N_EXACT if binary else 250
    seen: set[str] = set()  # each request's prediction id, names of its rows `<id>-<i>`
    for start in range(0, N_EXACT, step):
        rows = slice(start, start + step)
        result = infer_http(server.http_url, kind, mnist.test_images[rows], binary, request_id=f"r{start}")
        assert result.get_response()["id"] == f"r{start}"
        assert result.get_response()["model_version"] == expected["version"]
        named = result.get_response()["parameters"]["prediction_id"]
        assert re.fullmatch(r"[0-9a-f]{16}", named) and named not in seen
        seen.add(named)
        assert_same_as_predict({name: result.as_numpy(name) for name in OUTPUTS}, expected, rows)


@pytest.mark.parametrize("kind", KINDS)
def test_grpc_answers_match_predict_for_1000_digits(
    server: V2Server, mnist: Mnist, expected: dict[str, Any], kind: str
) -> None:
    images = mnist.test_images[:N_EXACT]
    raw = infer_grpc(server.grpc_url, kind, images, request_id="raw")
    assert raw.get_response().id == "raw" and raw.get_response().model_version == expected["version"]
    assert re.fullmatch(r"[0-9a-f]{16}", raw.get_response().parameters["prediction_id"].string_param)
    assert_same_as_predict({name: raw.as_numpy(name) for name in OUTPUTS}, expected, slice(0, N_EXACT))
    typed = call_grpc(server.grpc_url, "ModelInfer", typed_contents_request(kind, images))
    assert_same_as_predict(raw_outputs(typed), expected, slice(0, N_EXACT))


def test_outputs_default_to_log_probs_and_json(server: V2Server, mnist: Mnist) -> None:
    _, pixels = as_inputs("pixels", mnist.test_images[:3])
    body = {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [3, 28, 28], "data": pixels.tolist()}]
    }
    response = httpx.post(f"{server.url}/v2/models/mnist/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert [output["name"] for output in answer["outputs"]] == ["log_probs"]
    assert answer["outputs"][0]["shape"] == [3, 10] and len(answer["outputs"][0]["data"]) == 30
    # binary_data_output: every output in binary after the JSON, unless one says otherwise
    body["parameters"] = {"binary_data_output": True}
    body["outputs"] = [{"name": "digit"}, {"name": "probs", "parameters": {"binary_data": False}}]
    response = httpx.post(f"{server.url}/v2/models/mnist/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER])
    head = json.loads(response.content[:length])
    digit, probs = head["outputs"]
    assert digit["parameters"] == {"binary_data_size": 24} and "data" not in digit
    assert np.frombuffer(response.content[length:], "<i8").tolist() == mnist.test_labels[:3].tolist()
    assert len(probs["data"]) == 30


def binary_request(document: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(document).encode()
    return head + b"".join(blobs), {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def pixels_input(rows: int, **extra: Any) -> dict[str, Any]:
    return {"name": "pixels", "datatype": "UINT8", "shape": [rows, 28, 28], **extra}


BAD_HTTP: list[tuple[str, dict[str, Any], bytes, int, str]] = [
    # (what, JSON document, binary data after it, status, words in the error)
    (
        "wrong input name",
        {"inputs": [{**pixels_input(1), "name": "pixel", "data": [0] * 784}]},
        b"",
        400,
        "unknown input 'pixel'",
    ),
    (
        "wrong datatype",
        {"inputs": [{**pixels_input(1), "datatype": "FP32", "data": [0.0] * 784}]},
        b"",
        400,
        "must be UINT8",
    ),
    (
        "wrong shape",
        {"inputs": [pixels_input(1, shape=[1, 28, 27], data=[0] * 756)]},
        b"",
        400,
        "must have shape [-1, 28, 28]",
    ),
    ("JSON element count", {"inputs": [pixels_input(2, data=[0] * 784)]}, b"", 400, "holds 784 elements"),
    (
        "binary byte count",
        {"inputs": [pixels_input(2, parameters={"binary_data_size": 784})]},
        bytes(784),
        400,
        "takes 1568 bytes; 784 were sent",
    ),
    (
        "truncated binary body",
        {"inputs": [pixels_input(2, parameters={"binary_data_size": 1568})]},
        bytes(1000),
        400,
        "truncated",
    ),
    (
        "binary data left over",
        {"inputs": [pixels_input(1, parameters={"binary_data_size": 784})]},
        bytes(790),
        400,
        "6 bytes of binary data follow",
    ),
    (
        "two inputs",
        {"inputs": [pixels_input(1, data=[0] * 784), pixels_input(1, data=[0] * 784)]},
        b"",
        400,
        "exactly one input",
    ),
    ("pixel out of range", {"inputs": [pixels_input(1, data=[256] * 784)]}, b"", 400, "from 0 to 255"),
    (
        "unknown output",
        {"inputs": [pixels_input(1, data=[0] * 784)], "outputs": [{"name": "logits"}]},
        b"",
        400,
        "unknown output 'logits'",
    ),
    (
        "too many images",
        {"inputs": [pixels_input(1025, parameters={"binary_data_size": 1025 * 784})]},
        bytes(1025 * 784),
        413,
        "at most 1024",
    ),
    (
        "not base64",
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]},
        b"",
        400,
        "not valid base64",
    ),
    (
        "not an image",
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]},
        b"",
        415,
        "image[0]: not an image",
    ),
    (
        "normalised values far out of range",
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [3e38] * 784}]},
        b"",
        400,
        "beyond +-1000",
    ),
    (
        "shape as text",
        {"inputs": [pixels_input(1, shape=["1", 28, 28], data=[0] * 784)]},
        b"",
        400,
        "inputs.0.shape.0",
    ),
]


@pytest.mark.parametrize(
    ("what", "document", "blob", "status", "words"), BAD_HTTP, ids=[case[0] for case in BAD_HTTP]
)
def test_bad_http_requests_get_the_right_4xx(
    server: V2Server, what: str, document: dict[str, Any], blob: bytes, status: int, words: str
) -> None:
    content, headers = binary_request(document, blob) if blob else (json.dumps(document).encode(), {})
    response = httpx.post(f"{server.url}/v2/models/mnist/infer", content=content, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()


def test_http_limits_and_envelope_errors(server: V2Server, mnist: Mnist) -> None:
    url = f"{server.url}/v2/models/mnist/infer"
    huge = httpx.post(url, content=b"x" * (20 * 1024 * 1024), headers={HEADER: "10"}, timeout=60)
    assert huge.status_code == 413 and "larger than the limit" in huge.json()["error"]
    for header, words in (("99999", "the body holds"), ("ten", "whole number")):
        response = httpx.post(url, content=b"{}", headers={HEADER: header})
        assert response.status_code == 400 and words in response.json()["error"]
    assert httpx.post(url, content=b"{not json").status_code == 400
    assert httpx.post(url, content=b"{}", headers={"Content-Encoding": "gzip"}).status_code == 415
    other = httpx.post(f"{server.url}/v2/models/fashion/infer", json={"inputs": []})
    assert other.status_code == 404 and "unknown model" in other.json()["error"]
    version = httpx.post(f"{server.url}/v2/models/mnist/versions/nope/infer", json={"inputs": []})
    assert version.status_code == 404 and "'nope' is not being served" in version.json()["error"]
    assert httpx.get(f"{server.url}/v2/nothing/here").json() == {"error": "Not Found"}
    nan = np.full((1, 1, 28, 28), np.nan, dtype="<f4").tobytes()
    content, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 1, 28, 28],
                    "parameters": {"binary_data_size": len(nan)},
                }
            ]
        },
        nan,
    )
    assert httpx.post(url, content=content, headers=headers).status_code == 400
    # tritonclient's own view of a bad request: the status and the server's words
    _, pixels = as_inputs("pixels", mnist.test_images[:2])
    tensor = triton_http.InferInput("pixels", [2, 28, 28], "UINT8")
    tensor.set_data_from_numpy(pixels)
    tensor.set_shape([3, 28, 28])  # declares three images, carries two
    with (
        triton_http.InferenceServerClient(server.http_url) as client,
        pytest.raises(InferenceServerException) as error,
    ):
        client.infer("mnist", [tensor])
    assert error.value.status() == "400" and "takes 2352 bytes; 1568 were sent" in error.value.message()


def grpc_error(server: V2Server, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call_grpc(server.grpc_url, "ModelInfer", request)
    return error.value


def pixels_request(rows: int, raw: bytes, **tensor: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(**{"name": "pixels", "datatype": "UINT8", "shape": [rows, 28, 28], **tensor})
    request.raw_input_contents.append(raw)
    return request


def test_bad_grpc_requests_get_the_right_status_code(server: V2Server) -> None:
    cases: list[tuple[Any, grpc.StatusCode, str]] = [
        (
            pixels_request(1, bytes(784), name="pixel"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown input 'pixel'",
        ),
        (pixels_request(1, bytes(784), datatype="INT8"), grpc.StatusCode.INVALID_ARGUMENT, "must be UINT8"),
        (pixels_request(1, bytes(784), shape=[1, 784]), grpc.StatusCode.INVALID_ARGUMENT, "must have shape"),
        (pixels_request(2, bytes(784)), grpc.StatusCode.INVALID_ARGUMENT, "takes 1568 bytes; 784 were sent"),
        (pixels_request(1025, bytes(1025 * 784)), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 1024"),
        (pixels_request(1, bytes(20 * 1024 * 1024)), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ]
    truncated = service_pb2.ModelInferRequest(model_name="mnist")
    truncated.inputs.add(name="image", datatype="BYTES", shape=[1])
    truncated.raw_input_contents.append((5000).to_bytes(4, "little") + b"\x89PNG")  # says 5000 bytes, has 4
    cases.append((truncated, grpc.StatusCode.INVALID_ARGUMENT, "element 0 declares 5000 bytes; 4 remain"))
    wrong_field = service_pb2.ModelInferRequest(model_name="mnist")
    wrong_field.inputs.add(name="pixels", datatype="UINT8", shape=[1, 28, 28]).contents.fp32_contents.extend(
        [0.0] * 784
    )
    cases.append((wrong_field, grpc.StatusCode.INVALID_ARGUMENT, "uint_contents"))
    short = service_pb2.ModelInferRequest(model_name="mnist")
    short.inputs.add(name="pixels", datatype="UINT8", shape=[2, 28, 28]).contents.uint_contents.extend(
        [0] * 784
    )
    cases.append((short, grpc.StatusCode.INVALID_ARGUMENT, "holds 784 elements"))
    unknown = pixels_request(1, bytes(784))
    unknown.model_name = "fashion"
    cases.append((unknown, grpc.StatusCode.NOT_FOUND, "unknown model"))
    old = pixels_request(1, bytes(784))
    old.model_version = "nope"
    cases.append((old, grpc.StatusCode.NOT_FOUND, "not being served"))
    for request, code, words in cases:
        error = grpc_error(server, request)
        assert error.code() == code, (words, error.code(), error.details())
        assert words in (error.details() or ""), (words, error.details())


def test_metrics_count_v2_and_grpc_requests(server: V2Server, mnist: Mnist) -> None:
    infer_http(server.http_url, "pixels", mnist.test_images[:2], binary=True)
    infer_grpc(server.grpc_url, "pixels", mnist.test_images[:2])
    grpc_error(server, pixels_request(2, bytes(10)))
    text = httpx.get(f"{server.url}/metrics").text
    assert (
        'mnist_http_requests_total{method="POST",route="/v2/models/{model_name}/infer",status="200"}' in text
    )
    assert 'mnist_grpc_requests_total{code="OK",method="ModelInfer"}' in text
    assert 'mnist_grpc_requests_total{code="INVALID_ARGUMENT",method="ModelInfer"}' in text
    assert 'mnist_grpc_request_duration_seconds_count{code="OK",method="ModelInfer"}' in text
    assert "mnist_batch_size_count" in text


def test_a_hot_swap_during_a_stream_of_v2_requests_fails_none(
    tmp_path: Path, small_checkpoint: Path, trained_checkpoint: Path, mnist: Mnist
) -> None:
    """Two kept versions; v2 requests over HTTP and gRPC stream while the active version flips
    back and forth: every answer is right for the version it names. Each request holds 200 images,
    four engine batches, so swaps also land between the batches of one request. Requests naming a
    version get its answer, or a 404 once it is no longer the one served."""
    env = two_versions(tmp_path, small_checkpoint, trained_checkpoint)
    models = {
        checkpoint.version: checkpoint
        for checkpoint in map(load_checkpoint, (small_checkpoint, trained_checkpoint))
    }
    images = mnist.test_images[:200]
    with torch.inference_mode():
        x = to_model_input(images, torch.device("cpu"))
        truth = {version: loaded.model(x) for version, loaded in models.items()}
    failures: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def check(version: str, log_probs: np.ndarray) -> None:
        seen.append(version)
        assert_log_probs_close(torch.from_numpy(log_probs.copy()), truth[version])

    def stream(call: Any) -> None:
        while not stop.is_set():
            try:
                call()
            except Exception as exc:
                failures.append(repr(exc))

    with v2_server(env) as server:

        def http_call() -> None:
            result = infer_http(server.http_url, "pixels", images, binary=True)
            check(result.get_response()["model_version"], result.as_numpy("log_probs"))

        def grpc_call() -> None:
            result = infer_grpc(server.grpc_url, "pixels", images)
            check(result.get_response().model_version, result.as_numpy("log_probs"))

        def versioned_call() -> None:
            version = list(models)[len(seen) % 2]
            _, pixels = as_inputs("pixels", images)
            content, headers = binary_request(
                {"inputs": [pixels_input(len(images), parameters={"binary_data_size": pixels.nbytes})]},
                pixels.tobytes(),
            )
            url = f"{server.url}/v2/models/mnist/versions/{version}/infer"
            response = httpx.post(url, content=content, headers=headers, timeout=30)
            if response.status_code == 404:
                assert (
                    "not being served" in response.json()["error"]
                    or "stopped being served" in response.json()["error"]
                )
                return
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["model_version"] == version
            check(version, np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(-1, 10))

        threads = [
            threading.Thread(target=stream, args=(call,))
            for call in (http_call, http_call, grpc_call, grpc_call, versioned_call)
        ]
        for thread in threads:
            thread.start()

        def answers_after(count: int) -> None:
            """Let the streams run until `count` answers in all (however slow the machine is today)."""
            polled(lambda: len(seen) >= count or bool(failures), timeout_s=60, what=f"not {count} answers")

        try:
            for version in [*models, *models]:
                answers_after(len(seen) + 5)
                assert (
                    httpx.post(f"{server.url}/model/versions/{version}/activate", timeout=30).status_code
                    == 200
                )
            answers_after(len(seen) + 5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert not failures, failures[:5]
    assert set(seen) == set(models), "both versions answered"
    assert len(seen) > 20
