"""/predict, /predict/batch, /model, health, metrics and the OpenAPI document, in process."""

import base64
import io
import logging
import re
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.config import LOW_CONFIDENCE
from models.checkpoint import load_checkpoint
from tests.asgi import Serve
from tests.images import black_on_white, encode, larger, rgb
from tests.server import REPO
from tests.tolerances import assert_log_probs_close
from tests.uploads import image_file, post_all
from training.data import Mnist


async def test_an_answer_has_every_field_and_they_agree(
    api: httpx.AsyncClient, small_checkpoint: Path, digit: bytes
) -> None:
    response = await api.post("/predict", files=image_file(digit))
    assert response.status_code == 200
    body = response.json()
    fields = {
        "digit",
        "confidence",
        "low_confidence",
        "not_a_digit",
        "ood_score",
        "log_probs",
        "probs",
        "model_version",
        "prediction_id",
    }
    assert set(body) == fields
    served = load_checkpoint(small_checkpoint)
    assert body["low_confidence"] == (body["confidence"] < LOW_CONFIDENCE)
    assert body["model_version"] == served.version
    assert abs(sum(body["probs"]) - 1) < 1e-5
    assert body["confidence"] == max(body["probs"]) and body["digit"] == int(np.argmax(body["probs"]))
    calibrated = torch.softmax(torch.tensor(body["log_probs"], dtype=torch.float64) / served.temperature, 0)
    assert np.allclose(calibrated.numpy(), body["probs"], atol=1e-7)
    # The score is the network's own, before calibration; the model's threshold flags it.
    assert body["ood_score"] == pytest.approx(1 - np.exp(max(body["log_probs"])), abs=1e-6)
    assert served.not_a_digit_threshold is not None
    assert body["not_a_digit"] == (body["ood_score"] > served.not_a_digit_threshold)


async def test_every_prediction_has_an_id_of_its_own(api: httpx.AsyncClient, digit: bytes) -> None:
    """`<request>-<row>`: one request's rows share the request's part, and no two requests do."""
    ones = [(await api.post("/predict", files=image_file(digit))).json()["prediction_id"] for _ in range(3)]
    batch = (await api.post("/predict/batch", files=[("files", ("d.png", digit))] * 3)).json()
    rows = [answer["prediction_id"] for answer in batch["predictions"]]
    assert all(re.fullmatch(r"[0-9a-f]{16}-0", one) for one in ones) and len(set(ones)) == 3
    request = rows[0].removesuffix("-0")
    assert rows == [f"{request}-{i}" for i in range(3)] and request not in {one[:16] for one in ones}


async def test_at_debug_the_log_names_each_request_s_predictions_and_their_version(
    api: httpx.AsyncClient, digit: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="app.predict.answers"):
        answer = (await api.post("/predict/batch", files=[("files", ("d.png", digit))] * 2)).json()
    request = answer["predictions"][0]["prediction_id"].removesuffix("-0")
    digits = [p["digit"] for p in answer["predictions"]]
    expected = f"predictions {request}-*: digits {digits} by model version {answer['model_version']}"
    assert expected in caplog.messages


async def test_return_input_shows_what_the_model_saw(api: httpx.AsyncClient, mnist: Mnist) -> None:
    digit = mnist.test_images[5]
    plain = (await api.post("/predict", files=image_file(encode(digit)))).json()
    assert "input_image" not in plain
    shown = (
        await api.post(
            "/predict", params={"return_input": "true"}, files=image_file(encode(255 - digit.numpy()))
        )
    ).json()
    header, data = shown["input_image"].split(",", 1)
    assert header == "data:image/png;base64"
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
    assert np.array_equal(seen, digit.numpy())  # inverted back: exactly the MNIST digit
    assert shown["log_probs"] == plain["log_probs"]


async def test_batch_agrees_with_single(api: httpx.AsyncClient, mnist: Mnist) -> None:
    images = [encode(image) for image in mnist.test_images[:40]]
    files = [("files", (f"d{i}.png", body, "image/png")) for i, body in enumerate(images)]
    batch = await api.post("/predict/batch", files=files)
    assert batch.status_code == 200, batch.text
    singles = await post_all(api, images)
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


@pytest.mark.slow  # judged on the full-epoch checkpoint
@pytest.mark.parametrize("variant", VARIANTS)
async def test_variants_are_recognised(
    serve: Serve, trained_checkpoint: Path, mnist: Mnist, variant: str
) -> None:
    images, labels = mnist.test_images[1000:1500], mnist.test_labels[1000:1500].tolist()
    files = [
        ("files", (f"{i}.img", VARIANTS[variant](d), "application/octet-stream"))
        for i, d in enumerate(images)
    ]
    digits = []
    async with serve(trained_checkpoint) as client:
        for start in range(0, len(files), 50):
            response = await client.post("/predict/batch", files=files[start : start + 50])
            assert response.status_code == 200, response.text
            digits += [p["digit"] for p in response.json()["predictions"]]
    accuracy = sum(d == label for d, label in zip(digits, labels, strict=True)) / len(labels)
    assert accuracy >= 0.95, f"{variant}: {accuracy:.1%}"


def batch_counts(metrics: str) -> tuple[float, float]:
    """(forward passes of one image, all forward passes) so far."""
    values = {}
    for line in metrics.splitlines():
        name, _, value = line.rpartition(" ")
        values[name] = value
    return float(values['mnist_batch_size_bucket{le="1.0"}']), float(values["mnist_batch_size_count"])


async def test_concurrent_requests_are_batched(api: httpx.AsyncClient, digit: bytes) -> None:
    singles_before, total_before = batch_counts((await api.get("/metrics")).text)
    responses = await post_all(api, [digit] * 200, concurrency=64)
    assert all(r.status_code == 200 for r in responses)
    singles_after, total_after = batch_counts((await api.get("/metrics")).text)
    # Some forward passes carried more than one image: fewer passes than requests.
    assert total_after - total_before < 200
    assert (total_after - total_before) - (singles_after - singles_before) > 0


async def test_model_health_and_metrics(api: httpx.AsyncClient, small_checkpoint: Path, digit: bytes) -> None:
    assert (await api.post("/predict", files=image_file(digit))).status_code == 200
    model = (await api.get("/model")).json()
    assert model["model_version"] == load_checkpoint(small_checkpoint).version
    assert model["arch"] == "net" and model["test_accuracy"] > 50
    assert model["hyperparameters"]["limit_train"] == 2000
    assert model["serving"]["settings"]["max_batch_size"] == 64
    assert model["serving"]["device"] == "cpu"
    assert (await api.get("/healthz")).json() == {"status": "ok", "model_version": None}
    assert (await api.get("/readyz")).json()["model_version"] == model["model_version"]
    metrics = await api.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert f'mnist_model_info{{arch="net",version="{model["model_version"]}"}} 1.0' in metrics.text


def samples(metrics: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}": value
        for family in text_string_to_metric_families(metrics)
        for name, labels, value, *_ in family.samples
    }


async def test_metrics_move_by_what_was_served(api: httpx.AsyncClient, digit: bytes) -> None:
    """Not that a name appears (its # HELP line always does): that each value moves by exactly
    what three predictions, one at a time, and one refusal did."""
    before = samples((await api.get("/metrics")).text)
    for _ in range(3):
        assert (await api.post("/predict", files=image_file(digit))).status_code == 200
    assert (await api.post("/predict", files=image_file(b"not an image"))).status_code == 415
    after = samples((await api.get("/metrics")).text)

    def moved(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = 'method="POST",route="/predict"'
    assert moved(f'mnist_http_requests_total{{{route},status="200"}}') == 3
    assert moved(f'mnist_http_requests_total{{{route},status="415"}}') == 1
    assert moved(f'mnist_http_request_duration_seconds_count{{{route},status="200"}}') == 3
    assert moved("mnist_batch_size_count{}") == 3  # one forward pass per lone request...
    assert moved("mnist_batch_size_sum{}") == 3  # ...of one image each
    assert moved('mnist_batch_size_bucket{le="1.0"}') == 3
    assert moved("mnist_inference_seconds_count{}") == 3
    assert moved("mnist_queue_wait_seconds_count{}") == 3
    assert after["mnist_queue_depth{}"] == 0


async def test_openapi_documents_the_endpoints(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    predict = spec["paths"]["/predict"]["post"]
    assert "file" in predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= predict["responses"].keys()
    batch = spec["paths"]["/predict/batch"]["post"]
    assert (
        batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["files"]["type"]
        == "array"
    )
    train = spec["components"]["schemas"]["TrainRequest"]["properties"]
    assert train["weight_decay"]["anyOf"][0] == {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
    for path in ("/model", "/healthz", "/readyz", "/metrics", "/train", "/model/versions"):
        assert path in spec["paths"]
    assert (await api.get("/docs")).status_code == 200


async def test_the_server_says_the_name_and_version_it_was_released_as(api: httpx.AsyncClient) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    released = project["version"]
    info = (await api.get("/openapi.json")).json()["info"]
    assert (info["title"], info["version"]) == (project["name"], released)
    v2 = (await api.get("/v2")).json()
    assert (v2["name"], v2["version"]) == (project["name"], released)
    assert f'newTag: "{released}"' in (REPO / "deploy" / "k8s" / "base" / "kustomization.yaml").read_text()
