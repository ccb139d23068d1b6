"""What one hostile client can send a server that faces the network, against a real `python -m app`:
each attack is answered as it should be, and costs the other clients neither time nor memory."""

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import encode, larger, scan_bomb, tile_bomb
from tests.reliability.load import rss_mib
from tests.reliability.scale import scaled
from tests.reliability.test_slow_clients import enough_open_files
from tests.server import ServerProcess, impatient_server
from training.data import Mnist

# What a check of /healthz may take while an attack runs: the event loop is never held for long.
HEALTHZ_BOUND_S = 0.5
TIMEOUT_S = 2.0  # the head and body timeouts of `impatient`


@pytest.fixture(scope="module")
def impatient(small_checkpoint: Path) -> Iterator[ServerProcess]:
    with impatient_server(small_checkpoint, TIMEOUT_S) as running:
        yield running


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


async def held_open(port: int, start: bytes, piece: bytes, pause_s: float, for_s: float) -> float:
    """One connection: `start`, then `piece` every `pause_s` until the server closes it (or `for_s`
    passes); how long it lived."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(start)
        while time.monotonic() - started < for_s and not reader.at_eof():
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(65536), pause_s)
            writer.write(piece)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    return time.monotonic() - started


def test_unending_header_and_trailer_lines_are_cut_off_by_size(impatient: ServerProcess) -> None:
    """Connections streaming a header value, or a trailer after a chunked body, as fast as the
    server reads: each is closed once a line passes MNIST_MAX_HEADER_BYTES, and neither memory nor
    /healthz notices."""
    assert impatient.process is not None
    connections = scaled(8, 64)
    heads = [
        b"GET /healthz HTTP/1.1\r\nX-Long: ",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: ",
    ]
    before = rss_mib(impatient.process.pid)

    async def attack() -> list[float]:
        return await asyncio.gather(
            *(
                held_open(impatient.port, heads[n % 2], b"a" * 65536, pause_s=0.001, for_s=10 * TIMEOUT_S)
                for n in range(connections)
            )
        )

    lived, slowest = while_probing(impatient, lambda: asyncio.run(attack()))
    grew = rss_mib(impatient.process.pid) - before
    print(
        f"{connections} unending header/trailer lines: closed after {max(lived):.2f} s at most, "
        f"/healthz at worst {slowest * 1000:.0f} ms, RSS +{grew:.0f} MiB"
    )
    assert max(lived) < TIMEOUT_S and slowest < HEALTHZ_BOUND_S and grew < 50


def test_bodies_trickled_after_their_answer_are_closed_by_the_body_timeout(impatient: ServerProcess) -> None:
    """Answered before its body was read, each request trickles a chunk every half second, for ever:
    every connection is closed at the body's deadline, and new clients are served meanwhile."""
    connections = scaled(200, 1500)
    enough_open_files(connections + 256)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def attack() -> list[float]:
        return await asyncio.gather(
            *(
                held_open(impatient.port, head, b"1\r\na\r\n", pause_s=0.5, for_s=10 * TIMEOUT_S)
                for _ in range(connections)
            )
        )

    lived, slowest = while_probing(impatient, lambda: asyncio.run(attack()))
    print(
        f"{connections} trickled bodies: closed after {min(lived):.1f}-{max(lived):.1f} s, "
        f"/healthz at worst {slowest * 1000:.0f} ms"
    )
    assert max(lived) < TIMEOUT_S + 3 and slowest < HEALTHZ_BOUND_S
