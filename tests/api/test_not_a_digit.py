"""Not a digit over HTTP: every answer's `not_a_digit` and `ood_score`, from the served model's own
threshold (its card says what it flags) or MNIST_NOT_A_DIGIT_THRESHOLD; v2's outputs the same;
MNIST_REFUSE_NOT_A_DIGIT's 422."""

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.not_a_digit import ood_scores
from tests.asgi import Serve
from tests.images import encode
from tests.uploads import image_file
from training import outliers
from training.data import Mnist
from training.loop import to_model_input
from training.not_a_digit_card import CARD_SEED, KIND_SAMPLES

AS_SENT = {"invert": "false"}  # the 28x28 frames exactly as drawn: no guess at their polarity


async def answers_for(client: httpx.AsyncClient, images: torch.Tensor) -> list[dict[str, Any]]:
    answers = []
    for start in range(0, len(images), 64):
        files = [("files", (f"{i}.png", encode(image))) for i, image in enumerate(images[start : start + 64])]
        response = await client.post("/predict/batch", files=files, params=AS_SENT)
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]
    return answers


def percent_flagged(answers: list[dict[str, Any]]) -> float:
    return round(100 * sum(answer["not_a_digit"] for answer in answers) / len(answers), 2)


def card_kind(family: str, mnist: Mnist) -> torch.Tensor:
    """The non-digits of one family the card was measured on."""
    return outliers.inked(outliers.drawn(family, KIND_SAMPLES, CARD_SEED, mnist.test_images))


@pytest.mark.slow  # every test digit and each kind of the card, through /predict/batch
async def test_the_threshold_flags_what_the_card_says_it_flags(
    api: httpx.AsyncClient, small_checkpoint: Path, mnist: Mnist
) -> None:
    card = (await api.get("/model")).json()["not_a_digit"]
    assert card["chosen_on"] == "validation" and card["chosen_samples"] == 2000
    assert card["outlier_exposure"]["families"] == list(outliers.FAMILIES)
    digits = await answers_for(api, mnist.test_images)
    assert percent_flagged(digits) == card["test_flagged_percent"]
    threshold = load_checkpoint(small_checkpoint).not_a_digit_threshold
    assert all(answer["not_a_digit"] == (answer["ood_score"] > threshold) for answer in digits)
    for family in ("glyphs", "fragments", "speckle"):
        kind = await answers_for(api, card_kind(family, mnist))
        assert len(kind) == card["kinds"][family]["samples"]
        assert percent_flagged(kind) == card["kinds"][family]["flagged_percent"], family


async def test_the_setting_overrides_the_model_s_threshold(serve: Serve, mnist: Mnist) -> None:
    images = torch.cat([mnist.test_images[:32], card_kind("strokes", mnist)[:32]])
    async with serve() as client:
        own = await answers_for(client, images)
        served = (await client.get("/model")).json()["serving"]["not_a_digit"]
        assert served["source"] == "model" and served["refuse"] is False
    scores = sorted(answer["ood_score"] for answer in own)
    middle = (scores[31] + scores[32]) / 2  # half of these images above it, half below
    async with serve(NOT_A_DIGIT_THRESHOLD=str(middle)) as client:
        shifted = await answers_for(client, images)
        assert (await client.get("/model")).json()["serving"]["not_a_digit"] == {
            "threshold": middle,
            "source": "setting",
            "refuse": False,
        }
    assert [answer["ood_score"] for answer in shifted] == [answer["ood_score"] for answer in own]
    assert sum(answer["not_a_digit"] for answer in shifted) == 32
    assert all(answer["not_a_digit"] == (answer["ood_score"] > middle) for answer in shifted)


async def test_v2_outputs_are_predict_s(api: httpx.AsyncClient, mnist: Mnist) -> None:
    images = torch.cat(
        [mnist.test_images[:6], card_kind("speckle", mnist)[:3], card_kind("glyphs", mnist)[:3]]
    )
    predicted = await answers_for(api, images)
    assert any(answer["not_a_digit"] for answer in predicted)
    assert not all(answer["not_a_digit"] for answer in predicted)
    body = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": [len(images), 28, 28],
                "data": images.flatten().tolist(),
            }
        ],
        "outputs": [{"name": "not_a_digit"}, {"name": "ood_score"}, {"name": "digit"}],
    }
    answer = await api.post("/v2/models/mnist/infer", json=body)
    assert answer.status_code == 200, answer.text
    outputs = {output["name"]: output for output in answer.json()["outputs"]}
    assert outputs["not_a_digit"]["datatype"] == "BOOL" and outputs["ood_score"]["datatype"] == "FP32"
    assert outputs["not_a_digit"]["data"] == [p["not_a_digit"] for p in predicted]
    np.testing.assert_allclose(outputs["ood_score"]["data"], [p["ood_score"] for p in predicted], atol=1e-6)
    assert outputs["digit"]["data"] == [p["digit"] for p in predicted]


async def test_refusing_makes_a_non_digit_a_422_that_says_so(
    serve: Serve, small_checkpoint: Path, mnist: Mnist
) -> None:
    # The speckle the model is surest is none, and the digit it is surest is one.
    network = load_checkpoint(small_checkpoint).model
    with torch.inference_mode():
        speckles, digits = card_kind("speckle", mnist), mnist.test_images[:100]
        speckle = speckles[int(ood_scores(network(to_model_input(speckles, torch.device("cpu")))).argmax())]
        digit = digits[int(ood_scores(network(to_model_input(digits, torch.device("cpu")))).argmin())]
    async with serve(REFUSE_NOT_A_DIGIT="true") as client:
        refused = await client.post("/predict", files=image_file(encode(speckle)), params=AS_SENT)
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("that does not look like a digit: its ood_score ")
        assert "MNIST_REFUSE_NOT_A_DIGIT is on" in refused.json()["detail"]
        kept = await client.post("/predict", files=image_file(encode(digit)), params=AS_SENT)
        assert kept.status_code == 200 and kept.json()["not_a_digit"] is False
        files = [("files", ("seven.png", encode(digit))), ("files", ("dots.png", encode(speckle)))]
        batch = await client.post("/predict/batch", files=files, params=AS_SENT)
        assert batch.status_code == 422
        assert batch.json()["detail"].startswith("files[1] (dots.png): that does not look like a digit")
        pixels = torch.stack([digit, speckle])
        v2 = await client.post(
            "/v2/models/mnist/infer",
            json={
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [2, 28, 28],
                        "data": pixels.flatten().tolist(),
                    }
                ]
            },
        )
        assert v2.status_code == 422 and v2.json()["error"].startswith(
            "row 1: that does not look like a digit"
        )
        assert (await client.get("/model")).json()["serving"]["not_a_digit"]["refuse"] is True
