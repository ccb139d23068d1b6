"""Past one machine, with real processes and real servers: three `python -m app` replicas with
MNIST_ROLE=api and one trainer, sharing PostgreSQL records and a SeaweedFS S3 model store, each with
a state folder of its own (as separate machines have). A job accepted by one replica is run by the
trainer and served by all three within 2 s with no failed request; a rollback through another is
followed by all; a trainer killed mid-job leaves its job failed ("interrupted") within the stale
window; PostgreSQL restarted under load fails no prediction while the job routes answer 503."""

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.checkpoint import load_checkpoint
from tests.images import encode
from tests.jobs import BETTER, QUICK, finished, polled_job
from tests.load import Tally, load_meanwhile
from tests.postgres import PostgresServer
from tests.s3 import S3Server
from tests.server import FAST_CLOCKS, ServerProcess, fresh_deployment
from tests.tools import polled
from training.data import Mnist

FOLLOW_WITHIN_S = 2.0
STALE_AFTER_S = 3.0


class Cluster:
    """The processes of one deployment and what they share."""

    def __init__(self, tmp_path: Path, checkpoint: Path, postgres: PostgresServer, s3: S3Server, data: Path):
        self.tmp_path, self.postgres = tmp_path, postgres
        self.shared = {
            **s3.env(),
            **FAST_CLOCKS,
            "MNIST_DATABASE_URL": postgres.url(),
            "MNIST_MODEL_STORE": f"s3://cluster-{uuid.uuid4().hex[:8]}/mnist",
            "MNIST_JOB_STALE_AFTER_S": str(STALE_AFTER_S),
            "MNIST_DATA_DIR": str(data),
            "MNIST_WORKERS": "1",
        }
        # The first replica comes with the model file; the others start empty and fetch it.
        first = fresh_deployment(tmp_path / "api-0", checkpoint)
        self.replicas = [
            self._start("api", first if n == 0 else self._empty(f"api-{n}"), production=True)
            for n in range(3)
        ]
        self.trainer = self.start_trainer()

    def _empty(self, name: str) -> dict[str, str]:
        folder = self.tmp_path / name
        return {"MNIST_MODEL_PATH": str(folder / "mnist_cnn.pt"), "MNIST_STATE_DIR": str(folder / "state")}

    def _start(self, role: str, own: dict[str, str], production: bool) -> ServerProcess:
        env = {**self.shared, **own, "MNIST_ROLE": role}
        return ServerProcess(env, production=production, ready_path="/readyz").start()

    def start_trainer(self) -> ServerProcess:
        return self._start("trainer", self._empty(f"trainer-{uuid.uuid4().hex[:4]}"), production=True)

    def versions(self, body: bytes) -> set[str]:
        found = set()
        for replica in self.replicas:
            response = httpx.post(f"{replica.url}/predict", files={"file": ("d.png", body, "image/png")})
            found.add(response.json().get("model_version", f"HTTP {response.status_code}"))
        return found

    def wait_all_serve(self, version: str, body: bytes) -> float:
        """Seconds until every replica serves `version` (fails past FOLLOW_WITHIN_S + 2)."""
        started = time.monotonic()
        polled(
            lambda: self.versions(body),
            lambda seen: seen == {version},
            timeout_s=FOLLOW_WITHIN_S + 2,
            every_s=0.05,
            what=f"not every replica serving {version}",
        )
        return time.monotonic() - started

    def stop(self) -> None:
        for process in [*self.replicas, self.trainer]:
            process.stop()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    small_checkpoint: Path,
    own_postgres: PostgresServer,
    s3_server: S3Server,
    mnist_dir: Path,
) -> Iterator[Cluster]:
    running = Cluster(
        tmp_path_factory.mktemp("cluster"), small_checkpoint, own_postgres, s3_server, mnist_dir
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def body(mnist: Mnist) -> bytes:
    return encode(mnist.test_images[0])


@contextmanager
def under_load(cluster: Cluster, body: bytes) -> Iterator[list[Tally]]:
    """A client predicting on each replica while the `with` block runs, one tally each."""
    with ExitStack() as loads:
        yield [loads.enter_context(load_meanwhile(replica.url, body)) for replica in cluster.replicas]


def test_a_job_from_one_replica_is_trained_elsewhere_and_served_by_all(
    cluster: Cluster, small_checkpoint: Path, body: bytes
) -> None:
    first = load_checkpoint(small_checkpoint).version
    assert cluster.versions(body) == {first}  # B and C fetched A's model from the store
    a, b = (httpx.Client(base_url=replica.url, timeout=30) for replica in cluster.replicas[:2])
    assert httpx.get(f"{cluster.trainer.url}/readyz").status_code == 200
    assert httpx.post(f"{cluster.trainer.url}/predict").status_code == 404  # a trainer serves no model

    with under_load(cluster, body) as loads:
        accepted = a.post("/train", json=BETTER)
        assert accepted.status_code == 202, accepted.text
        second_job = b.post("/train", json=QUICK)  # one trainer, one slot, no queue: 409 naming it
        assert second_job.status_code == 409 and accepted.json()["id"] in second_job.json()["detail"]
        job = polled_job(b, accepted.json()["id"], finished)  # watched through another replica
        assert job["status"] == "succeeded", job
        new = job["model_version"]
        took = cluster.wait_all_serve(new, body)
        time.sleep(0.3)
    assert took < FOLLOW_WITHIN_S, took
    for load in loads:
        assert set(load.outcomes) == {200}, f"failed predictions: {load.statuses}"
        assert load.versions[-1] == new

    # A rollback through B, followed by all, again under load.
    with under_load(cluster, body) as loads:
        assert b.post(f"/model/versions/{first}/activate").status_code == 200
        took = cluster.wait_all_serve(first, body)
    assert took < FOLLOW_WITHIN_S, took
    assert all(set(load.outcomes) == {200} for load in loads), [load.statuses for load in loads]


def test_a_trainer_killed_mid_job_leaves_it_interrupted(cluster: Cluster) -> None:
    a, c = (httpx.Client(base_url=replica.url, timeout=30) for replica in cluster.replicas[::2])
    accepted = a.post("/train", json={"epochs": 3})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    polled_job(c, job_id, lambda job: job["status"] == "running" and bool(job["progress"]["fraction"]))
    assert cluster.trainer.process is not None
    os.killpg(cluster.trainer.process.pid, signal.SIGKILL)  # the whole host goes: server and its child
    cluster.trainer.process.wait()
    killed_at = time.monotonic()
    job: dict[str, Any] = polled_job(c, job_id, finished, timeout_s=STALE_AFTER_S + 10)
    assert job["status"] == "failed" and job["error"].startswith("interrupted"), job
    assert time.monotonic() - killed_at < STALE_AFTER_S + 3

    # No trainer is left: a job now is refused, saying why, rather than left waiting for nobody.
    def ask_for_a_job() -> httpx.Response:
        answer = a.post("/train", json=QUICK)
        assert answer.status_code in (202, 409, 503), answer.text
        if answer.status_code == 202:  # accepted while the dead trainer still looked alive: cancel it
            a.delete(f"/train/{answer.json()['id']}")
        return answer

    refused = polled(
        ask_for_a_job,
        lambda answer: answer.status_code == 503,
        timeout_s=STALE_AFTER_S + 5,
        every_s=0.2,
        what="a job not refused for want of a trainer",
    )
    assert "no trainer is running" in refused.json()["detail"]
    cluster.trainer = cluster.start_trainer()
    assert a.post("/train", json={"epochs": 1, "limit_train": 500}).status_code == 202


@pytest.mark.reliability
def test_postgresql_restarted_under_load_fails_no_prediction(cluster: Cluster, body: bytes) -> None:
    b = httpx.Client(base_url=cluster.replicas[1].url, timeout=30)
    if jobs := b.get("/train").json()["jobs"]:  # run alone (make test-reliability), there are none
        polled_job(b, jobs[0]["id"], finished)  # the previous test's last job
    with under_load(cluster, body) as loads:
        time.sleep(0.5)
        cluster.postgres.stop()
        down = b.get("/train")
        assert down.status_code == 503 and "database cannot be reached" in down.json()["detail"]
        assert b.post("/train", json=QUICK).status_code == 503
        time.sleep(1.5)  # followers and the trainer meet the outage too
        cluster.postgres.start()
        polled(lambda: b.get("/train"), lambda answer: answer.status_code == 200, timeout_s=20, every_s=0.2)
        time.sleep(0.5)
    print(f"PostgreSQL restarted under load: {sum(len(load.outcomes) for load in loads)} predictions")
    for load in loads:
        assert len(load.outcomes) > 10 and set(load.outcomes) == {200}, load.statuses
