"""Serving needs a loadable model and nothing else: a state folder that is full or deleted, or a
records database that is out, costs the records (a clear 503 while it lasts), never predictions,
and never a lasting error once the folder is back."""

import logging
import shutil
from pathlib import Path

import pytest

from tests.asgi import Serve, answered
from tests.server import free_port
from tests.tools import fill, polled_async, small_disk
from tests.uploads import image_file


async def test_a_state_folder_deleted_under_the_server_is_made_again(serve: Serve, tmp_path: Path) -> None:
    async with serve() as client:
        assert (await client.get("/train")).json()["jobs"] == []
        database = tmp_path / "state" / "jobs.sqlite3"
        first = database.stat().st_ino
        # The server's own threads may write a new file while the folder is being removed (as
        # they would under a user's `rm -rf`): what counts is that the records' file is gone.
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
        assert not database.exists() or database.stat().st_ino != first
        # A server thread that touched the records mid-deletion may see a brief outage: a 503
        # with Retry-After while it lasts (never a 500), then the folder and its records are back.
        listed = await polled_async(lambda: client.get("/train"), lambda answer: answer.status_code != 503)
        assert listed.status_code == 200 and listed.json()["jobs"] == []
        assert (await client.get("/model/versions")).status_code == 200
        # The trainer checks in again on its next beat: until then a job is a 503 with Retry-After.
        job = await polled_async(
            lambda: client.post("/train", json={"epochs": 1, "limit_train": 500}),
            lambda answer: answer.status_code != 503,
        )
        assert job.status_code == 202, job.text
        assert (await client.delete(f"/train/{job.json()['id']}")).status_code == 200
        assert (tmp_path / "state").is_dir()
        assert not await answered(client, "500")


async def test_a_full_state_disk_still_serves(serve: Serve, tmp_path: Path, digit: bytes) -> None:
    with small_disk(tmp_path / "state") as state:
        fill(state)
        async with serve() as client:
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/predict", files=image_file(digit))).status_code == 200
            records = await client.get("/train")
            assert records.status_code == 503 and "records are unavailable" in records.json()["detail"]
            assert not await answered(client, "500")
            (state / "filler").unlink()  # room again: the records come back, no restart needed
            assert (await client.get("/train")).json()["jobs"] == []


async def test_a_records_database_that_is_out_at_startup_costs_only_the_records(
    serve: Serve, digit: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    port = free_port()  # nothing listens there
    url = f"postgresql://mnist@127.0.0.1:{port}/mnist?password=s3cret"  # libpq's other place for it
    async with serve(DATABASE_URL=url) as client:
        shown = (await client.get("/model")).json()["serving"]["settings"]["database_url"]
        assert shown == f"postgresql://127.0.0.1:{port}/mnist"
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/predict", files=image_file(digit))).status_code == 200
        assert (await client.get("/train")).status_code == 503
        assert (await client.get("/model/versions")).status_code == 503
        assert not await answered(client, "500")
    assert f"127.0.0.1:{port}/mnist" in caplog.text and "s3cret" not in caplog.text
