"""Every bad input gets a clear 4xx over real HTTP, never a 500; overload and no-model get 503/504."""

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.images import encode
from tests.server import ServerProcess
from tests.unit.test_preprocess import png_header_only
from training.data import Mnist


@pytest.fixture(scope="module")
def server(small_checkpoint: Path) -> Iterator[ServerProcess]:
    with ServerProcess({"MNIST_MODEL_PATH": str(small_checkpoint)}, ready_path="/readyz") as running:
        yield running


@pytest.fixture(scope="module")
def digit(mnist: Mnist) -> bytes:
    return encode(mnist.test_images[0])


def predict(server: ServerProcess, body: bytes, name: str = "digit.png", **kwargs: object) -> httpx.Response:
    return httpx.post(
        server.url + "/predict", files={"file": (name, body, "image/png")}, timeout=30, **kwargs
    )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"GIF89a but not really an image at all", 415, "not an image"),
        (b"hello, I am a text file", 415, "not an image"),
        (encode(np.zeros((28, 28))), 422, "blank"),
        (encode(np.full((64, 64, 3), 200)), 422, "blank"),
        (png_header_only(10000, 10000), 413, "pixels"),
    ],
)
def test_bad_images(server: ServerProcess, body: bytes, status: int, words: str) -> None:
    response = predict(server, body)
    assert response.status_code == status
    assert words in response.json()["detail"]


def test_truncated_image(server: ServerProcess, digit: bytes) -> None:
    response = predict(server, digit[: len(digit) - 40])
    assert response.status_code == 400
    assert "truncated or corrupt" in response.json()["detail"]


def test_missing_file_field(server: ServerProcess, digit: bytes) -> None:
    response = httpx.post(server.url + "/predict", files={"image": ("d.png", digit, "image/png")})
    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]
    response = httpx.post(server.url + "/predict", data={"file": "not a file"}, files={"other": ("x", b"y")})
    assert response.status_code in (400, 415, 422)


def test_wrong_content_types(server: ServerProcess, digit: bytes) -> None:
    response = httpx.post(server.url + "/predict", content=digit, headers={"content-type": "image/png"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]
    response = httpx.post(server.url + "/predict", json={"file": "abc"})
    assert response.status_code == 415
    response = httpx.post(
        server.url + "/predict", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]


def test_malformed_multipart(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "/predict",
        content=b"--b\r\nnot headers at all",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code in (400, 422)


def test_bad_invert_value(server: ServerProcess, digit: bytes) -> None:
    response = predict(server, digit, params={"invert": "sometimes"})
    assert response.status_code == 422
    assert predict(server, digit, params={"invert": "false"}).status_code == 200


def test_oversized_upload_gets_413_not_a_reset(server: ServerProcess) -> None:
    """3 MiB against a 1 MiB limit: the server drains the rest, so the client reads the 413."""
    response = predict(server, b"\0" * (3 * 1024 * 1024))
    assert response.status_code == 413
    assert "1048576 bytes" in response.json()["detail"]


def test_oversized_upload_over_a_raw_socket(server: ServerProcess) -> None:
    """The same with a plain socket sending the whole declared body: the 413 arrives intact."""
    body = b"\0" * (2 * 1024 * 1024)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413")


def test_batch_errors_name_the_file_and_predict_nothing(server: ServerProcess, digit: bytes) -> None:
    files = [
        ("files", ("good.png", digit, "image/png")),
        ("files", ("bad.txt", b"not an image", "text/plain")),
        ("files", ("good2.png", digit, "image/png")),
    ]
    response = httpx.post(server.url + "/predict/batch", files=files)
    assert response.status_code == 415
    assert response.json()["detail"].startswith("files[1] (bad.txt): ")
    assert "predictions" not in response.json()

    blank = [
        ("files", ("a.png", digit, "image/png")),
        ("files", ("blank.png", encode(np.zeros((28, 28))), "image/png")),
    ]
    response = httpx.post(server.url + "/predict/batch", files=blank)
    assert response.status_code == 422
    assert "files[1] (blank.png)" in response.json()["detail"]


def test_too_many_files(server: ServerProcess, digit: bytes) -> None:
    files = [("files", (f"{i}.png", digit, "image/png")) for i in range(65)]
    response = httpx.post(server.url + "/predict/batch", files=files)
    assert response.status_code == 413
    assert "at most 64" in response.json()["detail"]
    assert httpx.post(server.url + "/predict/batch", files=files[:64]).status_code == 200


def test_batch_file_over_the_upload_limit(server: ServerProcess, digit: bytes) -> None:
    files = [
        ("files", ("ok.png", digit, "image/png")),
        ("files", ("huge.png", b"\0" * 1_100_000, "image/png")),
    ]
    response = httpx.post(server.url + "/predict/batch", files=files)
    assert response.status_code == 413
    assert "files[1] (huge.png)" in response.json()["detail"]


def test_no_500_was_ever_answered(server: ServerProcess) -> None:
    """Run last in this module: after all the bad input above, the server never answered 5xx."""
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="5' not in metrics
    assert 'route="/predict",status="415"' in metrics


def test_no_model_starts_and_says_why(tmp_path: Path, digit: bytes) -> None:
    with ServerProcess({"MNIST_MODEL_PATH": str(tmp_path / "mnist_cnn.pt")}) as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503
        assert "no checkpoint file mnist_cnn.pt" in ready.json()["detail"]
        response = predict(server, digit)
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith("no model loaded: ")
        assert "python -m training" in detail and "POST /train" in detail
        assert str(tmp_path) not in detail  # no server paths leak to clients
        assert httpx.get(server.url + "/model").status_code == 503
        log = server.stop()
    assert "NONE" in log


@pytest.mark.parametrize("damage", ["corrupt", "mismatched"])
def test_corrupt_or_mismatched_model_starts_and_says_why(
    tmp_path: Path, small_checkpoint: Path, digit: bytes, damage: str
) -> None:
    path = tmp_path / "mnist_cnn.pt"
    data = small_checkpoint.read_bytes()
    if damage == "corrupt":
        path.write_bytes(data[: len(data) // 3])
        words = "corrupt or truncated"
    else:
        import torch

        from models.cnn import Net

        state = Net().state_dict()
        state["fc1.weight"] = torch.zeros(500, 801)
        torch.save(state, path)
        words = "no known architecture"
    with ServerProcess({"MNIST_MODEL_PATH": str(path)}) as server:
        assert words in httpx.get(server.url + "/readyz").json()["detail"]
        response = predict(server, digit)
        assert response.status_code == 503
        assert words in response.json()["detail"]


def test_full_queue_answers_503_with_retry_after(small_checkpoint: Path, digit: bytes) -> None:
    env = {"MNIST_MODEL_PATH": str(small_checkpoint), "MNIST_QUEUE_SIZE": "1", "MNIST_MAX_BATCH_SIZE": "1"}
    with ServerProcess(env, ready_path="/readyz") as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=64)
            ) as client:
                return await asyncio.gather(
                    *(client.post("/predict", files={"file": ("d.png", digit)}) for _ in range(128))
                )

        responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["detail"]


def test_inference_timeout_answers_504(small_checkpoint: Path, digit: bytes) -> None:
    env = {"MNIST_MODEL_PATH": str(small_checkpoint), "MNIST_REQUEST_TIMEOUT_S": "0.000001"}
    with ServerProcess(env, ready_path="/readyz") as server:
        statuses = [predict(server, digit).status_code for _ in range(5)]
        response = predict(server, digit)
    assert set(statuses) <= {200, 504} and 504 in statuses
    if response.status_code == 504:
        assert "did not finish within" in response.json()["detail"]
