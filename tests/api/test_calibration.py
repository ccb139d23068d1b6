"""Calibrated answers: `probs` and `confidence` at the served model's fitted temperature, over
/predict, /predict/batch and v2 alike; `log_probs` the network's own."""

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from app.config import LOW_CONFIDENCE
from models.checkpoint import load_checkpoint
from tests.asgi import Serve
from tests.images import encode
from tests.tolerances import assert_log_probs_close
from tests.uploads import image_file
from training.data import Mnist


@pytest.fixture
async def calibrated_api(serve: Serve, calibrated_checkpoint: Path) -> httpx.AsyncClient:
    async with serve(calibrated_checkpoint) as client:
        yield client


async def test_probs_and_confidence_are_calibrated_and_log_probs_are_the_network_s(
    calibrated_api: httpx.AsyncClient, calibrated_checkpoint: Path, mnist: Mnist
) -> None:
    model = (await calibrated_api.get("/model")).json()
    temperature = model["calibration"]["temperature"]
    assert model["calibration"]["validation_samples"] == 2000 and abs(temperature - 1) > 0.05
    images = mnist.test_images[:40]
    batch = await calibrated_api.post(
        "/predict/batch", files=[("files", (f"{i}.png", encode(im))) for i, im in enumerate(images)]
    )
    answers = batch.json()["predictions"]
    network = load_checkpoint(calibrated_checkpoint).model
    with torch.inference_mode():
        own = network(((images.float() / 255 - 0.1307) / 0.3081).unsqueeze(1))
    logs = torch.tensor([answer["log_probs"] for answer in answers])
    assert_log_probs_close(logs, own)
    expected = torch.softmax(logs.double() / temperature, dim=1)
    probs = torch.tensor([answer["probs"] for answer in answers], dtype=torch.float64)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert not torch.allclose(probs, logs.double().exp(), atol=1e-3)  # not the network's own
    for answer in answers:
        assert answer["confidence"] == max(answer["probs"]) and answer["digit"] == int(
            np.argmax(answer["log_probs"])
        )
        assert answer["low_confidence"] == (answer["confidence"] < LOW_CONFIDENCE)
    one = (await calibrated_api.post("/predict", files=image_file(encode(images[3])))).json()
    assert np.allclose(one["probs"], answers[3]["probs"], atol=1e-6)


async def test_v2_probs_are_predict_s(calibrated_api: httpx.AsyncClient, mnist: Mnist) -> None:
    images = mnist.test_images[:8]
    predicted = (
        await calibrated_api.post(
            "/predict/batch", files=[("files", (f"{i}.png", encode(im))) for i, im in enumerate(images)]
        )
    ).json()["predictions"]
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [8],
                "data": [base64.b64encode(encode(im)).decode() for im in images],
            }
        ],
        "outputs": [{"name": "probs"}, {"name": "log_probs"}],
    }
    answer = await calibrated_api.post("/v2/models/mnist/infer", json=body)
    assert answer.status_code == 200, answer.text
    outputs = {
        output["name"]: np.array(output["data"]).reshape(output["shape"])
        for output in answer.json()["outputs"]
    }
    np.testing.assert_allclose(outputs["probs"], [p["probs"] for p in predicted], atol=1e-6)
    np.testing.assert_allclose(outputs["log_probs"], [p["log_probs"] for p in predicted], atol=1e-5)
