"""Every bad input gets a clear 4xx and never a 500 (the `api` fixture checks the metrics after each
test); no model, a full queue and a slow model get 503 and 504, saying why."""

import asyncio
import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from app.main import create_app
from models.cnn import Net
from tests.asgi import Serve, settings_from
from tests.images import encode, png_header_only
from tests.server import fresh_deployment
from tests.uploads import image_file


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"GIF89a but not really an image at all", 400, "the GIF header is corrupt"),
        (b"\x89PNG\r\n\x1a\n" + bytes(30), 400, "the PNG header is corrupt"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 nonsense", 400, "the WEBP header is corrupt"),
        (b"hello, I am a text file", 415, "not an image"),
        (encode(np.zeros((28, 28))), 422, "blank"),
        (encode(np.full((64, 64, 3), 200)), 422, "blank"),
        (png_header_only(10000, 10000), 413, "pixels"),
    ],
)
async def test_bad_images(api: httpx.AsyncClient, body: bytes, status: int, words: str) -> None:
    response = await api.post("/predict", files=image_file(body))
    assert response.status_code == status
    assert words in response.json()["detail"]
    assert not response.json()["detail"].startswith("files[")  # one upload: no file to name


async def test_truncated_image(api: httpx.AsyncClient, digit: bytes) -> None:
    response = await api.post("/predict", files=image_file(digit[: len(digit) - 40]))
    assert response.status_code == 400
    assert "truncated or corrupt" in response.json()["detail"]


async def test_missing_file_field(api: httpx.AsyncClient, digit: bytes) -> None:
    response = await api.post("/predict", files={"image": ("d.png", digit, "image/png")})
    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]
    # A text field named `file` is there, but holds no image: the error table's "not an image", 415.
    response = await api.post("/predict", data={"file": "not a file"}, files={"other": ("x", b"y")})
    assert response.status_code == 415, response.text
    assert "not an image" in response.json()["detail"]


async def test_wrong_content_types(api: httpx.AsyncClient, digit: bytes) -> None:
    response = await api.post("/predict", content=digit, headers={"content-type": "image/png"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]
    assert (await api.post("/predict", json={"file": "abc"})).status_code == 415
    response = await api.post("/predict", content=b"x", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]


async def test_malformed_multipart(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/predict",
        content=b"--b\r\nnot headers at all",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400, response.text  # the error table: malformed multipart is 400
    assert "multipart" in response.json()["detail"]


async def test_bad_invert_value(api: httpx.AsyncClient, digit: bytes) -> None:
    response = await api.post("/predict", files=image_file(digit), params={"invert": "sometimes"})
    assert response.status_code == 422
    assert (
        await api.post("/predict", files=image_file(digit), params={"invert": "false"})
    ).status_code == 200


async def test_oversized_upload(api: httpx.AsyncClient) -> None:
    response = await api.post("/predict", files=image_file(b"\0" * (3 * 1024 * 1024)))
    assert response.status_code == 413
    assert "1048576 bytes" in response.json()["detail"]


async def test_batch_errors_name_the_file_and_predict_nothing(api: httpx.AsyncClient, digit: bytes) -> None:
    files = [
        ("files", ("good.png", digit, "image/png")),
        ("files", ("bad.txt", b"not an image", "text/plain")),
        ("files", ("good2.png", digit, "image/png")),
    ]
    response = await api.post("/predict/batch", files=files)
    assert response.status_code == 415
    assert response.json()["detail"].startswith("files[1] (bad.txt): ")
    assert "predictions" not in response.json()

    blank = [
        ("files", ("a.png", digit, "image/png")),
        ("files", ("blank.png", encode(np.zeros((28, 28))), "image/png")),
    ]
    response = await api.post("/predict/batch", files=blank)
    assert response.status_code == 422
    assert "files[1] (blank.png)" in response.json()["detail"]


async def test_too_many_files(api: httpx.AsyncClient, digit: bytes) -> None:
    files = [("files", (f"{i}.png", digit, "image/png")) for i in range(65)]
    response = await api.post("/predict/batch", files=files)
    assert response.status_code == 413
    assert "at most 64" in response.json()["detail"]
    assert (await api.post("/predict/batch", files=files[:64])).status_code == 200


async def test_batch_file_over_the_upload_limit(api: httpx.AsyncClient, digit: bytes) -> None:
    files = [
        ("files", ("ok.png", digit, "image/png")),
        ("files", ("huge.png", b"\0" * 1_100_000, "image/png")),
    ]
    response = await api.post("/predict/batch", files=files)
    assert response.status_code == 413
    assert "files[1] (huge.png)" in response.json()["detail"]


async def test_errors_are_counted_by_status(api: httpx.AsyncClient) -> None:
    await api.post("/predict", files=image_file(b"hello"))
    assert 'route="/predict",status="415"' in (await api.get("/metrics")).text


async def test_no_model_starts_and_says_why(
    serve: Serve, tmp_path: Path, digit: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    async with serve(MODEL_PATH=str(tmp_path / "none" / "mnist_cnn.pt")) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "no checkpoint file mnist_cnn.pt" in ready.json()["detail"]
        response = await client.post("/predict", files=image_file(digit))
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith("no model loaded: ")
        assert "python -m training" in detail and "POST /train" in detail
        assert str(tmp_path) not in detail  # no server paths leak to clients
        assert (await client.get("/model")).status_code == 503
        assert (await client.post("/predict/batch", files=[("files", ("a.png", digit))])).status_code == 503
        assert (await client.get("/v2/health/live")).status_code == 200
        for path in ("/v2/health/ready", "/v2/models/mnist/ready"):
            answer = await client.get(path)
            assert answer.status_code == 503
            assert answer.json()["error"].startswith("no model loaded: no checkpoint file mnist_cnn.pt. ")
    assert "serving model NONE" in caplog.text


@pytest.mark.parametrize("damage", ["corrupt", "mismatched"])
async def test_corrupt_or_mismatched_model_starts_and_says_why(
    serve: Serve, tmp_path: Path, small_checkpoint: Path, digit: bytes, damage: str
) -> None:
    path = tmp_path / "damaged" / "mnist_cnn.pt"
    path.parent.mkdir()
    data = small_checkpoint.read_bytes()
    if damage == "corrupt":
        path.write_bytes(data[: len(data) // 3])
        words = "corrupt or truncated"
    else:
        state = Net().state_dict()
        state["fc1.weight"] = torch.zeros(500, 801)
        torch.save(state, path)
        words = "no known architecture"
    async with serve(MODEL_PATH=str(path)) as client:
        assert words in (await client.get("/readyz")).json()["detail"]
        response = await client.post("/predict", files=image_file(digit))
        assert response.status_code == 503
        assert words in response.json()["detail"]


async def test_full_queue_answers_503_with_retry_after(serve: Serve, digit: bytes) -> None:
    async with serve(QUEUE_SIZE="1", MAX_BATCH_SIZE="1") as client:
        responses = await asyncio.gather(
            *(client.post("/predict", files=image_file(digit)) for _ in range(128))
        )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["detail"]


async def test_inference_timeout_answers_504(serve: Serve, digit: bytes) -> None:
    async with serve(REQUEST_TIMEOUT_S="0.000001") as client:
        responses = [await client.post("/predict", files=image_file(digit)) for _ in range(5)]
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 504} and 504 in statuses
    refused = next(r for r in responses if r.status_code == 504)
    assert "did not finish within" in refused.json()["detail"]


async def test_nothing_about_the_servers_files_is_shown(serve: Serve, tmp_path: Path) -> None:
    """GET /model names the model file, not where it lives; odd ids are not echoed at length."""
    async with serve(DATA_DIR=str(tmp_path / "data")) as client:
        model = await client.get("/model")
        assert str(tmp_path) not in model.text and "/models/" not in model.text
        assert model.json()["serving"]["settings"]["model_path"] == "mnist_cnn.pt"
        for path in ("/train/" + "a" * 300, "/model/versions/" + "a" * 300 + "/activate"):
            response = await (client.get(path) if path.startswith("/train") else client.post(path))
            assert response.status_code == 404 and len(response.text) < 200


async def test_an_unexpected_fault_is_a_bare_500_and_a_logged_traceback(
    small_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault of the server's own (here a route that fails, since no input may cause one) answers
    500 with nothing of its text: no path, no library message; the log keeps all of it."""
    app = create_app(settings_from(fresh_deployment(tmp_path, small_checkpoint)))
    fault = f"[Errno 13] Permission denied: '{tmp_path}/state/jobs.sqlite3' (sqlite3.OperationalError)"

    async def failing() -> None:
        raise RuntimeError(fault)

    app.add_api_route("/faulty", failing)
    app.add_api_route("/v2/faulty", failing)
    caplog.set_level(logging.ERROR, logger="app")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://mnist-serve") as client,
    ):
        plain, v2 = await client.get("/faulty"), await client.get("/v2/faulty")
    assert (plain.status_code, plain.json()) == (500, {"detail": "internal server error"})
    assert (v2.status_code, v2.json()) == (500, {"error": "internal server error"})
    assert fault in caplog.text and "Traceback" in caplog.text


async def test_a_method_not_allowed_names_every_method_its_path_takes(api: httpx.AsyncClient) -> None:
    """`/train` is two routes (POST, GET) and `/train/{id}` two more (GET, DELETE): a 405 at either
    path names them all, as schemathesis checks (RFC 9110: Allow lists the methods the target
    resource supports)."""
    for path, allowed in (("/train", "GET, POST"), ("/train/some-job", "DELETE, GET")):
        for method in ("OPTIONS", "PUT", "PATCH"):
            answer = await api.request(method, path)
            assert answer.status_code == 405 and answer.headers["allow"] == allowed, (method, path)
    answer = await api.request("PUT", "/predict")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
