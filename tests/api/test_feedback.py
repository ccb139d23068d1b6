"""Corrections over the API, in process: what is kept, who may teach the model, every refusal, the
JSON shortcut by prediction id, the export and a restart. (A job that trains on them runs on real
server processes in tests/e2e/test_feedback.py.)"""

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from models.feedback_set import FeedbackSet, split_of
from tests.asgi import Serve
from tests.images import encode
from training.data import Mnist

TOKEN = {"Authorization": "Bearer s3cret"}


def sent(image: bytes, label: object, **fields: str) -> dict[str, object]:
    return {"files": {"file": ("digit.png", image, "image/png")}, "data": {"label": str(label), **fields}}


def pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


async def count(client: httpx.AsyncClient) -> int:
    total: int = (await client.get("/feedback")).json()["counts"]["total"]
    return total


async def test_a_correction_is_kept_as_the_model_sees_it(api: httpx.AsyncClient, mnist: Mnist) -> None:
    digit = mnist.test_images[0]
    response = await api.post("/feedback", **sent(encode(digit), 7, prediction_id="abc-0"))
    assert response.status_code == 201, response.text
    item = response.json()
    assert response.headers["location"] == f"/feedback/{item['id']}"
    assert item["status"] == "accepted"  # no token is set: anyone may teach it, as anyone may train
    assert (item["label"], item["prediction_id"], item["split"]) == (7, "abc-0", split_of(item["id"]))
    assert 0 <= item["predicted"] <= 9 and 0 < item["confidence"] <= 1
    assert item["model_version"] == (await api.get("/model")).json()["model_version"]
    assert np.array_equal(pixels(item["image"]), digit.numpy())  # a 28x28 upload keeps its pixels
    again = (await api.get(f"/feedback/{item['id']}")).json()
    assert again == {key: value for key, value in item.items() if key != "confidence"}
    listed = (await api.get("/feedback")).json()
    assert listed["items"] == [again]
    assert listed["counts"] == {
        "total": 1,
        "by_status": {"pending": 0, "accepted": 1, "rejected": 0},
        "accepted_by_label": [0] * 7 + [1, 0, 0],
        "accepted_by_split": {
            "train": int(item["split"] == "train"),
            "heldout": int(item["split"] == "heldout"),
        },
    }


async def test_a_token_decides_who_may_teach_it(serve: Serve, digit: bytes) -> None:
    async with serve(TRAIN_TOKEN="s3cret") as client:
        pending = (await client.post("/feedback", **sent(digit, 3))).json()
        assert pending["status"] == "pending" and not pending["trusted"]
        trusted = (await client.post("/feedback", headers=TOKEN, **sent(digit, 3))).json()
        assert trusted["status"] == "accepted" and trusted["trusted"]
        wrong = await client.post("/feedback", headers={"Authorization": "Bearer nope"}, **sent(digit, 3))
        assert wrong.status_code == 401  # a wrong token is refused, never taken for none
        review = f"/feedback/{pending['id']}/review"
        assert (await client.post(review, json={"accept": True})).status_code == 401
        assert (await client.delete(f"/feedback/{pending['id']}")).status_code == 401
        accepted = await client.post(review, json={"accept": True}, headers=TOKEN)
        assert accepted.json()["status"] == "accepted" and accepted.json()["reviewed_at"]
        rejected = await client.post(review, json={"accept": False}, headers=TOKEN)
        assert rejected.json()["status"] == "rejected"
        only_pending = (await client.get("/feedback", params={"status": "pending"})).json()
        assert only_pending["items"] == []
        assert only_pending["counts"]["by_status"] == {"pending": 0, "accepted": 1, "rejected": 1}
        assert (await client.delete(f"/feedback/{pending['id']}", headers=TOKEN)).status_code == 204
        assert (await client.get(f"/feedback/{pending['id']}")).status_code == 404
        assert (await client.delete(f"/feedback/{pending['id']}", headers=TOKEN)).status_code == 404
        assert await count(client) == 1


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({"data": {"label": "3"}}, 415),  # no file at all: not even multipart
        ({"files": {"other": ("x.png", b"x")}, "data": {"label": "3"}}, 422),  # no `file` field
        ({"files": {"file": ("d.png", b"DIGIT")}}, 422),  # no label
        ({"files": {"file": ("d.png", b"DIGIT")}, "data": {"label": "10"}}, 422),
        ({"files": {"file": ("d.png", b"DIGIT")}, "data": {"label": "-1"}}, 422),
        ({"files": {"file": ("d.png", b"DIGIT")}, "data": {"label": "seven"}}, 422),
        ({"files": {"file": ("d.png", b"DIGIT")}, "data": {"label": "\u0663"}}, 422),  # an Arabic-Indic 3
        ({"files": {"file": ("d.png", b"DIGIT")}, "data": {"label": "3", "prediction_id": "x" * 65}}, 422),
        ({"files": {"file": ("d.png", b"not an image")}, "data": {"label": "3"}}, 415),
        ({"files": {"file": ("d.png", b"\x89PNG\r\n\x1a\n broken")}, "data": {"label": "3"}}, 400),
        ({"files": {"file": ("d.png", b"")}, "data": {"label": "3"}}, 400),
        ({"files": {"file": ("d.png", b"BLANK")}, "data": {"label": "3"}}, 422),
        ({"files": {"file": ("d.png", b"HUGE")}, "data": {"label": "3"}}, 413),
        ({"json": {"prediction_id": "0123456789abcdef-0", "label": 3}}, 404),  # not held here
        ({"json": {"prediction_id": "0123456789abcdef-0", "label": 12}}, 422),
        ({"json": {"prediction_id": "0123456789abcdef-0"}}, 422),
        ({"json": {"label": 3}}, 422),
        ({"json": {"prediction_id": "a-0", "label": 3, "extra": 1}}, 422),
        ({"json": [1, 2]}, 422),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ({"content": b"x" * 5000, "headers": {"content-type": "application/json"}}, 413),
        ({"content": b"label=3", "headers": {"content-type": "text/plain"}}, 415),
    ],
)
async def test_bad_corrections_are_refused_like_predictions_and_keep_nothing(
    api: httpx.AsyncClient, digit: bytes, request_kwargs: dict[str, object], status: int
) -> None:
    stand_ins = {
        b"DIGIT": digit,
        b"BLANK": encode(np.zeros((28, 28), dtype=np.uint8)),
        b"HUGE": b"\x89PNG" + b"\0" * (1024 * 1024 + 1),
    }
    files = request_kwargs.get("files")
    if isinstance(files, dict):
        request_kwargs = {
            **request_kwargs,
            "files": {key: (name, stand_ins.get(data, data)) for key, (name, data) in files.items()},
        }
    response = await api.post("/feedback", **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    if status == 422 and "errors" in response.json():
        assert all(error["loc"][0] == "body" for error in response.json()["errors"])
    assert await count(api) == 0


async def test_a_recent_prediction_may_be_corrected_by_its_id(api: httpx.AsyncClient, mnist: Mnist) -> None:
    digits = [mnist.test_images[i] for i in range(3)]
    single = (await api.post("/predict", files={"file": ("a.png", encode(digits[0]))})).json()
    batch = (
        await api.post(
            "/predict/batch", files=[("files", (f"{i}.png", encode(d))) for i, d in enumerate(digits)]
        )
    ).json()
    for named, digit in (
        (single["prediction_id"], digits[0]),
        (batch["predictions"][2]["prediction_id"], digits[2]),
    ):
        response = await api.post("/feedback", json={"prediction_id": named, "label": 5})
        assert response.status_code == 201, response.text
        item = response.json()
        assert (item["prediction_id"], item["label"]) == (named, 5)
        assert np.array_equal(pixels(item["image"]), digit.numpy())
    request = batch["predictions"][0]["prediction_id"].rsplit("-", 1)[0]
    for unknown in (f"{request}-3", f"{request}-x", f"{request}-\u00b2", "nothing"):
        response = await api.post("/feedback", json={"prediction_id": unknown, "label": 5})
        assert response.status_code == 404, unknown
        assert "send the image" in response.json()["detail"]


async def test_recent_inputs_are_held_within_their_budget(serve: Serve, digit: bytes) -> None:
    async with serve(FEEDBACK_RECENT_BYTES="0") as client:
        named = (await client.post("/predict", files={"file": ("a.png", digit)})).json()["prediction_id"]
        response = await client.post("/feedback", json={"prediction_id": named, "label": 5})
        assert response.status_code == 404


async def test_a_client_without_the_token_is_rate_limited(serve: Serve, digit: bytes) -> None:
    async with serve(FEEDBACK_PER_MINUTE="3", TRAIN_TOKEN="s3cret") as client:
        for _ in range(3):
            assert (await client.post("/feedback", **sent(digit, 1))).status_code == 201
        refused = await client.post("/feedback", **sent(digit, 1))
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "MNIST_FEEDBACK_PER_MINUTE" in refused.json()["detail"]
        for _ in range(5):  # a token holder importing corrections is not throttled
            assert (await client.post("/feedback", headers=TOKEN, **sent(digit, 1))).status_code == 201
        assert await count(client) == 8


async def test_the_review_queue_has_a_cap(serve: Serve, digit: bytes) -> None:
    async with serve(FEEDBACK_MAX_PENDING="2", TRAIN_TOKEN="s3cret") as client:
        for _ in range(2):
            assert (await client.post("/feedback", **sent(digit, 1))).json()["status"] == "pending"
        full = await client.post("/feedback", **sent(digit, 1))
        assert full.status_code == 503 and full.headers["retry-after"]
        assert (await client.post("/feedback", headers=TOKEN, **sent(digit, 1))).status_code == 201
        assert await count(client) == 3


async def test_the_export_is_the_accepted_items_in_idx_files(serve: Serve, mnist: Mnist) -> None:
    async with serve(TRAIN_TOKEN="s3cret") as client:
        kept = {}
        for i in range(12):
            item = (
                await client.post("/feedback", headers=TOKEN, **sent(encode(mnist.test_images[i]), i % 10))
            ).json()
            kept[item["id"]] = (i, item["split"])
        await client.post("/feedback", **sent(encode(mnist.test_images[20]), 4))  # pending: not exported
        response = await client.get("/feedback/export")
        assert response.headers["content-type"] == "application/zip"
        exported = FeedbackSet.from_zip(response.content)
        assert f"feedback-{exported.sha256[:12]}.zip" in response.headers["content-disposition"]
        assert set(exported.train.ids) | set(exported.heldout.ids) == set(kept)
        for name, split in exported.splits().items():
            for item_id, image, label in zip(split.ids, split.images, split.labels, strict=True):
                i, where = kept[item_id]
                assert where == name and int(label) == i % 10
                assert np.array_equal(image.numpy(), mnist.test_images[i].numpy())
        counts = (await client.get("/feedback")).json()["counts"]["accepted_by_split"]
        assert counts == {"train": len(exported.train), "heldout": len(exported.heldout)}
        assert (await client.get("/feedback/export")).content == response.content  # the same bytes


async def test_a_restart_loses_nothing(serve: Serve, digit: bytes) -> None:
    async with serve(TRAIN_TOKEN="s3cret") as client:
        first = (await client.post("/feedback", **sent(digit, 2))).json()
        second = (await client.post("/feedback", headers=TOKEN, **sent(digit, 8))).json()
    async with serve(TRAIN_TOKEN="s3cret") as client:
        assert (await client.get(f"/feedback/{first['id']}")).json()["status"] == "pending"
        assert (await client.get(f"/feedback/{second['id']}")).json()["label"] == 8
        assert await count(client) == 2


async def test_a_correction_is_kept_when_the_model_cannot_answer_now(serve: Serve, digit: bytes) -> None:
    """What the model says of the image is a courtesy: a correction is not refused for a busy or slow
    model (a queue of one, an inference deadline nothing meets)."""
    async with serve(REQUEST_TIMEOUT_S="0.000001", QUEUE_SIZE="1", MAX_BATCH_SIZE="1") as client:
        answers = [await client.post("/feedback", **sent(digit, 1)) for _ in range(5)]
        assert {answer.status_code for answer in answers} == {201}, [answer.text for answer in answers]
        assert None in [answer.json()["predicted"] for answer in answers]
        assert await count(client) == 5
