"""Many slow or idle clients at once do not lock others out: slowloris connections are cut off
after MNIST_HEADER_TIMEOUT_S, and 1,100 idle connections against a server started under the common
1024 open-file limit leave room for new clients (the limit is raised at startup)."""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import encode
from tests.load import predict_load
from tests.reliability.scale import scaled
from tests.server import ServerProcess, impatient_server
from tests.tools import enough_open_files
from training.data import Mnist

HEADER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def patient_server(small_checkpoint: Path) -> Iterator[ServerProcess]:
    with impatient_server(small_checkpoint, HEADER_TIMEOUT_S) as running:
        yield running


def test_slowloris_connections_are_cut_off_while_others_are_served(
    patient_server: ServerProcess, mnist: Mnist
) -> None:
    slow = scaled(100, 400)
    enough_open_files(slow + 256)
    closed_after: list[float] = []

    def dribble() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", patient_server.port), timeout=30) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
                for n in range(100):
                    time.sleep(0.25)
                    sock.sendall(b"X-Slow-%d: x\r\n" % n)
            except OSError:
                pass
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        closed_after.append(time.monotonic() - started)

    threads = [threading.Thread(target=dribble) for _ in range(slow)]
    for thread in threads:
        thread.start()
    body = encode(mnist.test_images[0])
    others = asyncio.run(predict_load(patient_server.url, body, seconds=HEADER_TIMEOUT_S + 1))
    for thread in threads:
        thread.join()
    longest = max(closed_after)
    print(f"{slow} slowloris clients: closed after {longest:.1f} s at most; {others.ok} others served")
    assert set(others.outcomes) == {200}
    assert len(closed_after) == slow and longest < HEADER_TIMEOUT_S + 3


def test_many_idle_connections_leave_room_for_new_clients(small_checkpoint: Path) -> None:
    """A head timeout far longer than the check: only the raised open-file limit makes room."""
    idle = 1100
    enough_open_files(idle + 256)
    with impatient_server(small_checkpoint, 60) as server:
        sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(idle)]
        try:
            assert httpx.get(server.url + "/healthz", timeout=3).status_code == 200
        finally:
            for sock in sockets:
                sock.close()
