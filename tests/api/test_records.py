"""Job and version records, in process: PostgreSQL behind the same API as SQLite, a database outage
that fails no prediction (record routes answer 503 with the reason, then recover by themselves),
and who activated the active version."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.jobs.store import JobStore
from app.records.database import Database, database_url
from models.checkpoint import load_checkpoint
from tests.asgi import Serve
from tests.postgres import PostgresServer
from tests.tools import polled_async
from tests.uploads import image_file


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, to stop and start."""
    server = PostgresServer()
    yield server
    server.remove()


def recorded_job(url: str) -> str:
    """A job record written by another process of the deployment."""
    database = Database(database_url(url, Path("unused")))
    database.migrate()
    store = JobStore(database, stale_after_s=15.0)
    store.check_in("elsewhere", slots=1)  # a trainer on another host: the job waits for it
    job = store.create({"epochs": 3})
    database.dispose()
    return job.id


async def test_job_routes_on_postgresql(serve: Serve, postgres: PostgresServer) -> None:
    url = postgres.new_database()
    job_id = recorded_job(url)
    async with serve(DATABASE_URL=url, ROLE="api") as client:
        listed = (await client.get("/train")).json()["jobs"]
        assert [job["id"] for job in listed] == [job_id]
        assert listed[0]["hyperparameters"] == {"epochs": 3} and listed[0]["status"] == "queued"
        conflict = await client.post("/train", json={"epochs": 1})
        assert conflict.status_code == 409 and job_id in conflict.json()["detail"]
        assert (await client.post("/train", json={"epochs": 0})).status_code == 422
        assert (await client.get("/train/nosuchjob")).status_code == 404
        assert (await client.get("/train/a%00b")).status_code == 404  # PostgreSQL refuses NUL in text
        assert (await client.post("/model/versions/a%00b/activate")).status_code == 404


async def test_a_database_outage_fails_no_prediction(
    serve: Serve, own_postgres: PostgresServer, digit: bytes
) -> None:
    job_id = recorded_job(own_postgres.url())
    async with serve(DATABASE_URL=own_postgres.url(), ROLE="api") as client:
        assert (await client.get(f"/train/{job_id}")).status_code == 200
        own_postgres.stop()
        assert (await client.post("/predict", files=image_file(digit))).status_code == 200
        for route in (f"/train/{job_id}", "/train", "/model/versions"):
            down = await client.get(route)
            assert down.status_code == 503, down.text
            assert "database cannot be reached" in down.json()["detail"]
            assert down.headers["retry-after"] == "5"
        assert (await client.post("/train", json={"epochs": 1})).status_code == 503
        assert (await client.post("/predict", files=image_file(digit))).status_code == 200
        own_postgres.start()
        back = await polled_async(
            lambda: client.get(f"/train/{job_id}"), lambda job: job.status_code == 200, timeout_s=15
        )
        assert back.json()["hyperparameters"] == {"epochs": 3}  # the record outlived the outage


async def test_versions_say_which_is_active_and_who_activated_it(
    api: httpx.AsyncClient, small_checkpoint: Path
) -> None:
    version = load_checkpoint(small_checkpoint).version
    listed = (await api.get("/model/versions")).json()
    [entry] = listed["versions"]
    assert listed["active"] == entry["model_version"] == version and entry["active"]
    assert entry["activated_by"].endswith("at startup") and entry["activated_at"]
    again = (await api.post(f"/model/versions/{version}/activate")).json()["versions"][0]
    assert again["activated_by"] == f"POST /model/versions/{version}/activate from 127.0.0.1"
    assert again["activated_at"] > entry["activated_at"]


async def test_an_activations_own_copy_is_not_adopted_again(
    serve: Serve, small_checkpoint: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    async with serve(small_checkpoint) as client:  # the same state folder for both: two versions
        first = (await client.get("/model")).json()["model_version"]
    async with serve(other_checkpoint) as client:
        kept = tmp_path / "state" / "models" / f"{first}.json"
        before = kept.stat().st_ino
        activated = await client.post(f"/model/versions/{first}/activate")
        # It copied the weights onto MNIST_MODEL_PATH and served them; the follower, which looked
        # at that file before answering, found the active version's bytes there: nothing stored.
        assert activated.status_code == 200 and activated.json()["active"] == first
        assert kept.stat().st_ino == before
        assert load_checkpoint(tmp_path / "models" / "mnist_cnn.pt").version == first
