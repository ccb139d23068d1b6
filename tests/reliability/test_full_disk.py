"""The state disk fills up while a job trains (a small tmpfs): predictions go on, the training
child is never left running unsupervised, the job ends `failed` saying why once anything can be
written, nothing is left in incoming/, and the next job runs."""

import os
from pathlib import Path

import httpx

from tests.images import encode
from tests.jobs import polled_job
from tests.server import ServerProcess
from tests.tools import fill, polled, small_disk
from training.data import Mnist


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_full_disk_during_a_job(tmp_path: Path, small_checkpoint: Path, mnist: Mnist) -> None:
    with small_disk(tmp_path / "state", size="16m") as state:
        env = {"MNIST_MODEL_PATH": str(small_checkpoint), "MNIST_STATE_DIR": str(state), "MNIST_WORKERS": "1"}
        with ServerProcess(env, production=True, ready_path="/readyz") as server:
            client = httpx.Client(base_url=server.url, timeout=30)
            digit = {"file": ("d.png", encode(mnist.test_images[0]))}
            job = client.post("/train", json={"epochs": 1, "limit_train": 20000, "seed": 3}).json()
            child = polled_job(client, job["id"], lambda current: current["pid"], timeout_s=60)["pid"]
            fill(state)  # the database, the child's checkpoint and the model store share this disk
            assert client.post("/predict", files=digit).status_code == 200
            polled(lambda: alive(child), lambda living: not living, 180, what="the training child not ended")
            assert client.post("/predict", files=digit).status_code == 200
            (state / "filler").unlink()  # room again: the end can be recorded
            ended = polled_job(client, job["id"], lambda current: current["status"] != "running", 30)
            print(f"job ended {ended['status']}: {ended['error']}")
            assert ended["status"] == "failed" and "space" in str(ended["error"]).lower()
            assert not any((state / "incoming").glob("*"))
            again = client.post("/train", json={"epochs": 1, "limit_train": 500})
            assert again.status_code == 202, again.text
            assert client.delete(f"/train/{again.json()['id']}").status_code == 200
            assert 'status="5' not in client.get("/metrics").text
