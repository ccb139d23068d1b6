"""A server process SIGKILLed under load: the others keep answering, a new one takes its place,
at most the requests it held fail, and /metrics forgets the dead one."""

import asyncio
import os
import signal
from pathlib import Path

import httpx

from tests.images import encode
from tests.load import Tally, predict_load
from tests.server import ServerProcess
from tests.tools import polled, polled_async, workers_of
from training.data import Mnist

CLIENTS = 16


def test_a_worker_killed_under_load(small_checkpoint: Path, mnist: Mnist) -> None:
    env = {"MNIST_MODEL_PATH": str(small_checkpoint), "MNIST_WORKERS": "2"}
    with ServerProcess(env, production=True, ready_path="/readyz") as server:
        assert server.process is not None
        workers = workers_of(server.process.pid)
        assert len(workers) == 2
        body = encode(mnist.test_images[0])

        async def load_and_kill() -> tuple[int, Tally]:
            tally = Tally()
            load = asyncio.create_task(predict_load(server.url, body, CLIENTS, seconds=8, tally=tally))
            await polled_async(lambda: tally.ok, lambda ok: ok >= CLIENTS, what="the load not answered")
            victim = max(workers)
            os.kill(victim, signal.SIGKILL)
            return victim, await load

        victim, tally = asyncio.run(load_and_kill())
        print(f"worker {victim} killed under load: {tally.statuses}")
        assert tally.ok > 0
        assert tally.failed <= CLIENTS  # at most the requests in flight there
        server_pid = server.process.pid
        polled(
            lambda: workers_of(server_pid),
            lambda alive: victim not in alive and len(alive) >= len(workers),
            timeout_s=15,
            every_s=0.2,
            what="no worker took the killed one's place",
        )
        assert httpx.post(server.url + "/predict", files={"file": ("d.png", body)}).status_code == 200
        series = [
            line
            for line in httpx.get(server.url + "/metrics").text.splitlines()
            if line.startswith("mnist_model_info{")
        ]
        assert not any(f'pid="{victim}"' in line for line in series), series
