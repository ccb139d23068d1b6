"""What one hostile client can send a server that faces the network, against a real `python -m app`:
each attack is answered as it should be, and costs the other clients neither time nor memory."""

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc import aio
from tritonclient.grpc import service_pb2

from tests.images import encode, larger, scan_bomb, tile_bomb
from tests.reliability.scale import scaled
from tests.server import DualStackServer, ServerProcess, impatient_server
from tests.tools import enough_open_files, read_until_closed, rss_mib
from tests.v2_client import call_grpc, one_digit_request
from training.data import Mnist

# What a check of /healthz may take while an attack runs: the event loop is never held for long.
HEALTHZ_BOUND_S = 0.5
TIMEOUT_S = 2.0  # the head and body timeouts of `impatient`


@pytest.fixture(scope="module")
def dual_stack(small_checkpoint: Path) -> Iterator[DualStackServer]:
    """The default budget (256 MiB), client share (a quarter) and gRPC message limit (4 MiB): a
    client's share holds room for 16 messages."""
    env = {
        "MNIST_MODEL_PATH": str(small_checkpoint),
        "MNIST_WORKERS": "1",
        "MNIST_BODY_TIMEOUT_S": str(TIMEOUT_S),
    }
    with DualStackServer(env) as running:
        yield running


@pytest.fixture(scope="module")
def impatient(small_checkpoint: Path) -> Iterator[ServerProcess]:
    with impatient_server(small_checkpoint, TIMEOUT_S) as running:
        yield running


# Asks /healthz every 20 ms, saying "ready" after the first answer, until its standard input
# closes; then prints how many it asked and the slowest answer (s).
PROBE = """
import select, sys, time
import httpx
slowest, asked = 0.0, 0
with httpx.Client(base_url=sys.argv[1], timeout=30) as client:
    while not select.select([sys.stdin], [], [], 0)[0]:
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        slowest, asked = max(slowest, time.perf_counter() - started), asked + 1
        if asked == 1:
            print("ready", flush=True)
        time.sleep(0.02)
print(asked, slowest)
"""


def while_probing(server: ServerProcess, attack: Callable[[], Any]) -> tuple[Any, float]:
    """Run `attack` while another process asks /healthz again and again (a process of its own, so
    that the attack's own work in this one cannot slow the asking); the attack's result, and the
    slowest answer to /healthz meanwhile."""
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, server.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert probe.stdout is not None and probe.stdout.readline() == b"ready\n"
    try:
        result = attack()
    finally:
        output, _ = probe.communicate(timeout=60)  # closes its input: it stops asking
    assert probe.returncode == 0, "a /healthz was not answered 200"
    asked, slowest = output.split()
    assert int(asked) >= 2, "the attack ended before /healthz was asked during it"
    return result, float(slowest)


def test_decode_bombs_are_refused_from_their_headers(server: ServerProcess, mnist: Mnist) -> None:
    """Fifteen 28x28 TIFFs in one 32768x32768 deflate tile each (1 MB apiece, 1 GiB if decoded) in
    one batch, and JPEGs repeating one scan thousands of times: each a 413 at once."""
    assert server.process is not None
    tile = scaled(8192, 32768)
    bomb = tile_bomb(28, 28, tile)
    jpeg = encode(larger(mnist.test_images[0], 256), "JPEG", progressive=True)
    scans = scan_bomb(jpeg, scaled(5000, 15000))  # 1 MB at most: the upload limit
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
        """Wave after wave for a second: each is cut off in milliseconds, and /healthz is asked
        while the waves come."""
        lived: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            lived += await asyncio.gather(
                *(
                    held_open(impatient.port, heads[n % 2], b"a" * 65536, pause_s=0.001, for_s=10 * TIMEOUT_S)
                    for n in range(connections)
                )
            )
        return lived

    lived, slowest = while_probing(impatient, lambda: asyncio.run(attack()))
    grew = rss_mib(impatient.process.pid) - before
    print(
        f"{len(lived)} unending header/trailer lines ({connections} at a time): "
        f"closed after {max(lived):.2f} s at most, "
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


INFER = "/inference.GRPCInferenceService/ModelInfer"


async def grpc_calls(url: str, calls: int, message: bytes | None) -> list[grpc.StatusCode]:
    """`calls` ModelInfer calls at once over 8 channels, each sending `message`, or (None) only its
    headers and never a message; how each ended."""
    # Eight connections of its own (channels to one address share one connection by default).
    options = [("grpc.max_send_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
    channels = [aio.insecure_channel(url, options=options) for _ in range(8)]

    async def nothing() -> Any:
        await asyncio.sleep(3600)
        yield b""

    async def one(channel: aio.Channel) -> grpc.StatusCode:
        try:
            if message is None:
                await channel.stream_unary(INFER)(nothing(), timeout=60)
            else:
                await channel.unary_unary(INFER)(message, timeout=60)
        except aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    try:
        return await asyncio.gather(*(one(channels[n % 8]) for n in range(calls)))
    finally:
        for channel in channels:
            await channel.close()


def test_grpc_calls_that_never_send_their_message_hold_no_one_else_up(dual_stack: DualStackServer) -> None:
    """Thousands of ModelInfer calls that send headers and no message, from one client: each ends
    at the receive deadline, or at once past the client's share, while another client is served."""
    stalled = scaled(300, 2100)
    served: list[str] = []

    def attack() -> list[grpc.StatusCode]:
        return asyncio.run(grpc_calls(dual_stack.grpc_ipv4, stalled, None))

    thread_result: list[list[grpc.StatusCode]] = []
    thread = threading.Thread(target=lambda: thread_result.append(attack()))
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        served.append(call_grpc(dual_stack.grpc_ipv6, "ModelInfer", one_digit_request()).model_name)
        time.sleep(0.05)
    thread.join()
    lasted = time.monotonic() - started
    ended = {code.name: thread_result[0].count(code) for code in set(thread_result[0])}
    print(
        f"{stalled} gRPC calls without a message: {ended} in {lasted:.1f} s; {len(served)} served meanwhile"
    )
    # The receive deadline, the client's share (RESOURCE_EXHAUSTED), or a connection's stream cap
    # (UNAVAILABLE: the stream refused before the client learnt the cap).
    assert set(ended) <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
    assert lasted < 2 * TIMEOUT_S + 5  # at most a deadline for the ones let in, and a second round
    assert served and set(served) == {"mnist"}


def test_grpc_messages_held_at_once_stay_within_the_upload_budget(dual_stack: DualStackServer) -> None:
    """150 calls at once from one client, each a message just under the 4 MiB limit (600 MB in all):
    gRPC reads a message only once the budget holds room for it, so the client gets its share
    (64 MiB) read at a time, and the others are refused or wait, unread."""
    assert dual_stack.process is not None
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[5000, 28, 28])
    request.raw_input_contents.append(bytes(4 * 1024 * 1024 - 4096))
    message = request.SerializeToString()
    before = rss_mib(dual_stack.process.pid)
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(dual_stack.process.pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        codes = asyncio.run(grpc_calls(dual_stack.grpc_ipv4, scaled(150, 600), message))
    finally:
        done.set()
        watcher.join()
    after = rss_mib(dual_stack.process.pid)
    print(
        f"{len(codes)} gRPC calls of {len(message)} B: RSS {before:.0f} -> {peak[0]:.0f} (peak) "
        f"-> {after:.0f} MiB"
    )
    refused = {code.name for code in codes}
    assert refused <= {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}  # 5,000 rows, the share, or the budget
    # What is read at once is the client's share (64 MiB); the rest of the growth is memory the
    # allocator keeps after freeing (the same 16 calls, sent again and again, level off there).
    assert peak[0] - before < 1024


def stalled_upload(port: int, size: int, source: str) -> tuple[bytes, float]:
    """From `source`, a /predict/batch body of `size` bytes sent but for its last byte, then
    nothing: what the server answered, and after how long."""
    started = time.monotonic()
    head = (
        b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(60)
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # refused before it was all sent
            sock.sendall(head + b"--b\r\n" + bytes(size - 6))
        answer = read_until_closed(sock)
    return answer, time.monotonic() - started


def test_one_client_stalling_big_uploads_holds_only_its_share(small_checkpoint: Path, mnist: Mnist) -> None:
    """Sixteen 16 MB batch bodies from one address, each stalling before its last byte: that
    client holds its share of the upload budget (a quarter), its other uploads get a 429, every
    stall is cut after MNIST_BODY_IDLE_S, and another client's uploads are served throughout."""
    env = {
        "MNIST_MODEL_PATH": str(small_checkpoint),
        "MNIST_WORKERS": "1",
        "MNIST_BODY_IDLE_S": str(TIMEOUT_S),
    }
    body = 16 * 1024 * 1024
    with ServerProcess(env, production=True, ready_path="/readyz") as server, ThreadPoolExecutor(16) as pool:
        stalls = [pool.submit(stalled_upload, server.port, body, "127.0.0.2") for _ in range(16)]
        served, started = [], time.monotonic()
        digit = encode(mnist.test_images[0])
        padded = [("files", ("d.png", digit, "image/png")), ("padding", (None, b"x" * 600_000))]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not all(stall.done() for stall in stalls) and time.monotonic() - started < 30:
                served.append(client.post("/predict/batch", files=padded).status_code)
        answers = [stall.result() for stall in stalls]
    statuses = sorted(int(answer.split(b" ")[1]) for answer, _ in answers if answer)
    longest = max(lived for _, lived in answers)
    print(
        f"16 stalled 16 MB uploads: {statuses}, the last cut after {longest:.1f} s; "
        f"{len(served)} others served"
    )
    # At most 4 x 16 MiB (its 64 MiB share) arrive whole and stall (408); the rest pass the share on
    # the way, in whatever order their bytes arrived (429).
    assert len(statuses) == 16 and set(statuses) == {408, 429} and statuses.count(408) <= 4, statuses
    assert longest < TIMEOUT_S + 5
    assert served and set(served) == {200}


def test_a_v2_json_body_of_millions_of_numbers_is_refused_off_the_event_loop(server: ServerProcess) -> None:
    """16 MB of JSON numbers for 20,000 rows: parsed on a thread, refused there from its shape, and
    its millions of objects freed there too, so other clients see no stall."""
    data = b",".join([b"0"] * (20_000 * 392))  # 7.8 M elements of JSON ("0,"): 15.7 MB
    body = (
        b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [20000, 28, 28], "data": ['
        + data
        + b"]}]}"
    )

    def attack() -> list[httpx.Response]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            headers = {"content-type": "application/json"}
            return [client.post("/v2/models/mnist/infer", content=body, headers=headers) for _ in range(3)]

    answers, slowest = while_probing(server, attack)
    print(f"v2 JSON bodies of {len(body)} B: /healthz at worst {slowest * 1000:.0f} ms")
    assert [answer.status_code for answer in answers] == [413] * 3, answers[0].text[:200]
    assert slowest < HEALTHZ_BOUND_S
