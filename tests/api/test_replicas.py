"""Replicas sharing real records (PostgreSQL) and a real S3 store (SeaweedFS), in process: the
active version is a database fact that every replica follows, fetching verified weights from the
store; a corrupted object is refused and the old model keeps serving."""

import asyncio
import logging
import time
import uuid
from pathlib import Path

import boto3
import httpx
import pytest

from app.records.database import Database, database_url
from app.records.model_store import S3ModelStore
from app.records.versions import ModelVersions
from models.checkpoint import load_checkpoint
from tests.asgi import Serve
from tests.checkpoints import another_version, copied, flipped
from tests.load import predict_load
from tests.postgres import PostgresServer
from tests.s3 import S3Server
from tests.tools import polled_async
from tests.uploads import image_file

FOLLOW_WITHIN_S = 2.0


def trainer_versions(url: str, store: str, state: Path) -> ModelVersions:
    """Versions as a trainer on another host files them: the same records and store."""
    database = Database(database_url(url, state))
    return ModelVersions(database, S3ModelStore(store, state / "cache"), state, state / "mnist_cnn.pt")


async def served_version(client: httpx.AsyncClient, digit: bytes) -> str:
    response = await client.post("/predict", files=image_file(digit))
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


async def switch_under_load(replicas: list[httpx.AsyncClient], digit: bytes, version: str) -> float:
    """Seconds until every replica answers with `version`, while clients keep predicting on all
    of them; any failed prediction fails the test."""
    switched = asyncio.Event()
    loads = [predict_load(client, digit, clients=2, until=switched.is_set) for client in replicas]
    running = [asyncio.create_task(load) for load in loads]
    started = time.monotonic()
    try:
        await polled_async(
            lambda: served_by_all(replicas, digit),
            lambda seen: seen == {version},
            timeout_s=FOLLOW_WITHIN_S + 1,
            every_s=0.05,
            what=f"not every replica serving {version}",
        )
        return time.monotonic() - started
    finally:
        switched.set()
        tallies = await asyncio.gather(*running)
        assert all(tally.failed == 0 for tally in tallies), [tally.statuses for tally in tallies]


async def served_by_all(replicas: list[httpx.AsyncClient], digit: bytes) -> set[str]:
    return {await served_version(client, digit) for client in replicas}


async def refused_by_all(caplog: pytest.LogCaptureFixture, version: str, replicas: int) -> None:
    """Wait until the follower of every replica has fetched `version` from the store and refused
    it, its weights not matching their sha256: the moment it would have served them. (A follower
    logs only its first refusal of a version.)"""

    def refusals() -> int:
        said = [record.getMessage() for record in caplog.records]
        return sum(f"not serving active version {version}: " in line and "sha256" in line for line in said)

    await polled_async(refusals, lambda count: count >= replicas, what=f"{version} not refused by all")


async def test_replicas_follow_the_database_through_the_store(
    serve: Serve,
    postgres: PostgresServer,
    s3: S3Server,
    tmp_path: Path,
    small_checkpoint: Path,
    digit: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app")
    url, store = postgres.new_database(), f"s3://models-{uuid.uuid4().hex[:8]}/mnist"
    shared = {"DATABASE_URL": url, "MODEL_STORE": store, "ROLE": "api"}
    first = load_checkpoint(small_checkpoint).version
    # Replica A starts with the model file: no version is active yet, so it becomes the first.
    async with (
        serve(**shared, STATE_DIR=str(tmp_path / "a")) as a,
        serve(**shared, STATE_DIR=str(tmp_path / "b"), MODEL_PATH=str(tmp_path / "b" / "none.pt")) as b,
    ):
        assert await served_version(b, digit) == first  # B had no file: fetched from the store
        trainer = trainer_versions(url, store, tmp_path / "trainer")
        second = await asyncio.to_thread(
            trainer.keep, another_version(small_checkpoint, tmp_path / "trainer" / "incoming" / "2.pt")
        )

        activated = await b.post(f"/model/versions/{second}/activate")
        assert activated.status_code == 200 and activated.json()["active"] == second
        took = await switch_under_load([a, b], digit, second)
        assert took < FOLLOW_WITHIN_S

        # A version whose object in the store was corrupted: refused, the old model keeps serving.
        third_file = another_version(tmp_path / "trainer" / "incoming" / "2.pt", tmp_path / "3.pt")
        third = await asyncio.to_thread(trainer.keep, third_file)
        where = S3ModelStore(store, tmp_path / "inspector")
        boto3.client("s3").put_object(
            Bucket=where.bucket,
            Key=where.key(load_checkpoint(third_file).metadata["sha256"]),
            Body=flipped(third_file.read_bytes()),
        )
        refused = await a.post(f"/model/versions/{third}/activate")
        assert refused.status_code == 409 and "do not match their recorded sha256" in refused.json()["detail"]
        # The trainer's own copy, cached when it kept the version, is good: it activates it, and
        # the database names a version whose object in the store is corrupt.
        await asyncio.to_thread(trainer.activate, third, "a trainer whose cached copy was good")
        # Each replica's follower has now fetched it, checked it and refused it.
        await refused_by_all(caplog, third, replicas=2)
        assert await served_by_all([a, b], digit) == {second}
        assert (await a.get("/readyz")).status_code == 200

        # A rollback through B is followed by all.
        assert (await b.post(f"/model/versions/{first}/activate")).status_code == 200
        assert await switch_under_load([a, b], digit, first) < FOLLOW_WITHIN_S
        listed = (await a.get("/model/versions")).json()
        [active] = [entry for entry in listed["versions"] if entry["active"]]
        assert active["model_version"] == first and active["activated_by"].startswith("POST /model/versions")
        trainer.database.dispose()


@pytest.mark.parametrize("setting", ["s3://", "file:///tmp/models", "models"])
async def test_an_unusable_store_setting_is_refused(serve: Serve, setting: str) -> None:
    with pytest.raises(ValueError, match="MNIST_MODEL_STORE must be s3://bucket/prefix"):
        async with serve(MODEL_STORE=setting):
            pass


async def test_on_one_machine_a_known_version_copied_onto_the_file_is_served(
    serve: Serve, tmp_path: Path, small_checkpoint: Path, digit: bytes
) -> None:
    """The single-machine habit: copy a kept version onto mnist_cnn.pt by hand and it is served
    (and made the active version), as a new model written there is."""
    first = load_checkpoint(small_checkpoint).version
    async with serve() as client:
        model_file = tmp_path / "models" / "mnist_cnn.pt"  # where the `serve` fixture deploys it
        another_version(small_checkpoint, tmp_path / "other.pt")
        copied(tmp_path / "other.pt", model_file)  # a new model, by hand
        second = load_checkpoint(model_file).version
        await until_served(client, digit, second)
        kept = tmp_path / "state" / "models" / f"{first}.pt"
        copied(kept, model_file)  # and back to the first, a version the records know
        await until_served(client, digit, first)
        listed = (await client.get("/model/versions")).json()
        assert [entry["model_version"] for entry in listed["versions"] if entry["active"]] == [first]


async def until_served(client: httpx.AsyncClient, digit: bytes, version: str, timeout_s: float = 5) -> None:
    await polled_async(lambda: served_version(client, digit), lambda served: served == version, timeout_s)
