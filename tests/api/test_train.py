"""The training and model-version endpoints' refusals, in process: bad bodies, unknown ids, the
token. (Jobs that run are tested on real server processes in tests/e2e/test_train.py.)"""

import logging

import httpx
import pytest

from tests.asgi import Serve

GOOD = {"Authorization": "Bearer s3cret"}


@pytest.mark.parametrize(
    "body",
    [
        {"epochs": 0},
        {"epochs": 51},
        {"lr": -1},
        {"lr": 0},
        {"momentum": 1.5},
        {"weight_decay": -0.1},
        {"arch": "resnet"},
        {"recipe": "magic"},
        {"limit_train": 0},
        {"seed": -1},
        {"min_accuracy": 101},
        {"nproc_per_node": 0},
        {"nproc_per_node": 2000},
        {"promote": "sometimes"},
        {"promote": True},
        {"epochs": "many"},
        {"unknown": 1},
        [1, 2],
        {"recipe": "accurate", "batch_size": 1},  # batch norm learns nothing from one image
        {"arch": "deep", "limit_train": 1},
    ],
)
async def test_bad_bodies_are_422_and_make_no_job(api: httpx.AsyncClient, body: object) -> None:
    response = await api.post("/train", json=body)
    assert response.status_code == 422, body
    assert (await api.get("/train")).json()["jobs"] == []


async def test_unreadable_bodies_and_unknown_ids(api: httpx.AsyncClient) -> None:
    response = await api.post("/train", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert (await api.get("/train", params={"limit": 0})).status_code == 422
    assert (await api.get("/train/nosuchjob")).status_code == 404
    assert (await api.delete("/train/nosuchjob")).status_code == 404
    assert (await api.post("/model/versions/nosuchversion/activate")).status_code == 404
    assert (await api.get("/train")).json()["jobs"] == []


async def test_a_token_guards_training_and_model_changes(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(TRAIN_TOKEN="s3cret") as client:
        for path in ("/model", "/model/versions", "/train", "/healthz", "/readyz", "/metrics", "/v2"):
            assert "s3cret" not in (await client.get(path)).text, path  # the token is never shown
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = await client.post("/train", json={"epochs": 1}, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert (await client.delete("/train/x", headers=headers)).status_code == 401
            assert (await client.post("/model/versions/x/activate", headers=headers)).status_code == 401
        assert (await client.get("/train")).status_code == 200  # reading stays open
        assert (await client.get("/model/versions")).status_code == 200
        # The right token gets past the guard to the request's own checks.
        assert (await client.post("/train", json={"epochs": 0}, headers=GOOD)).status_code == 422
        assert (await client.delete("/train/x", headers=GOOD)).status_code == 404
        assert (await client.post("/model/versions/x/activate", headers=GOOD)).status_code == 404
    assert "MNIST_TRAIN_TOKEN is not set" not in caplog.text
    assert caplog.text and "s3cret" not in caplog.text  # nor logged, even where it was refused


async def test_an_open_server_warns_at_startup(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app")
    async with serve():
        pass
    assert "MNIST_TRAIN_TOKEN is not set" in caplog.text


async def test_processes_per_job_are_bounded_by_the_server(serve: Serve) -> None:
    async with serve(TRAIN_MAX_PROCS="2", DEVICE="cpu") as client:
        assert (await client.get("/train")).json()["max_nproc_per_node"] == 2  # what the page offers
        response = await client.post("/train", json={"nproc_per_node": 3})
        assert response.status_code == 422
        assert response.json()["errors"] == [
            {
                "loc": ["body", "nproc_per_node"],
                "msg": "this server runs at most 2 processes per job (MNIST_TRAIN_MAX_PROCS)",
                "type": "less_than_equal",
            }
        ]
        assert (await client.get("/train")).json()["jobs"] == []
    async with serve(DEVICE="cpu") as client:  # unset: 1 where jobs train on the CPU
        assert (await client.get("/train")).json()["max_nproc_per_node"] == 1
        assert (await client.get("/model")).json()["serving"]["settings"]["train_max_procs"] == 1
