"""POST /predict over real HTTP against a real server: what a client gets is what the model computes.
(The rest of the API is tested in process, in tests/api.)"""

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.images import encode
from tests.server import ServerProcess
from tests.tolerances import assert_log_probs_close
from tests.uploads import post_all
from training.data import Mnist
from training.loop import to_model_input

N_EXACT = 1000


@pytest.fixture(scope="module")
def server(trained_checkpoint: Path) -> Iterator[ServerProcess]:
    with ServerProcess({"MNIST_MODEL_PATH": str(trained_checkpoint)}, ready_path="/readyz") as running:
        yield running


async def test_answers_over_http_are_what_the_model_computes(
    server: ServerProcess, trained_checkpoint: Path, mnist: Mnist
) -> None:
    images = mnist.test_images[:N_EXACT]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await post_all(client, [encode(image) for image in images])
    assert all(r.status_code == 200 for r in responses)
    loaded = load_checkpoint(trained_checkpoint)
    with torch.inference_mode():
        expected = loaded.model(to_model_input(images, torch.device("cpu")))
    got = torch.tensor([r.json()["log_probs"] for r in responses])
    digits = [r.json()["digit"] for r in responses]
    assert digits == expected.argmax(1).tolist()
    assert_log_probs_close(got, expected)
    threshold = loaded.not_a_digit_threshold
    assert threshold is not None  # the default recipe chose one
    for r in responses[:50]:
        body = r.json()
        assert body["model_version"] == loaded.version
        assert abs(sum(body["probs"]) - 1) < 1e-5
        assert body["confidence"] == max(body["probs"])
        calibrated = torch.softmax(
            torch.tensor(body["log_probs"], dtype=torch.float64) / loaded.temperature, 0
        )
        assert np.allclose(calibrated.numpy(), body["probs"], atol=1e-7)
        assert body["not_a_digit"] == (body["ood_score"] > threshold)
    # The network's own probabilities, before calibration, give the score.
    scores = torch.tensor([r.json()["ood_score"] for r in responses], dtype=torch.float64)
    assert torch.allclose(scores, 1 - expected.double().exp().max(dim=1).values, atol=1e-6)


async def test_a_batch_over_http_agrees_with_single_requests(server: ServerProcess, mnist: Mnist) -> None:
    """Many files in one multipart body, as a real socket delivers it (in arbitrary chunks)."""
    images = [encode(image) for image in mnist.test_images[:40]]
    files = [("files", (f"d{i}.png", body, "image/png")) for i, body in enumerate(images)]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        batch = await client.post("/predict/batch", files=files)
        singles = await post_all(client, images)
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert [p["digit"] for p in predictions] == [s.json()["digit"] for s in singles]
    from_batch = torch.tensor([p["log_probs"] for p in predictions])
    assert_log_probs_close(from_batch, torch.tensor([s.json()["log_probs"] for s in singles]))
