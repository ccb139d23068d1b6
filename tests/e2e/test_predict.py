"""POST /predict and /predict/batch over real HTTP against a real server and a real checkpoint."""

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from tests.images import black_on_white, encode, larger, rgb
from tests.server import ServerProcess
from tests.tolerances import assert_log_probs_close
from training.data import Mnist
from training.loop import to_model_input

N_EXACT = 1000


@pytest.fixture(scope="module")
def server(trained_checkpoint: Path) -> Iterator[ServerProcess]:
    with ServerProcess({"MNIST_MODEL_PATH": str(trained_checkpoint)}, ready_path="/readyz") as running:
        yield running


async def post_all(
    url: str, bodies: list[bytes], concurrency: int = 32, path: str = "/predict"
) -> list[httpx.Response]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(body: bytes) -> httpx.Response:
            async with limit:
                return await client.post(path, files={"file": ("digit.png", body, "image/png")})

        return await asyncio.gather(*(one(body) for body in bodies))


def test_predict_matches_the_model_in_process(
    server: ServerProcess, trained_checkpoint: Path, mnist: Mnist
) -> None:
    images = mnist.test_images[:N_EXACT]
    responses = asyncio.run(post_all(server.url, [encode(image) for image in images]))
    assert all(r.status_code == 200 for r in responses)
    loaded = load_checkpoint(trained_checkpoint)
    with torch.inference_mode():
        expected = loaded.model(to_model_input(images, torch.device("cpu")))
    got = torch.tensor([r.json()["log_probs"] for r in responses])
    digits = [r.json()["digit"] for r in responses]
    assert digits == expected.argmax(1).tolist()
    assert_log_probs_close(got, expected)
    for r in responses[:50]:
        body = r.json()
        assert body["model_version"] == loaded.version
        assert abs(sum(body["probs"]) - 1) < 1e-5
        assert body["confidence"] == max(body["probs"])
        assert np.allclose(np.exp(body["log_probs"]), body["probs"], atol=1e-7)


def test_return_input_shows_what_the_model_saw(server: ServerProcess, mnist: Mnist) -> None:
    digit = mnist.test_images[5]
    plain = httpx.post(server.url + "/predict", files={"file": ("d.png", encode(digit))}).json()
    assert "input_image" not in plain
    shown = httpx.post(
        server.url + "/predict",
        params={"return_input": "true"},
        files={"file": ("d.png", encode(255 - digit.numpy()))},
    ).json()
    header, data = shown["input_image"].split(",", 1)
    assert header == "data:image/png;base64"
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
    assert np.array_equal(seen, digit.numpy())  # inverted back: exactly the MNIST digit
    assert shown["log_probs"] == plain["log_probs"]


def test_batch_agrees_with_single(server: ServerProcess, mnist: Mnist) -> None:
    images = [encode(image) for image in mnist.test_images[:40]]
    files = [("files", (f"d{i}.png", body, "image/png")) for i, body in enumerate(images)]
    batch = httpx.post(server.url + "/predict/batch", files=files, timeout=30)
    assert batch.status_code == 200, batch.text
    singles = asyncio.run(post_all(server.url, images))
    predictions = batch.json()["predictions"]
    assert len(predictions) == 40
    assert [p["digit"] for p in predictions] == [s.json()["digit"] for s in singles]
    from_batch = torch.tensor([p["log_probs"] for p in predictions])
    assert_log_probs_close(from_batch, torch.tensor([s.json()["log_probs"] for s in singles]))
    assert batch.json()["model_version"] == singles[0].json()["model_version"]


VARIANTS = {
    "black on white": lambda d: encode(black_on_white(d)),
    "larger (100x100, off-centre)": lambda d: encode(larger(d)),
    "RGB": lambda d: encode(rgb(d)),
    "JPEG": lambda d: encode(d, "JPEG", quality=75),
    "large black-on-white JPEG": lambda d: encode(255 - larger(d, 200), "JPEG", quality=85),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_are_recognised(server: ServerProcess, mnist: Mnist, variant: str) -> None:
    images, labels = mnist.test_images[1000:1500], mnist.test_labels[1000:1500].tolist()
    files = [
        ("files", (f"{i}.img", VARIANTS[variant](d), "application/octet-stream"))
        for i, d in enumerate(images)
    ]
    digits = []
    for start in range(0, len(files), 50):
        response = httpx.post(server.url + "/predict/batch", files=files[start : start + 50], timeout=60)
        assert response.status_code == 200, response.text
        digits += [p["digit"] for p in response.json()["predictions"]]
    accuracy = sum(d == label for d, label in zip(digits, labels, strict=True)) / len(labels)
    assert accuracy >= 0.95, f"{variant}: {accuracy:.1%}"


def test_concurrent_requests_are_batched(server: ServerProcess, mnist: Mnist) -> None:
    def batches() -> tuple[float, float]:
        """(forward passes of one image, all forward passes) so far."""
        values = {}
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            name, _, value = line.rpartition(" ")
            values[name] = value
        return float(values['mnist_batch_size_bucket{le="1.0"}']), float(values["mnist_batch_size_count"])

    singles_before, total_before = batches()
    responses = asyncio.run(post_all(server.url, [encode(mnist.test_images[0])] * 200, concurrency=64))
    assert all(r.status_code == 200 for r in responses)
    singles_after, total_after = batches()
    # Some forward passes carried more than one image: fewer passes than requests.
    assert total_after - total_before < 200
    assert (total_after - total_before) - (singles_after - singles_before) > 0


def test_model_health_and_metrics(server: ServerProcess, trained_checkpoint: Path) -> None:
    model = httpx.get(server.url + "/model").json()
    assert model["model_version"] == load_checkpoint(trained_checkpoint).version
    assert model["arch"] == "net" and model["test_accuracy"] > 95
    assert model["serving"]["settings"]["max_batch_size"] == 64
    assert model["serving"]["device"] == "cpu"
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok", "model_version": None}
    assert httpx.get(server.url + "/readyz").json()["model_version"] == model["model_version"]
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "mnist_http_requests_total",
        "mnist_http_request_duration_seconds_bucket",
        "mnist_batch_size_bucket",
        "mnist_queue_wait_seconds_bucket",
        "mnist_inference_seconds_bucket",
        "mnist_queue_depth",
    ):
        assert name in metrics.text
    assert f'mnist_model_info{{arch="net",version="{model["model_version"]}"}} 1.0' in metrics.text
    assert 'route="/predict",status="200"' in metrics.text


def test_openapi_documents_the_endpoints(server: ServerProcess) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert "file" in predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= predict["responses"].keys()
    batch = spec["paths"]["/predict/batch"]["post"]
    assert (
        batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["files"]["type"]
        == "array"
    )
    for path in ("/model", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200
