"""Past one machine, with real processes and real servers: three `python -m app` replicas with
MNIST_ROLE=api and one trainer, sharing PostgreSQL records and a SeaweedFS S3 model store, each with
a state folder of its own (as separate machines have). A job accepted by one replica is run by the
trainer and served by all three within 2 s with no failed request; a rollback through another is
followed by all; a trainer killed mid-job leaves its job failed ("interrupted") within the stale
window; PostgreSQL restarted under load fails no prediction while the job routes answer 503. Each
test has a deployment of its own: one stops PostgreSQL, another kills the trainer."""

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

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
from tests.uploads import image_file
from training.data import Mnist

FOLLOW_WITHIN_S = 2.0
STALE_AFTER_S = 3.0


class Cluster:
    """The processes of one deployment and what they share: a PostgreSQL server of its own (a test
    may stop it) and a bucket of its own."""

    def __init__(self, tmp_path: Path, s3: S3Server, data: Path) -> None:
        self.tmp_path = tmp_path
        self.postgres = PostgresServer()
        self.shared = {
            **s3.env(),
            **FAST_CLOCKS,
            "MNIST_DATABASE_URL": self.postgres.url(),
            "MNIST_MODEL_STORE": f"s3://cluster-{uuid.uuid4().hex[:8]}/mnist",
            "MNIST_JOB_STALE_AFTER_S": str(STALE_AFTER_S),
            "MNIST_DATA_DIR": str(data),
            "MNIST_WORKERS": "1",
        }
        self.started: list[ServerProcess] = []
        self.replicas: list[ServerProcess] = []

    def start(self, checkpoint: Path) -> None:
        # The first replica comes with the model file; the others start empty and fetch it.
        first = fresh_deployment(self.tmp_path / "api-0", checkpoint)
        for n in range(3):
            self.replicas.append(self._start("api", first if n == 0 else self._empty(f"api-{n}")))
        self.start_trainer()

    def _empty(self, name: str) -> dict[str, str]:
        folder = self.tmp_path / name
        return {"MNIST_MODEL_PATH": str(folder / "mnist_cnn.pt"), "MNIST_STATE_DIR": str(folder / "state")}

    def _start(self, role: str, own: dict[str, str]) -> ServerProcess:
        env = {**self.shared, **own, "MNIST_ROLE": role}
        process = ServerProcess(env, production=True, ready_path="/readyz")
        self.started.append(process)
        return process.start()

    def start_trainer(self) -> ServerProcess:
        self.trainer = self._start("trainer", self._empty(f"trainer-{uuid.uuid4().hex[:4]}"))
        return self.trainer

    def versions(self, body: bytes) -> set[str]:
        found = set()
        for replica in self.replicas:
            response = httpx.post(f"{replica.url}/predict", files=image_file(body))
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

    @contextmanager
    def under_load(self, body: bytes) -> Iterator[list[Tally]]:
        """A client predicting on each replica while the `with` block runs, one tally each."""
        with ExitStack() as loads:
            yield [loads.enter_context(load_meanwhile(replica.url, body)) for replica in self.replicas]

    def running(self) -> list[ServerProcess]:
        return [process for process in self.started if process.returncode is None]

    def wait_logged(self, words: str, since: dict[str, int]) -> None:
        """Wait until every running process has logged `words` after `since` (each one's log
        length by URL, taken before)."""
        polled(
            lambda: [
                process.url
                for process in self.running()
                if words not in process.read_log()[since.get(process.url, 0) :]
            ],
            lambda silent: not silent,
            timeout_s=20,
            what=f"not every process logged {words!r}",
        )

    def log_lengths(self) -> dict[str, int]:
        return {process.url: len(process.read_log()) for process in self.running()}

    def stop(self) -> None:
        try:
            for process in self.started:
                process.stop()
        finally:
            self.postgres.remove()


@pytest.fixture
def cluster(
    tmp_path: Path, small_checkpoint: Path, s3_server: S3Server, mnist_dir: Path
) -> Iterator[Cluster]:
    running = Cluster(tmp_path, s3_server, mnist_dir)
    try:
        running.start(small_checkpoint)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def body(mnist: Mnist) -> bytes:
    return encode(mnist.test_images[0])


def more_answers(loads: list[Tally], count: int = 5) -> None:
    """Wait until every load has had `count` more answers than it had when called."""
    before = [len(load.outcomes) for load in loads]
    polled(
        lambda: [len(load.outcomes) - n for load, n in zip(loads, before, strict=True)],
        lambda more: min(more) >= count,
        timeout_s=30,
        what=f"not {count} more answers on every replica",
    )


def test_a_job_from_one_replica_is_trained_elsewhere_and_served_by_all(
    cluster: Cluster, small_checkpoint: Path, body: bytes
) -> None:
    first = load_checkpoint(small_checkpoint).version
    assert cluster.versions(body) == {first}  # B and C fetched A's model from the store
    a, b = (httpx.Client(base_url=replica.url, timeout=30) for replica in cluster.replicas[:2])
    assert httpx.get(f"{cluster.trainer.url}/readyz").status_code == 200
    assert httpx.post(f"{cluster.trainer.url}/predict").status_code == 404  # a trainer serves no model

    # Corrections sent to C are trained on by the trainer. (Those that fell in the held-out split
    # are deleted, through B: the promotion rule stays MNIST's alone here, as without them.)
    c = httpx.Client(base_url=cluster.replicas[2].url, timeout=30)
    sent = [c.post("/feedback", files=image_file(body), data={"label": "7"}).json() for _ in range(6)]
    for item in sent:
        if item["split"] == "heldout":
            assert b.delete(f"/feedback/{item['id']}").status_code == 204
    kept = sorted(item["id"] for item in sent if item["split"] == "train")
    with cluster.under_load(body) as loads:
        accepted = a.post("/train", json={**BETTER, "use_feedback": True})
        assert accepted.status_code == 202, accepted.text
        second_job = b.post("/train", json=QUICK)  # one trainer, one slot, no queue: 409 naming it
        assert second_job.status_code == 409 and accepted.json()["id"] in second_job.json()["detail"]
        job = polled_job(b, accepted.json()["id"], finished)  # watched through another replica
        assert job["status"] == "succeeded", job
        new = job["model_version"]
        trained = next(v for v in a.get("/model/versions").json()["versions"] if v["model_version"] == new)
        assert trained["data"]["feedback"]["ids"] == {"train": kept, "heldout": []}
        weight = trained["hyperparameters"]["feedback_weight"]
        assert trained["train_samples"] == BETTER["limit_train"] + weight * len(kept)
        took = cluster.wait_all_serve(new, body)
        # A few more answers on each replica, all from the new model.
        polled(
            lambda: [load.versions[-3:] for load in loads],
            lambda lasts: all(last == [new] * 3 for last in lasts),
            what=f"not every load answered by {new}",
        )
    assert took < FOLLOW_WITHIN_S, took
    for load in loads:
        assert set(load.outcomes) == {200}, f"failed predictions: {load.statuses}"

    # A rollback through B, followed by all, again under load.
    with cluster.under_load(body) as loads:
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
    trainer = cluster.trainer.process
    assert trainer is not None
    os.killpg(trainer.pid, signal.SIGKILL)  # the whole host goes: server and its child
    trainer.wait()
    killed_at = time.monotonic()
    job = polled_job(c, job_id, finished, timeout_s=STALE_AFTER_S + 10)
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
    cluster.start_trainer()
    assert a.post("/train", json={"epochs": 1, "limit_train": 500}).status_code == 202


@pytest.mark.reliability
def test_postgresql_restarted_under_load_fails_no_prediction(cluster: Cluster, body: bytes) -> None:
    b = httpx.Client(base_url=cluster.replicas[1].url, timeout=30)
    with cluster.under_load(body) as loads:
        more_answers(loads)
        before = cluster.log_lengths()
        cluster.postgres.stop()
        # Every process meets the outage: each asks the database every 0.5 s (its follower of the
        # active version, its job tender), and predictions go on meanwhile.
        cluster.wait_logged("database unavailable", since=before)
        more_answers(loads)
        down = b.get("/train")
        assert down.status_code == 503 and "database cannot be reached" in down.json()["detail"]
        assert b.post("/train", json=QUICK).status_code == 503
        cluster.postgres.start()
        polled(lambda: b.get("/train"), lambda answer: answer.status_code == 200, timeout_s=20, every_s=0.2)
        cluster.wait_logged("database reachable again", since=before)
        more_answers(loads)
    print(f"PostgreSQL restarted under load: {sum(len(load.outcomes) for load in loads)} predictions")
    for load in loads:
        assert len(load.outcomes) > 10 and set(load.outcomes) == {200}, load.statuses
