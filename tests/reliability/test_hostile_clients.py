"""What one hostile client can send a server that faces the network, against a real `python -m app`:
each attack is answered as it should be, and costs the other clients neither time nor memory."""

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.images import encode, larger, scan_bomb, tile_bomb
from tests.reliability.load import rss_mib
from tests.reliability.scale import scaled
from tests.server import ServerProcess
from training.data import Mnist

# What a check of /healthz may take while an attack runs: the event loop is never held for long.
HEALTHZ_BOUND_S = 0.5


def while_probing(server: ServerProcess, attack: Callable[[], Any]) -> tuple[Any, float]:
    """Run `attack` on a thread while /healthz is asked again and again; its result, and the
    slowest answer to /healthz meanwhile."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(attack())
        except BaseException as error:  # shown by the caller
            errors.append(error)

    thread = threading.Thread(target=run)
    slowest = 0.0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        thread.start()
        while thread.is_alive():
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.02)
    thread.join()
    if errors:
        raise errors[0]
    return result[0], slowest


def test_decode_bombs_are_refused_from_their_headers(server: ServerProcess, mnist: Mnist) -> None:
    """Fifteen 28x28 TIFFs in one 32768x32768 deflate tile each (1 MB apiece, 1 GiB if decoded) in
    one batch, and JPEGs repeating one scan tens of thousands of times: each a 413 at once."""
    assert server.process is not None
    tile = scaled(8192, 32768)
    bomb = tile_bomb(28, 28, tile)
    jpeg = encode(larger(mnist.test_images[0], 256), "JPEG", progressive=True)
    scans = scan_bomb(jpeg, scaled(5000, 63940))
    before = rss_mib(server.process.pid)

    def attack() -> list[httpx.Response]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            files = [("files", (f"{index}.tif", bomb, "image/tiff")) for index in range(15)]
            return [
                client.post("/predict/batch", files=files),
                client.post("/predict", files={"file": ("bomb.tif", bomb)}),
                client.post("/predict", files={"file": ("scans.jpg", scans)}),
                client.post(
                    "/predict/batch", files=[("files", ("a.jpg", scans)), ("files", ("b.jpg", scans))]
                ),
            ]

    answers, slowest = while_probing(server, attack)
    grew = rss_mib(server.process.pid) - before
    scan_count = scans.count(b"\xff\xda")
    print(
        f"decode bombs ({len(bomb)} B TIFF of {tile}x{tile} tiles, {len(scans)} B JPEG of "
        f"{scan_count} scans): /healthz at worst {slowest * 1000:.0f} ms, RSS +{grew:.0f} MiB"
    )
    assert [answer.status_code for answer in answers] == [413] * 4, [a.text for a in answers]
    assert f"{tile}x{tile} tiles" in answers[0].json()["detail"]
    assert "scans, each a pass over all of its pixels" in answers[2].json()["detail"]
    assert slowest < HEALTHZ_BOUND_S and grew < 50
    behind = encode(larger(mnist.test_images[1], 300))
    started = time.perf_counter()
    assert (
        httpx.post(server.url + "/predict", files={"file": ("d.png", behind)}, timeout=30).status_code == 200
    )
    assert time.perf_counter() - started < 2
