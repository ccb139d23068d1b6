"""Refusals that a real socket shows: an oversized upload, or one file of a batch, is answered 413.
(Every other bad input is tested in process, in tests/api/test_errors.py.)"""

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import encode
from tests.server import ServerProcess
from tests.uploads import image_file
from training.data import Mnist


@pytest.fixture(scope="module")
def server(small_checkpoint: Path) -> Iterator[ServerProcess]:
    with ServerProcess({"MNIST_MODEL_PATH": str(small_checkpoint)}, ready_path="/readyz") as running:
        yield running


def test_oversized_upload_gets_413_not_a_reset(server: ServerProcess) -> None:
    """3 MiB against a 1 MiB limit: the server drains the rest, so the client reads the 413."""
    response = httpx.post(server.url + "/predict", files=image_file(b"\0" * (3 * 1024 * 1024)), timeout=30)
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


def test_a_batch_file_over_the_upload_limit_over_a_socket(server: ServerProcess, mnist: Mnist) -> None:
    files = [
        ("files", ("ok.png", encode(mnist.test_images[0]), "image/png")),
        ("files", ("huge.png", b"\0" * 1_100_000, "image/png")),
    ]
    response = httpx.post(server.url + "/predict/batch", files=files, timeout=30)
    assert response.status_code == 413
    assert "files[1] (huge.png)" in response.json()["detail"]


def test_no_5xx_was_ever_answered(server: ServerProcess) -> None:
    """Run last in this module."""
    assert 'status="5' not in httpx.get(server.url + "/metrics").text
