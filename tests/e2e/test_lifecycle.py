"""The server as deployed: `python -m app`, its startup log, and a clean shutdown under load."""

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from models.checkpoint import load_checkpoint
from tests.images import encode
from tests.load import Tally, predict_load
from tests.server import ServerProcess, free_port
from tests.tools import listening_sockets, polled, polled_async
from tests.v2_client import infer_grpc
from training.data import Mnist


def test_production_command_serves_with_several_processes(small_checkpoint: Path, mnist: Mnist) -> None:
    grpc_port = free_port()
    env = {"MNIST_MODEL_PATH": str(small_checkpoint), "MNIST_WORKERS": "2", "MNIST_GRPC_PORT": str(grpc_port)}
    with ServerProcess(env, production=True, ready_path="/readyz") as server:
        # gRPC in every process: each listens on the port (SO_REUSEPORT), the kernel spreads
        # connections; a fresh connection per call.
        polled(
            lambda: listening_sockets(grpc_port),
            lambda listening: listening == 2,
            timeout_s=30,
            what="gRPC not listening in both processes",
        )
        results = [infer_grpc(f"127.0.0.1:{grpc_port}", "pixels", mnist.test_images[:5]) for _ in range(8)]
        assert {r.get_response().model_version for r in results} == {
            load_checkpoint(small_checkpoint).version
        }
        assert len({tuple(r.as_numpy("digit").tolist()) for r in results}) == 1
        body = encode(mnist.test_images[0])

        async def load() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                return await asyncio.gather(
                    *(client.post("/predict", files={"file": ("d.png", body)}) for _ in range(100))
                )

        assert all(r.status_code == 200 for r in asyncio.run(load()))
        metrics = httpx.get(server.url + "/metrics").text
        # One scrape adds up both processes' counts (prometheus multiprocess mode).
        total = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('mnist_http_requests_total{method="POST",route="/predict",status="200"}')
        )
        assert total == 100
        grpc_calls = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('mnist_grpc_requests_total{code="OK",method="ModelInfer"}')
        )
        assert grpc_calls == 8
        assert metrics.count("mnist_model_info{") == 2  # one series per process (label pid)
        log = server.stop()
    version = load_checkpoint(small_checkpoint).version
    assert log.count(f"serving model {version} on cpu") == 2  # one startup line per process
    assert "MNIST_TRAIN_TOKEN is not set" in log  # warnings reach the production log
    assert "max_batch_size" in log


def test_shutdown_under_load_answers_every_accepted_request(small_checkpoint: Path, mnist: Mnist) -> None:
    server = ServerProcess({"MNIST_MODEL_PATH": str(small_checkpoint)}, ready_path="/readyz").start()
    assert server.process is not None
    process = server.process
    body = encode(mnist.test_images[0])

    def exited() -> bool:
        return process.poll() is not None

    async def run() -> Tally:
        # A fresh connection per request, so "accepted" is unambiguous: no idle keep-alive races.
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            tally = Tally()
            # Until the server has exited (at most a minute: one that never does fails below).
            load = predict_load(client, body, 32, seconds=60, until=exited, tally=tally)
            running = asyncio.create_task(load)
            await polled_async(lambda: tally.ok, lambda ok: ok > 50, what="the load not answered")
            process.send_signal(signal.SIGTERM)
            return await running

    tally = asyncio.run(run())
    log = server.stop()
    # uvicorn finishes its graceful shutdown, then re-raises SIGTERM so the exit status tells why.
    assert server.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log
    assert tally.ok > 50
    # Refused: the listener is closed, the request was never accepted. A read error or a closed
    # connection: connected in the kernel's backlog after the server stopped accepting, the request
    # never read (the access log below proves that).
    assert set(tally.outcomes) <= {200, "ConnectError", "ReadError", "RemoteProtocolError"}, tally.statuses
    # Every request the server took in was answered, and the client received that answer.
    assert log.count('"POST /predict HTTP/1.1" 200') == tally.ok
    assert '"POST /predict HTTP/1.1" 5' not in log
    assert "inference engine stopped" in log


@pytest.mark.parametrize("device", ["cuda"])
@pytest.mark.gpu
def test_serves_on_cuda(small_checkpoint: Path, mnist: Mnist, device: str) -> None:
    with ServerProcess(
        {"MNIST_MODEL_PATH": str(small_checkpoint), "MNIST_DEVICE": device}, ready_path="/readyz"
    ) as server:
        response = httpx.post(
            server.url + "/predict", files={"file": ("d.png", encode(mnist.test_images[0]))}
        )
        assert response.status_code == 200
        assert httpx.get(server.url + "/model").json()["serving"]["device"].startswith("cuda")
